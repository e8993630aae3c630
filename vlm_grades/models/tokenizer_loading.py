"""Loading the bundled nanoVLM's tokenizers. A folder or hub id as given (`load_tokenizer`), and the tokenizer
a nanoVLM config names in lm_tokenizer for a checkpoint folder without tokenizer files (nanoVLM's
save_pretrained writes none): a local folder, else the Hugging Face cache, else the hub, but only after one
short request shows the hub answers. transformers would otherwise retry every file for minutes on a machine
without network and end with a cut-off message."""
from __future__ import annotations

import re
from pathlib import Path

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vlm_grades.errors import UserError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
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
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(f"{constants.ENDPOINT}/api/models/{repo_id}", timeout=PROBE_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - DNS, refused, timeout, proxy: all mean "not reachable"
        return f"{constants.ENDPOINT} cannot be reached: {type(e).__name__}"
    return None


def load_named_tokenizer(name: str, folder: Path, config_file: str) -> PreTrainedTokenizerBase:
    """lm_tokenizer `name` for the checkpoint in `folder`; UserError naming the id and the fix when it is
    neither a folder, nor cached, nor reachable."""
    local = Path(name).expanduser()
    if local.is_dir():
        return load_tokenizer(str(local))
    if not _HUB_ID.fullmatch(name) or name.startswith((".", "/", "~")):
        raise UserError(f"{config_file}: lm_tokenizer {name}: no such folder, and {folder} has no tokenizer.json")
    try:
        return PreTrainedTokenizerFast.from_pretrained(name, local_files_only=True)   # the Hugging Face cache
    except Exception:  # noqa: BLE001 - not cached (or a broken cache): try the hub below
        pass
    why = hub_unreachable(name)
    if why:
        raise UserError(
            f"{config_file}: the checkpoint has no tokenizer files and lm_tokenizer {name} is not in the Hugging "
            f"Face cache and cannot be fetched ({why}); put tokenizer.json and tokenizer_config.json of {name} "
            f"into {folder}, or set lm_tokenizer in config.json to a folder that holds them")
    return load_tokenizer(name)
