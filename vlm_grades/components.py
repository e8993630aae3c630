"""The component registry: every monitored weight matrix of a vision-language model, tagged with its modality.

A Component is one nn.Linear (or one PEFT LoRA-wrapped Linear) of a transformer block or of the projector,
with a qualified name, a modality (vision / projector / language), a layer index, a kind (attn.q, mlp.up, ...)
and the parameters GradES watches and freezes (weight and bias; or lora_A and lora_B of every active adapter).

Rules are ordered (regex -> modality, kind) lists per architecture, matched against module names with wrapper
prefixes (PEFT's `base_model.model.`, DDP's `module.`, torch.compile's `_orig_mod.`) removed. Every parameter of
the model is also assigned to a modality (by prefix), for per-modality learning rates and modality finalization.
A rule set that matches nothing, or leaves a modality without any matrix, is an error, never a silent no-op.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from torch import nn

from vlm_grades.errors import UserError

MODALITIES = ("vision", "projector", "language")
KINDS = ("attn.q", "attn.k", "attn.v", "attn.o", "attn.qkv", "mlp.gate", "mlp.up", "mlp.down",
         "mlp.fc1", "mlp.fc2", "proj")
ARCHITECTURES = ("nanovlm", "qwen2_5_vl", "generic")
_WRAPPERS = ("base_model.model.", "module.", "_orig_mod.")


def strip_wrappers(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for w in _WRAPPERS:
            if name.startswith(w):
                name, changed = name[len(w):], True
    return name


@dataclass(eq=False)
class Component:
    name: str                       # qualified module name, wrapper prefixes removed
    modality: str                   # vision | projector | language
    layer: int                      # block index (projector: position among the projector's matrices)
    kind: str                       # one of KINDS
    module: nn.Module               # the Linear (or LoRA layer): freezing is by reference, never by name
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)  # (suffix, parameter) watched & frozen
    lora: bool = False

    @property
    def numel(self) -> int:
        return sum(p.numel() for _, p in self.params)

    def to_json(self) -> dict:
        return {"name": self.name, "modality": self.modality, "layer": self.layer, "kind": self.kind,
                "numel": self.numel}


# ---------------------------------------------------------------------------------------------- rule sets
@dataclass
class RuleSet:
    name: str                                   # architecture key written to components.json
    layout: str                                 # human description of the naming layout
    components: list[tuple[str, str, str]]      # (regex on module name, modality, kind); `layer` group optional
    prefixes: list[tuple[str, str]]             # (parameter-name prefix, modality); longest prefix wins
    default_modality: str | None = None         # for parameters no prefix covers (generic only)


def _blocks(prefix: str, modality: str, leaves: dict[str, str]) -> list[tuple[str, str, str]]:
    p = re.escape(prefix)
    return [(rf"{p}\.(?P<layer>\d+)\.{re.escape(leaf)}", modality, kind) for leaf, kind in leaves.items()]


NANOVLM = RuleSet(
    "nanovlm", "nanoVLM (vision_encoder / MP / decoder)",
    _blocks("vision_encoder.blocks", "vision", {
        "attn.qkv_proj": "attn.qkv", "attn.out_proj": "attn.o", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"})
    + [(r"MP\.proj", "projector", "proj")]
    + _blocks("decoder.blocks", "language", {
        "attn.q_proj": "attn.q", "attn.k_proj": "attn.k", "attn.v_proj": "attn.v", "attn.out_proj": "attn.o",
        "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.up", "mlp.down_proj": "mlp.down"}),
    [("vision_encoder.", "vision"), ("MP.", "projector"), ("decoder.", "language")],
)

_QWEN_VISION = {"attn.qkv": "attn.qkv", "attn.proj": "attn.o", "mlp.gate_proj": "mlp.gate",
                "mlp.up_proj": "mlp.up", "mlp.down_proj": "mlp.down"}
_QWEN_TEXT = {"self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
              "self_attn.o_proj": "attn.o", "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.up",
              "mlp.down_proj": "mlp.down"}


def _qwen(visual: str, text: str, layout: str, lm_prefixes: list[str]) -> RuleSet:
    return RuleSet(
        "qwen2_5_vl", layout,
        _blocks(f"{visual}.blocks", "vision", _QWEN_VISION)
        + [(rf"{re.escape(visual)}\.merger\.mlp\.\d+", "projector", "proj")]
        + _blocks(text, "language", _QWEN_TEXT),
        [(f"{visual}.", "vision"), (f"{visual}.merger.", "projector")] + [(p, "language") for p in lm_prefixes],
    )


QWEN_NEW = _qwen("model.visual", "model.language_model.layers",
                 "Qwen2.5-VL, transformers >= 4.52 names (model.visual / model.language_model)",
                 ["model.language_model.", "lm_head."])
QWEN_OLD = _qwen("visual", "model.layers", "Qwen2.5-VL, older layout (visual / model.layers)",
                 ["model.", "lm_head."])

# generic fallback: module-path keywords for the three parts, leaf names for the matrix kinds
_VISION_WORDS = ("vision_tower", "vision_model", "vision_encoder", "visual", "image_encoder", "vision", "vit")
_PROJECTOR_WORDS = ("multi_modal_projector", "mm_projector", "modality_projector", "connector", "merger", "MP",
                    "visual_projection", "vision_proj", "aligner", "projector", "mlp1")
_LANGUAGE_WORDS = ("language_model", "text_model", "llm", "decoder", "lm", "text_decoder")
_ATTN_PARENTS = ("attn", "self_attn", "attention", "self_attention", "mixer", "attention.self", "attention.output")
_GENERIC_LEAVES = {
    "q_proj": "attn.q", "query": "attn.q", "wq": "attn.q", "k_proj": "attn.k", "key": "attn.k", "wk": "attn.k",
    "v_proj": "attn.v", "value": "attn.v", "wv": "attn.v", "o_proj": "attn.o", "out_proj": "attn.o",
    "wo": "attn.o", "qkv": "attn.qkv", "qkv_proj": "attn.qkv", "query_key_value": "attn.qkv", "Wqkv": "attn.qkv",
    "c_attn": "attn.qkv", "in_proj": "attn.qkv",
    "gate_proj": "mlp.gate", "w1": "mlp.gate", "up_proj": "mlp.up", "w3": "mlp.up", "down_proj": "mlp.down",
    "w2": "mlp.down", "fc1": "mlp.fc1", "c_fc": "mlp.fc1", "linear_fc1": "mlp.fc1", "dense_h_to_4h": "mlp.fc1",
    "fc2": "mlp.fc2", "linear_fc2": "mlp.fc2", "dense_4h_to_h": "mlp.fc2",
}


# ---------------------------------------------------------------------------------------------- registry
class Registry:
    def __init__(self, architecture: str, layout: str, components: list[Component],
                 param_modality: dict[str, str], param_numel: dict[str, int], untrainable: list[str]):
        self.architecture = architecture
        self.layout = layout
        self.components = components                   # ordered: vision, projector, language; layer order
        self._param_modality = param_modality          # stripped parameter name -> modality
        self._param_numel = param_numel
        self.untrainable = untrainable                 # matched matrices without trainable parameters (skipped)

    def __len__(self) -> int:
        return len(self.components)

    def __iter__(self) -> Iterator[Component]:
        return iter(self.components)

    def by_modality(self) -> dict[str, list[Component]]:
        out: dict[str, list[Component]] = {m: [] for m in MODALITIES}
        for c in self.components:
            out[c.modality].append(c)
        return out

    def get(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)

    def modality_of(self, param_name: str) -> str:
        return self._param_modality[strip_wrappers(param_name)]

    def modality_parameters(self, model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Every parameter of `model` (shared ones once), assigned to vision / projector / language."""
        out: dict[str, list[tuple[str, nn.Parameter]]] = {m: [] for m in MODALITIES}
        for name, p in model.named_parameters():
            key = strip_wrappers(name)
            if key not in self._param_modality:
                raise UserError(f"parameter {key} was not in the model the registry was built from")
            out[self._param_modality[key]].append((key, p))
        return out

    def modality_sizes(self) -> dict[str, dict[str, int]]:
        sizes = {m: {"parameters": 0, "monitored_parameters": 0} for m in MODALITIES}
        for name, mod in self._param_modality.items():
            sizes[mod]["parameters"] += self._param_numel[name]
        for c in self.components:
            sizes[c.modality]["monitored_parameters"] += c.numel
        return sizes

    def to_json(self, model: nn.Module | None = None) -> dict:
        """components.json (docs/RUN_FOLDER.md); `model` is accepted for symmetry and not needed."""
        return {"architecture": self.architecture, "layout": self.layout, "modalities": self.modality_sizes(),
                "components": [c.to_json() for c in self.components]}


