"""The bundled nanoVLM (pure PyTorch) and its shipped fine-tuning base."""
from pathlib import Path

# the tiny preset after stage 1 on the scenes corpus; `python configs/build_base.py` rebuilds it, and its
# BUILD.json records the command, the thread count and the held-out scores
BASE_DIR = Path(__file__).parent / "base"
