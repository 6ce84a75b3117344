"""The demo's local machine-learning steps: synthetic datasets, archives, and the starting
model's target mAP and rankings.

Why the baseline is measured here rather than by the service: a job only evaluates after
training, and the service only indexes trained models; the untrained starting point (same
encoder, same weights, same evaluation code, :func:`trainer.features.evaluate_retrieval`) is
what "before adaptation" means.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.plan import Plan
from demo.report import Hit
from demo.searches import data_uri

__all__ = [
    "SOURCE_STYLE",
    "TARGET_STYLE",
    "StartingModel",
    "evaluate_start",
    "load_start",
    "pack",
    "rank_before",
    "resolve_pretrained",
    "synthesize",
]

SOURCE_STYLE, TARGET_STYLE = "market", "night"


def synthesize(data: Path, plan: Plan, seed: int) -> dict[str, dict[str, int]]:
    """The two datasets, drawn in two styles with different people (seeds differ)."""
    from trainer.synth import generate_dataset

    counts = {}
    for name, style, offset in (("source", SOURCE_STYLE, 0), ("target", TARGET_STYLE, 1)):
        counts[name] = generate_dataset(
            data / name,
            identities=plan.identities,
            cameras=plan.cameras,
            style=style,
            seed=seed + offset,
            height=plan.height,
            width=plan.width,
            images_per_camera=plan.images_per_camera,
            workers=0,
        )
    return counts


def pack(folder: Path, archive: Path) -> Path:
    """Zip the Market-1501 splits of ``folder`` (stored: JPEGs do not compress)."""
    from trainer.synth import SPLITS

    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for split in SPLITS:
            for path in sorted((folder / split).iterdir()):
                zf.write(path, f"{split}/{path.name}")
    return archive


def resolve_pretrained(arch: str) -> tuple[str, str | None]:
    """``imagenet`` when the weights are on disk, else ``none`` and a warning to print."""
    from trainer.models.weights import WeightsUnavailable, imagenet_weights_path

    try:
        imagenet_weights_path(arch)
    except WeightsUnavailable as exc:
        return "none", (
            f"warning: {exc} Training from random weights instead: expect a weak model and "
            "little gain."
        )
    return "imagenet", None


@dataclass
class StartingModel:
    """The job's starting point (same encoder, pooling and weights, untrained) on the local
    target, embedding as the job's model will (``flip``)."""

    model: Any
    device: Any
    transform: Any
    root: Path
    gallery: list[Any]
    flip: bool


_STARTING_MODEL_FIELDS = (
    "arch", "pretrained", "pooling", "seed", "height", "width", "recipe", "flip"
)  # fmt: skip


def load_start(target: Path, config: dict[str, Any], device: str) -> StartingModel:
    """Build the encoder the job with ``config`` starts from, for the target's local copy."""
    import torch

    from trainer.config import TrainConfig
    from trainer.data import read_dataset
    from trainer.data.transforms import eval_transform
    from trainer.engine import resolve_device
    from trainer.models import build_encoder

    # Only the fields that shape the starting model: the service validates the whole request
    # (and names what is wrong with it), this local copy must not pre-empt that answer.
    cfg = TrainConfig.from_dict({k: config[k] for k in _STARTING_MODEL_FIELDS if k in config})
    dataset = read_dataset(target)
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # as the job does before building (matters without weights)
        model = build_encoder(cfg.arch, pretrained=cfg.pretrained, pooling=cfg.pooling).to(dev)
    transform = eval_transform(cfg.height, cfg.width)
    return StartingModel(model, dev, transform, dataset.root, dataset.split("gallery"), cfg.flip)


def evaluate_start(start: StartingModel) -> dict[str, float]:
    """Target mAP/CMC before adaptation, by the evaluation code the job runs every epoch."""
    from trainer.data import read_dataset
    from trainer.features import evaluate_retrieval

    query = read_dataset(start.root).split("query")
    return evaluate_retrieval(
        start.model,
        start.root,
        query,
        start.gallery,
        start.transform,
        start.device,
        flip=start.flip,
    )


def rank_before(start: StartingModel, queries: list[dict], top_k: int) -> list[list[Hit]]:
    """What the starting model would have answered to the demo's searches: the same gallery,
    the query's camera excluded, cosine scores; thumbnails from the local files."""
    from trainer.features import ImageDataset, extract_features

    paths = [q["path"] for q in queries] + [g.path for g in start.gallery]
    feats = extract_features(
        start.model, ImageDataset(start.root, paths, start.transform), start.device, flip=start.flip
    )
    q_feats, g_feats = feats[: len(queries)], feats[len(queries) :]
    scores = (q_feats @ g_feats.T).numpy()
    out = []
    for query, row in zip(queries, scores, strict=True):
        keep = [i for i in row.argsort()[::-1] if start.gallery[i].camid != query["camid"]]
        out.append(
            [
                Hit(
                    rank=rank,
                    image_uri=data_uri((start.root / start.gallery[i].path).read_bytes()),
                    score=float(row[i]),
                    pid=start.gallery[i].pid,
                    camid=start.gallery[i].camid,
                    correct=None if query["pid"] is None else start.gallery[i].pid == query["pid"],
                )
                for rank, i in enumerate(keep[:top_k], start=1)
            ]
        )
    return out
