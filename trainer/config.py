"""Training options of SpCL, the two recipes that set their defaults, and range checks.

The same names are used by `reid train` flags and by the job API's `config` object, so one
validation serves both and an error always names the offending field.

A *recipe* chooses the value of every option left unset (None): `paper` is the published SpCL
(Ge et al., NeurIPS 2020) as its official code runs it; `recommended` adds the improvements that
paid off in this project's measurements (README, "Training recipes"). Each improvement is an
option of its own, so an explicit value always wins over the recipe (`--recipe paper
--camera-contrast` measures that improvement alone).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Options that may change between a run and its resumption without changing the result.
RESUMABLE_CHANGES = ("workers", "device")

AUTO = "auto"  # eps: choose the DBSCAN radius from the target data (trainer/auto_eps.py)

# The value each recipe gives to the options left unset.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "eps": 0.6,
        "camera_contrast": False,
        "camera_centring": False,
        "refresh_every": 0,
        "image_anchors": False,
        "flip": False,
        "channels_last": False,
    },
    "recommended": {
        "eps": AUTO,
        "camera_contrast": True,
        "camera_centring": True,
        "refresh_every": 5,
        "image_anchors": True,
        "flip": True,
        "channels_last": True,
    },
}
DEFAULT_RECIPE = "recommended"
# What a stored configuration written before recipes existed ran (checkpoints, job rows).
LEGACY_RECIPE = "paper"


@dataclass
class TrainConfig:
    """Hyper-parameters of one SpCL run (defaults: the paper's Market-1501 settings).

    The options a recipe sets default to None: the recipe's value is filled in at construction,
    so a built config never holds None. `camera_contrast`: the inter-camera proxy loss;
    `camera_centring`: camera-mean removal before clustering (both in trainer/camera.py);
    `eps="auto"`: the radius chosen from the data (trainer/auto_eps.py); `refresh_every`:
    re-embed the target memory rows every N epochs (0: never); `image_anchors`: target batches
    anchored on every image once per pass (trainer/data/sampler.py); `flip`: flip-averaged
    embeddings wherever the model embeds (evaluation, `reid embed`, indexes, search; recorded in
    the model file); `channels_last`: the channels-last memory layout on the CPU too (always on
    CUDA): faster convolutions, results equal up to float rounding.
    """

    recipe: str = DEFAULT_RECIPE
    arch: str = "resnet50"
    pretrained: str = "imagenet"
    pooling: str = "avg"
    epochs: int = 50
    iters: int = 400
    batch_size: int = 64
    num_instances: int = 4
    height: int = 256
    width: int = 128
    eps: float | str | None = None
    eps_gap: float = 0.02
    k1: int = 30
    k2: int = 6
    temp: float = 0.05
    momentum: float = 0.2
    camera_contrast: bool | None = None
    camera_centring: bool | None = None
    refresh_every: int | None = None
    image_anchors: bool | None = None
    flip: bool | None = None
    channels_last: bool | None = None
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20
    eval_step: int = 10
    seed: int = 1
    device: str = "auto"
    workers: int = 4
    amp: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, str) or self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.validate()

    @property
    def auto_eps(self) -> bool:
        """Whether the DBSCAN radius is chosen from the data at the first epoch."""
        return self.eps == AUTO

    def validate(self) -> None:
        """Raise ValueError naming the first field of the wrong type or out of range."""
        from trainer.models import ARCHS, POOLINGS  # torch: only when a config is built

        _check_types(self)
        eps = 0.5 if self.auto_eps else self.eps  # the auto grid lies well inside (0.2, 0.8)
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
            ("eps", self.auto_eps or 0 < self.eps < 1, f"'{AUTO}' or in (0, 1)"),
            ("eps_gap", 0 <= self.eps_gap < min(eps, 1 - eps), "in [0, min(eps, 1-eps))"),
            ("k1", 1 <= self.k1 <= 1000, "between 1 and 1000"),
            ("k2", 1 <= self.k2 <= self.k1, "in 1..k1"),
            ("temp", 0 < self.temp <= 10, "in (0, 10]"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("lr", 0 < self.lr <= 1, "in (0, 1]"),
            ("weight_decay", 0 <= self.weight_decay <= 1, "in [0, 1]"),
            ("step_size", self.step_size >= 1, ">= 1"),
            ("eval_step", self.eval_step >= 1, ">= 1"),
            ("refresh_every", self.refresh_every >= 0, ">= 0 (0: never)"),
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
        """Plain, JSON- and checkpoint-safe values (the recipe's choices filled in)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping, rejecting unknown names (typos must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_stored(cls, values: dict[str, Any]) -> TrainConfig:
        """A configuration saved earlier (checkpoint, job row): one written before recipes
        existed ran the paper's recipe, so that is what it resumes as."""
        return cls.from_dict({"recipe": LEGACY_RECIPE, **values})

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of the options that differ and would change a resumed run's result."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if mine[k] != theirs[k] and k not in RESUMABLE_CHANGES]


# What each option accepts (after the recipe filled in its choices), for a readable error.
_STRINGS = ("recipe", "arch", "pretrained", "pooling", "device")
_BOOLS = (
    "camera_contrast",
    "camera_centring",
    "image_anchors",
    "flip",
    "channels_last",
    "amp",
)
_NUMBERS = ("eps_gap", "temp", "momentum", "lr", "weight_decay")


def _type_error(name: str, value: Any) -> str | None:
    """What `name` must be, if `value` is of the wrong type (JSON gives any type to any field)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if name in _STRINGS:
        return None if isinstance(value, str) else "a string"
    if name in _BOOLS:
        return None if isinstance(value, bool) else "true or false"
    if name == "eps":
        return None if number or value == AUTO else f"a number or '{AUTO}'"
    if name in _NUMBERS:
        return None if number else "a number"
    return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"


def _check_types(config: TrainConfig) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        expected = _type_error(f.name, value)
        if expected is not None:
            raise ValueError(f"{f.name} must be {expected}, got {value!r}")
