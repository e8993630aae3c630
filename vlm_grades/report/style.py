"""Shared figure style: one colour family per modality, readable fonts, PNG bytes without metadata URLs."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colormaps  # noqa: E402

DPI = 150
MODALITY_COLOR = {"vision": "#1f5fa8", "projector": "#2a8a3e", "language": "#d4600b"}
# Overlapping curves stay visible: wide solid vision under dash-dot projector under thin dashed language.
MODALITY_LINE = {"vision": {"ls": "-", "lw": 3.2}, "projector": {"ls": "-.", "lw": 2.4},
                 "language": {"ls": "--", "lw": 1.8}}
MODALITY_CMAP = {"vision": "Blues", "projector": "Greens", "language": "Oranges"}
KIND_GROUPS = ("attention", "MLP", "projector", "other")

RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
      "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.grid": True, "grid.alpha": 0.3,
      "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": DPI}


def color(modality: str) -> str:
    return MODALITY_COLOR.get(modality, "#555555")


def line(modality: str) -> dict:
    return {"color": color(modality), **MODALITY_LINE.get(modality, {"ls": ":", "lw": 1.8})}


def shade(modality: str, layer: int, layers: int):
    """A colour of the modality's family, darker for deeper layers."""
    cmap = colormaps[MODALITY_CMAP.get(modality, "Greys")]
    return cmap(0.45 + 0.5 * (layer / max(layers - 1, 1)))


def kind_group(modality: str, kind: str) -> str:
    k = kind.lower()
    if modality == "projector":
        return "projector"
    if k.startswith(("attn", "self_attn", "attention")) or k.split(".")[-1] in ("q", "k", "v", "o", "qkv", "out"):
        return "attention"
    if k.startswith(("mlp", "ffn", "feed_forward")) or k.split(".")[-1] in ("fc1", "fc2", "gate", "up", "down"):
        return "MLP"
    return "other"


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def empty_figure(title: str, message: str) -> bytes:
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(6, 2.5))
        ax.set_axis_off()
        ax.set_title(title)
        ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#555555")
        return to_png(fig)
