"""The GradES engine: pure PyTorch, no Hugging Face imports (see engine.py for the calling contract)."""
from vlm_grades.grades.config import GradESConfig
from vlm_grades.grades.engine import GradES, broadcast_from_rank0, unwrap_optimizer

__all__ = ["GradES", "GradESConfig", "broadcast_from_rank0", "unwrap_optimizer"]
