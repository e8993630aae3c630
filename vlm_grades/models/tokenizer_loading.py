"""Loading the bundled nanoVLM's tokenizers. A folder or hub id as given (`load_tokenizer`), and the tokenizer
a nanoVLM config names in lm_tokenizer for a checkpoint folder without tokenizer files (nanoVLM's
save_pretrained writes none): a local folder, else the Hugging Face cache, else the hub, but only after one
short request shows the hub answers. transformers would otherwise retry every file for minutes on a machine
without network and end with a cut-off message."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vlm_grades.errors import UserError
from vlm_grades.models.hub import hub_id

PROBE_TIMEOUT_S = 5.0


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """A fast tokenizer from a folder or hub id; UserError naming `source` when it cannot be loaded."""
    try:
        return PreTrainedTokenizerFast.from_pretrained(source)
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad path from the user's side
        raise UserError(f"{source}: cannot load a tokenizer ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def hub_unreachable(repo_id: str) -> str | None:
    """Why the hub cannot serve `repo_id` now (HF_HUB_OFFLINE, or one request without retries failed), or
    None when it answered (any HTTP status: a missing or gated repo is reported by the download itself)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return _probe(constants.ENDPOINT, repo_id)


@lru_cache(maxsize=64)
def _probe(endpoint: str, repo_id: str) -> str | None:
    """One request, once per process (the settings check and the loading both ask)."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(f"{endpoint}/api/models/{repo_id}", timeout=PROBE_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - DNS, refused, timeout, proxy: all mean "not reachable"
        return f"{endpoint} cannot be reached: {type(e).__name__}"
    return None


def has_own_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()


def _not_available(name: str, folder: Path, config_file: str, why: str) -> UserError:
    return UserError(
        f"{config_file}: the checkpoint has no tokenizer files and lm_tokenizer {name} is not in the Hugging "
        f"Face cache and cannot be fetched ({why}); put tokenizer.json and tokenizer_config.json of {name} "
        f"into {folder}, or set lm_tokenizer in config.json to a folder that holds them")


def _local_or_hub_id(name: str, folder: Path, config_file: str) -> Path | None:
    """lm_tokenizer as a local folder, None for a hub id; UserError for a path that is not there."""
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    hub_id(name, f"{config_file}: lm_tokenizer")     # "no such folder" for a path that is not there
    return None


def check_checkpoint_tokenizer(folder: Path, name: str, config_file: str) -> None:
    """Before any work: the UserError loading would end in, for a checkpoint folder without tokenizer files
    whose lm_tokenizer is neither a folder, nor cached, nor reachable. Loads nothing."""
    from huggingface_hub import try_to_load_from_cache

    if has_own_tokenizer(folder) or _local_or_hub_id(name, folder, config_file) is not None:
        return
    if isinstance(try_to_load_from_cache(name, "tokenizer.json"), str):
        return
    why = hub_unreachable(name)
    if why:
        raise _not_available(name, folder, config_file, why)


def load_checkpoint_tokenizer(folder: Path, name: str, config_file: str) -> PreTrainedTokenizerBase:
    """The tokenizer of the checkpoint in `folder`: its own files, else lm_tokenizer `name` (a folder, the
    Hugging Face cache, or the hub when it answers); UserError naming the id and the fix otherwise."""
    if has_own_tokenizer(folder):
        return load_tokenizer(str(folder))
    local = _local_or_hub_id(name, folder, config_file)
    if local is not None:
        return load_tokenizer(str(local))
    try:
        return PreTrainedTokenizerFast.from_pretrained(name, local_files_only=True)   # the Hugging Face cache
    except Exception:  # noqa: BLE001 - not cached (or a broken cache): try the hub below
        pass
    why = hub_unreachable(name)
    if why:
        raise _not_available(name, folder, config_file, why)
    return load_tokenizer(name)
