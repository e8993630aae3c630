"""TrainConfig: every setting of `vlm-grades train`, from defaults, a YAML file and flags (in that order)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlm_grades.errors import UserError

TASKS = ("easyvqa", "easyvqa-caption", "scenes", "vqav2", "gqa", "coco")
DATA_TASKS = ("vqav2", "gqa", "coco")        # tasks that need --data (easy-VQA ships in its package)
STOPPING = ("grades", "none", "classic")
MODALITIES = ("vision", "projector", "language")


@dataclass
class TrainConfig:
    # model
    model: str = "nanovlm"                 # nanovlm | qwen2.5-vl
    preset: str = "tiny"                   # nanovlm preset: tiny | smol | 222m
    model_path: str | None = None          # checkpoint folder or hub id (nanovlm tiny on easy-VQA: the shipped base)
    from_scratch: bool = False             # nanovlm: random initialization instead of the shipped base
    lm_weights: str | None = None          # nanovlm smol/222m: SmolLM2 folder (default: the `fetch` cache)
    vision_weights: str | None = None      # nanovlm 222m: a SigLIP checkpoint folder
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "language"         # language | vision | projector | both | all (comma lists too)
    freeze: list[str] = field(default_factory=list)   # modalities frozen for the whole run
    min_pixels: int | None = None          # qwen2.5-vl image resizing bounds
    max_pixels: int | None = None
    # data
    task: str = "easyvqa"
    data: str | None = None                # folder, file or hub id (easy-VQA comes from its package)
    split: str = "train"
    val_split: str | None = "val"          # validation loss (classic stopping); None to skip
    eval_split: str | None = "test"        # held-out score at the end; None to skip
    eval_data: str | None = None           # defaults to `data`
    max_samples: int | None = None
    val_max_samples: int | None = 1024
    eval_max_samples: int | None = None
    prompt: str | None = None              # prompt template with {question}
    mix_task: str | None = None            # a second task mixed into every epoch (e.g. easyvqa-caption)
    mix_data: str | None = None            # its data (defaults to `data`); same --split
    mix_fraction: float = 0.0              # share of training samples from mix_task (0 = off)
    strict: bool = False
    num_workers: int = 0
    # optimisation
    steps: int = 2000                      # planned optimizer steps (GradES may stop earlier); a cap under wsd
    batch_size: int = 64
    grad_accum: int = 1
    lr: float | None = None                # sets all three modality learning rates at once
    lr_vision: float = 1e-3
    lr_projector: float = 1e-3
    lr_language: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05                   # fraction of planned steps (or an absolute count if >= 1)
    schedule: str = "cosine"               # cosine | linear | constant | wsd (warmup-stable-decay)
    min_lr_ratio: float = 0.1
    decay_at: int | None = None            # wsd: start the cooldown at this step instead of on convergence
    cooldown: float = 0.4                  # wsd: the cooldown lasts this fraction of the steps done before it
    cooldown_shape: str = "linear"         # wsd: linear | sqrt (the rate falls as 1 - sqrt of the cooldown's progress)
    clip: float = 1.0
    mixed_precision: str = "no"            # no | bf16 | fp16
    distributed: str = "ddp"               # several processes: ddp (replicated) | fsdp (FSDP2, sharded)
    fsdp_cpu_offload: bool = False         # fsdp: parameters, gradients and optimizer state on the CPU
    seed: int = 0
    # stopping
    stopping: str = "grades"
    grades: dict[str, Any] = field(default_factory=dict)   # GradESConfig fields
    classic_every: int = 100               # classic: validation loss every N steps
    classic_patience: int = 3
    classic_min_delta: float = 0.0
    # run
    out: str | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_batch_size: int = 128
    max_new_tokens: int = 16
    report_to: list[str] = field(default_factory=list)     # tensorboard, wandb
    progress: bool = True
    feature_cache: str = "2GB"             # frozen-tower feature cache bound (memory), "0" = off
    feature_cache_disk: str = "0"          # its disk tier's bound (a memory-mapped file), "0" = off
    feature_cache_dir: str | None = None   # the disk tier's folder (default: the run folder)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_yaml(cls, path: str | Path, flag: str = "--config") -> dict[str, Any]:
        """The settings of a YAML file; `flag` names where it came from in error messages."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"{flag} {path}: file not found") from None
        except OSError as e:   # a folder, no permission
            raise UserError(f"{flag} {path}: cannot read ({e.strerror or e})") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise UserError(f"{flag} {path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{flag} {path}: expected a mapping of settings, got {type(data).__name__}")
        unknown = set(data) - cls.field_names()
        if unknown:
            raise UserError(f"{flag} {path}: unknown setting(s) {', '.join(sorted(unknown))}")
        try:
            return {k: _coerce(k, v) for k, v in data.items()}
        except UserError as e:
            raise UserError(f"{flag} {path}: {e}") from None

    @classmethod
    def build(cls, *layers: dict[str, Any]) -> "TrainConfig":
        chosen = {k: v for layer in layers for k, v in layer.items()
                  if k in ("model", "task", "preset", "model_path", "from_scratch")}
        model, task = chosen.get("model", cls.model), chosen.get("task")
        task = task or MODEL_DEFAULTS.get(model, {}).get("task", cls.task)
        layers = (MODEL_DEFAULTS.get(model, {}), TASK_DEFAULTS.get(task, {}),
                  _nanovlm_recipe(model, task, chosen)) + layers
        defaults = cls(**{k: _coerce(k, v) for k, v in _merge(layers[:3]).items()})
        cfg = cls(**{k: _coerce(k, v) for k, v in _merge(layers).items()})
        given = {k for layer in layers[3:] for k in layer if getattr(cfg, k) != getattr(defaults, k)}
        cfg.check_applicable(given)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Every setting, before any data is read or model built: one line naming the flag."""
        if self.model not in ("nanovlm", "qwen2.5-vl"):
            raise UserError(f"--model: expected nanovlm or qwen2.5-vl, got {self.model!r}")
        if self.model == "qwen2.5-vl" and not self.model_path:
            raise UserError("--model-path: qwen2.5-vl needs a checkpoint folder or hub id")
        if self.from_scratch and (self.model != "nanovlm" or self.model_path):
            raise UserError("--from-scratch: only for --model nanovlm without --model-path")
        if self.task not in TASKS:
            raise UserError(f"--task: expected one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task in DATA_TASKS and not self.data:
            raise UserError(f"--data: task {self.task} needs a data folder, file or hub id")
        if self.stopping not in STOPPING:
            raise UserError(f"--stopping: expected one of {', '.join(STOPPING)}, got {self.stopping!r}")
        self._check_numbers()
        if self.model == "nanovlm" and self.preset not in NANOVLM_PRESETS:
            raise UserError(f"--preset: expected one of {', '.join(NANOVLM_PRESETS)}, got {self.preset!r}")
        if self.mixed_precision == "fp16":
            raise UserError("--mixed-precision fp16: not supported (needs loss scaling); use bf16")
        if self.mixed_precision not in ("no", "bf16"):
            raise UserError(f"--mixed-precision: expected no or bf16, got {self.mixed_precision!r}")
        self._check_distributed()
        self._check_schedule()
        if not 0.0 <= self.mix_fraction < 1.0:
            raise UserError(f"--mix-fraction: must be in [0, 1), got {self.mix_fraction}")
        if self.mix_fraction > 0:
            if self.mix_task not in TASKS:
                raise UserError(f"--mix-task: expected one of {', '.join(TASKS)}, got {self.mix_task!r}")
            if self.mix_task in DATA_TASKS and not (self.mix_data or self.data):
                raise UserError(f"--mix-data: mixed task {self.mix_task} needs a data folder, file or hub id")
        self._check_trainable()
        self._check_trackers()
        self._check_feature_cache()
        if self.stopping == "grades":
            from vlm_grades.grades.config import GradESConfig

            GradESConfig.from_dict(self.grades).validate(self.steps)
        if self.lr is not None:
            self.lr_vision = self.lr_projector = self.lr_language = self.lr
        self._check_weights_paths()    # last: it reads files

    def _check_weights_paths(self) -> None:
        """--model-path (its folder, config and tensor shapes), --lm-weights and --vision-weights: a local path
        that does not exist is refused here, not tried as a hub id after the data is read."""
        from vlm_grades.models.hub import hub_id

        if self.model_path:
            from vlm_grades.models.precheck import check_model_path

            check_model_path(self.model, self.model_path)
        for name in ("lm_weights", "vision_weights"):
            value = getattr(self, name)
            if value and value != "smollm2-135m" and not Path(value).expanduser().exists():
                hub_id(value, _flag(name))

    def check_applicable(self, given: set[str]) -> None:
        """Settings the user gave (`given`) that the run would ignore: one line naming the flag and what it
        applies to. Defaults (also those of a recipe or a saved config.yaml) are not judged."""
        def refuse(name: str, why: str) -> None:
            if name in given:
                raise UserError(f"{_flag(name)}: {why}")

        for name in ("lm_weights", "vision_weights"):
            what = {"lm_weights": "the SmolLM2 language model", "vision_weights": "the SigLIP vision encoder"}[name]
            if self.model != "nanovlm":
                refuse(name, f"applies to --model nanovlm (its {what}), not {self.model}")
            elif self.preset == "tiny":
                refuse(name, f"applies to --preset smol or 222m ({what}); the tiny preset has its own small "
                             f"towers")
            elif self.model_path:
                refuse(name, f"applies to a nanoVLM built from a preset; --model-path {self.model_path} "
                             f"brings its own weights")
        for name in ("lora_targets", "lora_rank", "lora_alpha", "lora_dropout"):
            if not self.lora:
                refuse(name, "applies to --lora (LoRA adapters on qwen2.5-vl); add --lora or drop it")
        for name in ("min_pixels", "max_pixels"):
            if self.model != "qwen2.5-vl":
                refuse(name, f"applies to --model qwen2.5-vl (its image resizing), not {self.model}")
        if self.mix_task is not None and self.mix_task not in TASKS:
            refuse("mix_task", f"expected one of {', '.join(TASKS)}, got {self.mix_task!r}")
        if self.mix_fraction == 0:
            for name in ("mix_task", "mix_data"):
                refuse(name, "applies to a mixed run: give --mix-fraction above 0 (0 = no mixing)")

    def _check_schedule(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule: expected {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not (math.isfinite(self.cooldown) and 0 < self.cooldown <= 1):
            raise UserError(f"--cooldown: must be a fraction in (0, 1], got {self.cooldown}")
        if self.cooldown_shape not in COOLDOWN_SHAPES:
            raise UserError(f"--cooldown-shape: expected {' or '.join(COOLDOWN_SHAPES)}, got {self.cooldown_shape!r}")
        if self.schedule != "wsd":
            if self.decay_at is not None:
                raise UserError(f"--decay-at: only with --schedule wsd (the schedule is {self.schedule})")
            return
        if 0 < self.warmup < 1:
            raise UserError(f"--warmup: {self.warmup} is a fraction of --steps, but under --schedule wsd --steps is "
                            f"only a cap; give the warm-up as a number of steps (e.g. --warmup 50)")
        if self.decay_at is not None and not self.warmup <= self.decay_at < self.steps:
            raise UserError(f"--decay-at: {self.decay_at} must lie between the warm-up ({self.warmup:g} steps) "
                            f"and --steps {self.steps}")

    def _check_numbers(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise UserError(f"{_flag(name)}: must be {what}, got {getattr(self, name)}")

        for name in _AT_LEAST_ONE:
            need(getattr(self, name) >= 1, name, "at least 1")
        for name in _AT_LEAST_ONE_OR_ALL:
            need(getattr(self, name) is None or getattr(self, name) >= 1, name, "at least 1 (or unset for all)")
        for name in ("num_workers", "keep_checkpoints"):
            need(getattr(self, name) >= 0, name, "0 or more")
        for name in ("lr", "lr_vision", "lr_projector", "lr_language"):
            value = getattr(self, name)
            need(value is None or (math.isfinite(value) and value > 0), name, "a finite number > 0")
        for name in ("weight_decay", "warmup", "clip", "classic_min_delta"):
            need(math.isfinite(getattr(self, name)) and getattr(self, name) >= 0, name, "a finite number >= 0")
        need(self.warmup < 1 or float(self.warmup).is_integer(), "warmup",
             "a fraction of the steps (< 1) or a whole number of steps")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]")
        need(0 <= self.seed < 2 ** 32, "seed", "in [0, 2**32)")
        for name in ("min_pixels", "max_pixels"):
            need(getattr(self, name) is None or getattr(self, name) >= 1, name, "at least 1")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise UserError(f"--min-pixels {self.min_pixels}: above --max-pixels {self.max_pixels}")

    def _check_distributed(self) -> None:
        if self.distributed == "deepspeed":
            raise UserError("--distributed deepspeed: DeepSpeed ZeRO is not supported; use --distributed fsdp "
                            "(FSDP2) to shard parameters, gradients and optimizer state")
        if self.distributed not in ("ddp", "fsdp"):
            raise UserError(f"--distributed: expected ddp or fsdp, got {self.distributed!r}")
        if self.fsdp_cpu_offload and self.distributed != "fsdp":
            raise UserError("--fsdp-cpu-offload: needs --distributed fsdp")
        if self.distributed == "fsdp" and self.stopping == "classic":
            raise UserError("--stopping classic: not supported with --distributed fsdp (its copy of the best "
                            "weights is not sharded); use --stopping grades or none")

    def _check_trainable(self) -> None:
        """--freeze names known modalities and leaves something to train (LoRA: adapters or a fully trained
        modality); --lora settings are valid for the model."""
        bad = [m for m in self.freeze if m not in MODALITIES]
        if bad:
            raise UserError(f"--freeze: unknown modality {bad[0]!r} (vision, projector, language)")
        trainable = set(MODALITIES)
        if self.lora:
            if self.model != "qwen2.5-vl":
                raise UserError(f"--lora: LoRA adapters are for --model qwen2.5-vl; {self.model} trains all "
                                f"its weights")
            lora = self.lora_settings()
            trainable = set(lora.targets) | set(lora.train_fully)
        if not trainable - set(self.freeze):
            what = f" (LoRA adapters on {', '.join(lora.targets)})" if self.lora else ""
            raise UserError(f"--freeze {','.join(self.freeze)}: leaves nothing to train{what}")

    def feature_cache_bytes(self) -> int:
        return _size("--feature-cache", self.feature_cache)

    def feature_cache_disk_bytes(self) -> int:
        return _size("--feature-cache-disk", self.feature_cache_disk)

    def _check_feature_cache(self) -> None:
        memory, disk = self.feature_cache_bytes(), self.feature_cache_disk_bytes()
        if disk > 0 and memory == 0:
            raise UserError(f"--feature-cache-disk {self.feature_cache_disk}: needs the memory tier on "
                            f"(--feature-cache above 0): the disk holds what memory evicts")
        if self.feature_cache_dir and disk == 0:
            raise UserError("--feature-cache-dir: needs --feature-cache-disk SIZE above 0")
        if self.feature_cache_dir and Path(self.feature_cache_dir).exists() and \
                not Path(self.feature_cache_dir).is_dir():
            raise UserError(f"--feature-cache-dir {self.feature_cache_dir}: not a folder")

    def lora_settings(self):
        """The LoraSettings of a --lora run (None without): the projector trains fully beside the adapters
        unless it has adapters itself (--lora-targets projector/all) or is frozen."""
        if not self.lora:
            return None
        from vlm_grades.models.lora import LoraSettings

        return LoraSettings(rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout,
                            targets=self.lora_targets,
                            train_fully=tuple(m for m in ("projector",) if m not in self.freeze))

    def _check_trackers(self) -> None:
        from accelerate.utils import LoggerType

        bad = [t for t in self.report_to if t not in LoggerType.list()]
        if bad:
            raise UserError(f"--report-to: unknown tracker {bad[0]!r} (tensorboard, wandb, "
                            f"or another of accelerate's: {', '.join(LoggerType.list())})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


NANOVLM_PRESETS = ("tiny", "smol", "222m")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
COOLDOWN_SHAPES = ("linear", "sqrt")             # wsd: how the rate falls through the cooldown
_AT_LEAST_ONE = ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "eval_batch_size",
                 "max_new_tokens", "classic_every", "classic_patience")
_AT_LEAST_ONE_OR_ALL = ("max_samples", "val_max_samples", "eval_max_samples")
_YAML_ONLY = ("min_lr_ratio", "classic_min_delta")     # settings without a flag: named as in the YAML file


def _merge(layers) -> dict[str, Any]:
    """Later layers win; the `grades` mappings merge key by key, and their thresholds modality by modality
    once the preset is known (`layer_tau`)."""
    merged: dict[str, Any] = {}
    taus = []
    for layer in layers:
        for key, value in layer.items():
            if key == "grades" and isinstance(value, dict):
                merged["grades"] = {**merged.get("grades", {}), **value}
                taus += [value["tau"]] if value.get("tau") is not None else []
            else:
                merged[key] = value
    if taus:
        from vlm_grades.grades.config import layer_tau

        try:
            merged["grades"]["tau"] = layer_tau(merged["grades"].get("preset") or "default", *taus)
        except UserError:
            merged["grades"]["tau"] = taus[-1] if len(taus) == 1 else tuple(taus)   # named by validate()
    return merged


def _flag(name: str) -> str:
    return name if name in _YAML_ONLY else f"--{name.replace('_', '-')}"



_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(key: str, value: Any) -> Any:
    """A YAML value to its field's type: "1e-4" (YAML 1.1 reads it as a string) to 1e-4, 3 to 3.0, "a,b" to a
    list; anything else that does not fit is a one-line error naming the setting."""
    kind = str(TrainConfig.__dataclass_fields__[key].type).replace(" ", "")
    if value is None:
        if "None" in kind or kind.startswith("dict") or kind.startswith("list"):
            return None if "None" in kind else TrainConfig.__dataclass_fields__[key].default_factory()
        raise UserError(f"{key}: needs a value, got null")
    base = kind.split("|")[0]
    given = value
    if base in ("int", "float"):
        if isinstance(value, bool):
            ok = False
        elif isinstance(value, (int, float)):
            ok = base == "float" or float(value).is_integer()
            value = float(value) if base == "float" else int(value)
        else:
            try:
                value, ok = (float(value) if base == "float" else int(value)), True
            except (TypeError, ValueError):
                ok = False
        if not ok:
            raise UserError(f"{key}: expected {'a number' if base == 'float' else 'an integer'}, got {given!r}")
    elif base == "bool" and not isinstance(value, bool):
        raise UserError(f"{key}: expected true or false, got {value!r}")
    elif base == "str" and not isinstance(value, str):
        if isinstance(value, bool):   # YAML 1.1 reads `mixed_precision: no` as false
            return "yes" if value else "no"
        if isinstance(value, (int, float)):
            return str(value)
        raise UserError(f"{key}: expected a string, got {value!r}")
    elif base.startswith("list"):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{key}: expected a list of names, got {value!r}")
    elif base.startswith("dict") and not isinstance(value, dict):
        raise UserError(f"{key}: expected a mapping, got {value!r}")
    return value


# Per-model defaults, applied between the dataclass defaults and the user's YAML/flags.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "nanovlm": {},
    "qwen2.5-vl": {"lr_vision": 2e-6, "lr_projector": 1e-5, "lr_language": 1e-5, "batch_size": 4,
                   "steps": 1000, "warmup": 0.03, "eval_batch_size": 8, "val_max_samples": 256,
                   "task": "vqav2"},
}

# The embedded default fine-tunes the shipped base (nanovlm/base, stage 1 on the `scenes` corpus) on easy-VQA:
# a fine-tuning schedule, not a pretraining one. The caption task keeps its from-scratch recipe (the base
# already captions shapes; the caption benchmark measures GradES on a task learned from random weights).
BASE_TASKS = ("easyvqa",)
# The warm-up is a number of steps (50, what 0.05 of the old 1000 planned steps was), so it does not scale with
# --steps, which under wsd is only a cap.
# The schedule is warmup-stable-decay: GradES's "converged" starts the cooldown, so --steps is only a cap.
FINETUNE_DEFAULTS: dict[str, Any] = {"steps": 1000, "warmup": 50, "schedule": "wsd", "lr_vision": 3e-4,
                                     "lr_projector": 3e-4, "lr_language": 3e-4}
# --from-scratch on easy-VQA questions: the pretraining recipe of earlier releases. A from-scratch nanoVLM
# learns shapes through the language model far faster when half of its samples are the images' derived
# captions ("a red triangle"): the caption names the shape of every image, while only one easy-VQA question
# in eight asks for it (measured: shape questions at chance after 800 steps without captions, 99% with them).
SCRATCH_DEFAULTS: dict[str, dict[str, Any]] = {"easyvqa": {"mix_task": "easyvqa-caption", "mix_fraction": 0.5}}


def _size(flag: str, value: str) -> int:
    from vlm_grades.feature_cache.memory import parse_size

    try:
        return parse_size(value)
    except ValueError as e:
        raise UserError(f"{flag}: {e}") from None


def shipped_base() -> str:
    from nanovlm import BASE_DIR

    return str(BASE_DIR)


def _nanovlm_recipe(model: str, task: str, chosen: dict[str, Any]) -> dict[str, Any]:
    """Defaults of nanoVLM on easy-VQA: fine-tune the shipped base (tiny preset, no --model-path) or a given
    checkpoint; --from-scratch (and the bigger presets, which have no base) keep the pretraining recipe."""
    if model != "nanovlm" or task not in BASE_TASKS:
        return {}
    if chosen.get("from_scratch") in (True, "true"):
        return dict(SCRATCH_DEFAULTS.get(task, {}))
    if chosen.get("model_path"):
        return dict(FINETUNE_DEFAULTS)
    if chosen.get("preset", TrainConfig.preset) == "tiny":
        return {**FINETUNE_DEFAULTS, "model_path": shipped_base()}
    return dict(SCRATCH_DEFAULTS.get(task, {}))

# Only easy-VQA has known split names for validation and held-out evaluation; other data sets name theirs.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    task: {"val_split": None, "eval_split": None} for task in DATA_TASKS
}
