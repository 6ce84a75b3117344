"""Atomic, complete training checkpoints that load with `weights_only=True`.

A checkpoint holds everything a resumed run needs to continue exactly where the interrupted one
stood: model, optimizer, scheduler, AMP scaler, the hybrid memory, the self-paced threshold, the
position (epoch, iteration), RNG states and the configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trainer.files import write_atomic

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "reid-service/checkpoint"


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically: a killed process leaves the previous file intact."""
    return write_atomic(path, lambda fh: torch.save({"format": FORMAT, **state}, fh))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors and plain values only)."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a reid-service training checkpoint")
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