def _is_lora_layer(m: nn.Module) -> bool:
    return hasattr(m, "lora_A") and hasattr(m, "lora_B") and hasattr(m, "base_layer")


def _is_trained_copy(m: nn.Module) -> bool:
    """PEFT's modules_to_save wrapper: a module trained fully beside LoRA adapters (the projector, by
    default), as a trained copy in `modules_to_save.<adapter>` next to the frozen `original_module`."""
    return hasattr(m, "modules_to_save") and hasattr(m, "original_module")


def _matrix_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(stripped name, module) of every nn.Linear and every LoRA-wrapped Linear; LoRA internals skipped.
    Inside a modules_to_save wrapper only the active trained copy counts, under the original's name."""
    out, skipped, renamed = [], [], []
    for name, m in model.named_modules():
        raw = name + "."
        if any(raw.startswith(p) for p in skipped):
            continue
        shown = next((original + raw[len(copy):] for copy, original in renamed if raw.startswith(copy)), raw)
        key = strip_wrappers(shown[:-1])
        if _is_trained_copy(m):
            active = (getattr(m, "active_adapters", None) or list(m.modules_to_save))[0]
            skipped += [raw + "original_module."] + [f"{raw}modules_to_save.{a}." for a in m.modules_to_save
                                                     if a != active]
            renamed.append((f"{raw}modules_to_save.{active}.", shown))
        elif _is_lora_layer(m):
            skipped.append(raw)
            out.append((key, m))
        elif isinstance(m, nn.Linear):
            out.append((key, m))
    return out


