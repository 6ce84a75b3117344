"""Training options of SpCL, with the official defaults and range checks.

The same names are used by `reid train` flags and by the job API's `config` object, so one
validation serves both and an error always names the offending field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Options that may change between a run and its resumption without changing the result.
RESUMABLE_CHANGES = ("workers", "device")


@dataclass
class TrainConfig:
    """Hyper-parameters of one SpCL run (defaults: the paper's Market-1501 settings)."""

    arch: str = "resnet50"
    pretrained: str = "imagenet"
    pooling: str = "avg"
    epochs: int = 50
    iters: int = 400
    batch_size: int = 64
    num_instances: int = 4
    height: int = 256
    width: int = 128
    eps: float = 0.6
    eps_gap: float = 0.02
    k1: int = 30
    k2: int = 6
    temp: float = 0.05
    momentum: float = 0.2
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20
    eval_step: int = 10
    seed: int = 1
    device: str = "auto"
    workers: int = 4
    amp: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range."""
        from trainer.models import ARCHS, POOLINGS  # torch: only when a config is built

        checks: list[tuple[str, bool, str]] = [
            ("arch", self.arch in ARCHS, f"one of {', '.join(ARCHS)}"),
            ("pooling", self.pooling in POOLINGS, f"one of {', '.join(POOLINGS)}"),
            ("pretrained", bool(self.pretrained), "'imagenet', 'none' or a path"),
            ("epochs", 1 <= self.epochs <= 10_000, "between 1 and 10000"),
            ("iters", 1 <= self.iters <= 1_000_000, "between 1 and 1000000"),
            ("batch_size", 1 <= self.batch_size <= 4096, "between 1 and 4096"),
            ("num_instances", 1 <= self.num_instances <= self.batch_size, "in 1..batch_size"),
            ("height", 16 <= self.height <= 2048, "between 16 and 2048"),
            ("width", 16 <= self.width <= 2048, "between 16 and 2048"),
            ("eps", 0 < self.eps < 1, "in (0, 1)"),
            ("eps_gap", 0 <= self.eps_gap < min(self.eps, 1 - self.eps), "in [0, min(eps, 1-eps))"),
            ("k1", 1 <= self.k1 <= 1000, "between 1 and 1000"),
            ("k2", 1 <= self.k2 <= self.k1, "in 1..k1"),
            ("temp", 0 < self.temp <= 10, "in (0, 10]"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("lr", 0 < self.lr <= 1, "in (0, 1]"),
            ("weight_decay", 0 <= self.weight_decay <= 1, "in [0, 1]"),
            ("step_size", self.step_size >= 1, ">= 1"),
            ("eval_step", self.eval_step >= 1, ">= 1"),
            ("seed", 0 <= self.seed < 2**32, "in [0, 2**32)"),
            (
                "device",
                self.device in ("auto", "cpu") or self.device.startswith("cuda"),
                "'auto', 'cpu', 'cuda' or 'cuda:N'",
            ),
            ("workers", 0 <= self.workers <= 64, "between 0 and 64"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON- and checkpoint-safe values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping, rejecting unknown names (typos must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values)

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of the options that differ and would change a resumed run's result."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if mine[k] != theirs[k] and k not in RESUMABLE_CHANGES]
