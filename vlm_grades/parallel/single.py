"""One process: the interface every parallel mode implements, with nothing to wrap, reduce or gather."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from vlm_grades.errors import UserError
from vlm_grades.parallel.sharded_checkpoint import is_sharded_checkpoint
from vlm_grades.training.checkpoint import rng_state, save_checkpoint
from vlm_grades.training.divergence import keep_last_finite, nonfinite_parameter

Parts = Callable[[], dict[str, Any]]   # the checkpoint parts beside model and optimizer, built on demand


class SingleProcess:
    sharded = False
    flag = "ddp"                                 # the --distributed value that writes this kind of checkpoint
    feature_cache_blocker: str | None = None     # why the frozen-tower feature cache cannot run, if it cannot

    def __init__(self, accelerator):
        self.acc = accelerator
        self.main = accelerator.is_main_process

    # set-up --------------------------------------------------------------------------------------
    def prepare(self, module: nn.Module) -> bool:
        """Before the optimizer exists; True when the module's parameters were replaced (rebuild the registry)."""
        return False

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module the forward goes through; called again whenever the set of trainable parameters changes."""
        return module

    # numbers every process must agree on --------------------------------------------------------
    def mean(self, value: float) -> float:
        return value

    reduce_sum: Callable[[list[int]], list[int]] | None = None   # None: one process, nothing to add up

    def rng_states(self) -> list[dict[str, Any]]:
        return [rng_state()]

    def nonfinite(self, module: nn.Module) -> str | None:
        """The first parameter holding NaN/Inf (the same answer on every process)."""
        return nonfinite_parameter(module)

    # checkpoints --------------------------------------------------------------------------------
    def check_checkpoint(self, path: Path) -> None:
        if is_sharded_checkpoint(path) != self.sharded:
            written = "with" if is_sharded_checkpoint(path) else "without"
            raise UserError(f"--distributed {self.flag}: {path} was written {written} FSDP sharding; "
                            f"resume with --distributed {'fsdp' if written == 'with' else 'ddp'}")

    def restore_model(self, path: Path, parts: dict[str, Any], module: nn.Module) -> None:
        module.load_state_dict(parts["model"])

    def restore_optimizer(self, path: Path, parts: dict[str, Any], module: nn.Module, optimizer) -> None:
        """After the stopping policy re-froze its matrices, so the optimizer state matches the trainable set."""
        optimizer.load_state_dict(parts["optimizer"])

    def save(self, run, step: int, module: nn.Module, optimizer, parts: Parts, loop: dict[str, Any],
             keep: int) -> Path | None:
        """Writes checkpoint `step` (every process calls it); the folder on the main process."""
        path = None
        if self.main:
            path = save_checkpoint(run.checkpoints, step, {"model": module.state_dict(),
                                                           "optimizer": optimizer.state_dict(), **parts()},
                                   {"loop": loop}, keep)
        return path

    # the end ------------------------------------------------------------------------------------
    def finish(self, adapter, module: nn.Module, run, diverged: bool) -> Path | None:
        """Every process: puts the model to save or evaluate into the main process's adapter; for a diverged run
        the checkpoint whose weights it then holds (None: the main process picks it in `keep_diverged`)."""
        return None

    def keep_diverged(self, run, adapter, step: int, reason: str, restored: Path | None) -> dict[str, Any]:
        """Main process, diverged run: final/ from the last finite checkpoint; the summary's lines."""
        return keep_last_finite(run, adapter, step, reason)

