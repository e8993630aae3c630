"""PEFT LoRA wrapping shared by the model adapters.

Each adapter supplies one regular expression per modality (matched with re.fullmatch against the unwrapped
model's module names, as PEFT does for a string `target_modules`); `apply_lora` joins the requested ones,
checks that each matches at least one nn.Linear, wraps the model and leaves only the adapter factors trainable,
plus the modalities trained fully beside them (by default the projector, the common recipe): PEFT's
`modules_to_save`, a trained copy that is saved with the adapter, from module names the adapter supplies.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

from torch import nn

from vlm_grades.errors import UserError

MODALITIES = ("vision", "projector", "language")
_ALIASES = {"both": ("language", "vision"), "all": ("vision", "projector", "language")}


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = ("language",)   # modalities with adapters: vision, projector, language (both, all)
    bias: str = "none"                         # PEFT bias mode: none | all | lora_only
    train_fully: tuple[str, ...] = ("projector",)   # modalities trained fully beside the adapters (not targets)

    def __post_init__(self):
        if isinstance(self.targets, str):   # "language", "language,vision", "language+vision", "both", "all"
            self.targets = tuple(t.strip() for t in self.targets.replace("+", ",").split(",") if t.strip())
        expanded: list[str] = []
        for t in self.targets:
            for m in _ALIASES.get(t, (t,)):
                if m not in expanded:
                    expanded.append(m)
        self.targets = tuple(expanded)
        self.train_fully = tuple(m for m in self.train_fully if m not in self.targets)
        if self.rank < 1:
            raise UserError(f"--lora-rank: must be a positive integer, got {self.rank}")
        if self.alpha <= 0:
            raise UserError(f"--lora-alpha: must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"--lora-dropout: must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in MODALITIES]
        if bad or not self.targets:
            raise UserError(f"--lora-targets: expected one or more of {', '.join(MODALITIES)}, got {self.targets!r}")
        if any(m not in MODALITIES for m in self.train_fully):
            raise UserError(f"lora train_fully: expected modalities among {', '.join(MODALITIES)}, "
                            f"got {self.train_fully!r}")
        if self.bias not in ("none", "all", "lora_only"):
            raise UserError(f"--lora-bias: expected none, all or lora_only, got {self.bias!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["train_fully"] = list(self.train_fully)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "LoraSettings":
        d = {"train_fully": (), **d}   # saved before train_fully existed: adapters only
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in cls.__dataclass_fields__})


def target_regex(settings: LoraSettings, patterns: Mapping[str, str]) -> str:
    """One regex (for PEFT's `target_modules`) joining the per-modality patterns of the requested targets."""
    missing = [t for t in settings.targets if t not in patterns]
    if missing:
        raise UserError(f"--lora-targets: this model has no LoRA targets for {', '.join(missing)}")
    return "|".join(f"(?:{patterns[t]})" for t in settings.targets)


def matching_linears(model: nn.Module, pattern: str) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(pattern, n)]


def apply_lora(model: nn.Module, settings: LoraSettings, patterns: Mapping[str, str],
               whole_modules: Mapping[str, Sequence[str]] | None = None) -> nn.Module:
    """Wrap `model` with LoRA adapters on the requested modalities; only adapter weights stay trainable, and
    the modules of settings.train_fully (whole_modules: modality -> PEFT `modules_to_save` names)."""
    from peft import LoraConfig, get_peft_model

    regex = target_regex(settings, patterns)
    for t in settings.targets:
        if not matching_linears(model, patterns[t]):
            raise UserError(f"--lora-targets: no linear layer of the {t} modality matches {patterns.get(t)!r} "
                            f"in {type(model).__name__}")
    whole_modules = whole_modules or {}
    missing = [m for m in settings.train_fully if not whole_modules.get(m)]
    if missing:
        raise UserError(f"LoRA: this model cannot train its {', '.join(missing)} fully beside the adapters")
    config = LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, bias=settings.bias,
        target_modules=regex, modules_to_save=[n for m in settings.train_fully for n in whole_modules[m]] or None,
    )
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = get_peft_model(model, config)
    for name, p in peft_model.named_parameters():
        # bias="all"/"lora_only" legitimately trains biases; everything else but the factors stays frozen
        p.requires_grad_(is_lora_parameter(name) or ".modules_to_save." in name
                         or (settings.bias != "none" and name.endswith(".bias") and p.requires_grad))
    return peft_model


def is_lora_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or ".lora_embedding_" in name or ".lora_magnitude_vector" in name


def lora_parameter_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if is_lora_parameter(n)]


def load_lora(base_model: nn.Module, adapter_dir: str, trainable: bool = False) -> nn.Module:
    """Attach a saved LoRA adapter folder (adapter_config.json + weights) to an already loaded base model."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=trainable)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"{adapter_dir}: cannot load the LoRA adapter ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
