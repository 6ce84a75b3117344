"""What the demo runs: the sizes of the synthetic data and of the adaptation job.

Why these defaults: MobileNetV2 at 128x64 with ImageNet weights trains at about 85 images/s
on 2 CPU cores (no loader processes: they only compete for the two cores); with 120 people
(60 for training) in 4 cameras per domain, 8 epochs of 16 iterations take about two and a
half minutes and reach the plateau of target mAP (12.0% -> 24.1%; the 16-epoch run of
benchmarks/adaptation.py reaches 25.3%). ``--quick`` is a smoke test of the whole path (about
15 s), not of quality.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PLAN", "QUICK_PLAN", "DemoOptions", "Plan", "make_plan"]


@dataclass(frozen=True)
class Plan:
    """Sizes of the synthetic data and of the training run."""

    identities: int
    cameras: int
    images_per_camera: int
    epochs: int
    iters: int
    batch_size: int
    k1: int
    k2: int
    queries: int
    height: int = 128
    width: int = 64
    arch: str = "mobilenet_v2"
    num_instances: int = 4

    def job_config(self, pretrained: str, seed: int, device: str, workers: int) -> dict[str, Any]:
        """The ``config`` of ``POST /jobs``: the default recipe (eps chosen from the data),
        evaluated every epoch so mAP has a curve."""
        return {
            "arch": self.arch,
            "pretrained": pretrained,
            "epochs": self.epochs,
            "iters": self.iters,
            "batch_size": self.batch_size,
            "num_instances": self.num_instances,
            "height": self.height,
            "width": self.width,
            "k1": self.k1,
            "k2": self.k2,
            "step_size": max(1, self.epochs * 3 // 4),
            "eval_step": 1,
            "seed": seed,
            "device": device,
            "workers": workers,
        }


DEFAULT_PLAN = Plan(
    identities=120, cameras=4, images_per_camera=6, epochs=8, iters=16, batch_size=32,
    k1=30, k2=6, queries=6,
)  # fmt: skip
QUICK_PLAN = Plan(
    identities=16, cameras=3, images_per_camera=3, epochs=2, iters=2, batch_size=16,
    k1=10, k2=4, queries=4,
)  # fmt: skip


@dataclass
class DemoOptions:
    """The command line of ``reid demo`` (``None``: the plan's value)."""

    out: Path = Path("reid-demo")
    port: int = 8000
    keep_running: bool = False
    quick: bool = False
    epochs: int | None = None
    iters: int | None = None
    identities: int | None = None
    queries: int | None = None
    seed: int = 0
    device: str = "auto"
    workers: int = 0  # loader processes: none is faster on 2 cores (same result either way)


def make_plan(options: DemoOptions) -> Plan:
    """The quick or default plan with the command line's overrides."""
    base = QUICK_PLAN if options.quick else DEFAULT_PLAN
    changes = {
        name: value
        for name, value in (
            ("epochs", options.epochs),
            ("iters", options.iters),
            ("identities", options.identities),
            ("queries", options.queries),
        )
        if value is not None
    }
    return Plan(**{**base.__dict__, **changes})
