"""The bundled nanoVLM (pure PyTorch) and its shipped fine-tuning base."""
from pathlib import Path

# the tiny preset after stage 1 on the scenes corpus (see base/README.md for the commands that rebuild it)
BASE_DIR = Path(__file__).parent / "base"