def _component_params(m: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], bool]:
    if _is_lora_layer(m):
        active = getattr(m, "active_adapters", None) or list(m.lora_A.keys())
        if isinstance(active, str):
            active = [active]
        params = []
        for ad in active:
            for part in ("lora_A", "lora_B"):
                holder = getattr(m, part)
                if ad in holder:
                    params += [(f"{part}.{ad}.{n}", p) for n, p in holder[ad].named_parameters()]
            mag = getattr(m, "lora_magnitude_vector", None)
            if mag is not None and ad in mag:
                params += [(f"lora_magnitude_vector.{ad}.{n}", p) for n, p in mag[ad].named_parameters()]
        return params, True
    params = [("weight", m.weight)]
    if getattr(m, "bias", None) is not None:
        params.append(("bias", m.bias))
    return params, False


def _assign_params(model: nn.Module, rules: RuleSet) -> tuple[dict[str, str], dict[str, int], list[str]]:
    prefixes = sorted(rules.prefixes, key=lambda x: -len(x[0]))
    modality, numel, unassigned = {}, {}, []
    for name, p in model.named_parameters():
        key = strip_wrappers(name)
        mod = next((m for pre, m in prefixes if key.startswith(pre)), rules.default_modality)
        if mod is None:
            unassigned.append(key)
            continue
        modality[key], numel[key] = mod, p.numel()
    return modality, numel, unassigned


def _match(rules: RuleSet, matrices: list[tuple[str, nn.Module]]) -> list[Component]:
    compiled = [(re.compile(rx + r"$"), mod, kind) for rx, mod, kind in rules.components]
    comps = []
    for name, m in matrices:
        for rx, mod, kind in compiled:
            hit = rx.match(name)
            if hit:
                layer = int(hit.group("layer")) if "layer" in rx.groupindex else -1
                params, lora = _component_params(m)
                comps.append(Component(name, mod, layer, kind, m, params, lora))
                break
    return comps


def _generic_rules(model: nn.Module) -> RuleSet:
    """Find the vision tower, projector and language model by module path; tag block matrices by leaf name."""
    def find(words: tuple[str, ...], exclude: tuple[str, ...] = ()) -> str | None:
        best = None
        for name, _ in model.named_modules():
            key = strip_wrappers(name)
            if not key or any(key.startswith(e) for e in exclude if e):
                continue
            if key.split(".")[-1] in words and (best is None or len(key) < len(best)):
                best = key
        return best

    vision = find(_VISION_WORDS)
    projector = find(_PROJECTOR_WORDS)
    language = find(_LANGUAGE_WORDS, exclude=tuple(x + "." for x in (vision, projector) if x))
    missing = [m for m, p in (("vision", vision), ("projector", projector), ("language", language)) if p is None]
    if missing:
        raise UserError(
            f"generic component rules: no {' / '.join(missing)} module found; looked for module names "
            f"{_VISION_WORDS} (vision), {_PROJECTOR_WORDS} (projector), {_LANGUAGE_WORDS} (language)")
    comps = []
    for root, mod in ((vision, "vision"), (language, "language")):
        for leaf, kind in _GENERIC_LEAVES.items():
            comps.append((rf"{re.escape(root)}\.(?:.*\.)?(?P<layer>\d+)\.(?:.*\.)?{re.escape(leaf)}", mod, kind))
        comps.append((rf"{re.escape(root)}\.(?:.*\.)?(?P<layer>\d+)\.(?:{'|'.join(_ATTN_PARENTS)})\.(?:proj|c_proj|dense)",
                      mod, "attn.o"))
        comps.append((rf"{re.escape(root)}\.(?:.*\.)?(?P<layer>\d+)\.(?:mlp|ffn|feed_forward)\.c_proj", mod, "mlp.fc2"))
    comps.insert(0, (rf"{re.escape(projector)}\..*", "projector", "proj"))
    comps.insert(0, (rf"{re.escape(projector)}", "projector", "proj"))
    return RuleSet("generic", f"generic (vision: {vision}, projector: {projector}, language: {language})", comps,
                   [(vision + ".", "vision"), (projector + ".", "projector"), (language + ".", "language")],
                   default_modality="language")


def _detect(names: set[str]) -> list[RuleSet]:
    def has(prefix: str) -> bool:
        return any(n.startswith(prefix) for n in names)

    if has("vision_encoder.blocks.") and has("MP.") and has("decoder.blocks."):
        return [NANOVLM]
    if has("model.visual.") and has("model.language_model."):
        return [QWEN_NEW]
    if has("visual.") and has("model.layers."):
        return [QWEN_OLD]
    return []


def build_registry(model: nn.Module, architecture: str | None = None, trainable_only: bool = True) -> Registry:
    """Tag every monitored matrix of `model`. architecture: nanovlm | qwen2_5_vl | generic | None (detect).

    With trainable_only (the default), matrices none of whose watched parameters requires grad (a frozen
    tower, or a Linear without LoRA adapters in a LoRA run) are left out and listed in `untrainable`."""
    if architecture not in (None, *ARCHITECTURES):
        raise UserError(f"architecture: unknown {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    names = {strip_wrappers(n) for n, _ in model.named_modules()}
    if architecture is None:
        candidates = _detect(names) or [_generic_rules(model)]
    elif architecture == "nanovlm":
        candidates = [NANOVLM]
    elif architecture == "qwen2_5_vl":
        candidates = [QWEN_NEW, QWEN_OLD]
    else:
        candidates = [_generic_rules(model)]

    matrices = _matrix_modules(model)
    rules, comps = candidates[0], []
    for rs in candidates:
        comps = _match(rs, matrices)
        if comps:
            rules = rs
            break
    if not comps:
        sample = ", ".join(n for n, _ in matrices[:5]) or "(the model has no Linear layers)"
        raise UserError(f"component rules {rules.name!r} matched no matrix of this model "
                        f"(its Linear layers include: {sample}); pass the right architecture")
    counts = Counter(c.modality for c in comps)
    empty = [m for m in MODALITIES if not counts[m]]
    if empty:
        raise UserError(f"component rules {rules.name!r} ({rules.layout}) found no {' / '.join(empty)} matrices "
                        f"in this model; is it a vision-language model of that architecture?")
    modality, numel, unassigned = _assign_params(model, rules)
    if unassigned:
        raise UserError(f"component rules {rules.name!r}: parameters outside vision/projector/language: "
                        f"{', '.join(unassigned[:5])}{' ...' if len(unassigned) > 5 else ''}")

    untrainable = []
    if trainable_only:
        kept = []
        for c in comps:
            c.params = [(n, p) for n, p in c.params if p.requires_grad]
            (kept if c.params else untrainable).append(c)
        untrainable = [c.name for c in untrainable]
        comps = kept
        if not comps:
            raise UserError("no monitored matrix has a trainable parameter (is the whole model frozen?)")
    order = {m: i for i, m in enumerate(MODALITIES)}
    comps.sort(key=lambda c: order[c.modality])               # stable: module order within a modality
    for i, c in enumerate([c for c in comps if c.modality == "projector"]):
        c.layer = i
    return Registry(rules.name, rules.layout, comps, modality, numel, untrainable)


def registry_table(reg: Registry) -> str:
    """Per-modality tables: components, parameters, kinds, layers."""
    sizes = reg.modality_sizes()
    lines = [f"architecture: {reg.architecture}  ({reg.layout})", ""]
    for mod, comps in reg.by_modality().items():
        s = sizes[mod]
        layers = sorted({c.layer for c in comps})
        span = f"{layers[0]}-{layers[-1]}" if layers else "-"
        lines.append(f"{mod}: {len(comps)} components, {s['monitored_parameters']:,} monitored of "
                     f"{s['parameters']:,} parameters, layers {span}")
        kinds = Counter(c.kind for c in comps)
        if kinds:
            lines.append(f"  {'kind':<10} {'count':>6} {'parameters':>14}")
            for k in KINDS:
                if kinds[k]:
                    n = sum(c.numel for c in comps if c.kind == k)
                    lines.append(f"  {k:<10} {kinds[k]:>6} {n:>14,}")
        lines.append("")
    if reg.untrainable:
        lines.append(f"not monitored (no trainable parameters): {len(reg.untrainable)} matrices")
    return "\n".join(lines).rstrip() + "\n"
