"""Helpers shared by test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
from sqlalchemy.orm import Session

from app.core.orm import Model
from app.core.storage import StorageLayout
from trainer.models.dsbn import convert_dsbn, is_dsbn
from trainer.models.encoder import Encoder
from trainer.models.export import save_model


def add_untrained_model(
    session: Session,
    storage: StorageLayout,
    job_id: int,
    name: str,
    height: int,
    width: int,
    *,
    dsbn: bool = False,
    flip: bool = False,
) -> Model:
    """An untrained MobileNetV2 saved as ``models/NAME.pt`` and its ``Model`` row for
    ``job_id`` (flushed): what a finished run leaves, without training. ``dsbn``: with a
    source branch whose BN statistics differ from the target's (as after adaptation)."""
    torch.manual_seed(0)
    encoder = Encoder("mobilenet_v2").eval()
    if dsbn:
        convert_dsbn(encoder)
        for module in encoder.modules():
            if is_dsbn(module):
                module.source.running_mean.add_(0.5)
    path = storage.root / "models" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, encoder, height=height, width=width, flip=flip)
    model = Model(
        job_id=job_id,
        arch="mobilenet_v2",
        height=height,
        width=width,
        feature_dim=encoder.feature_dim,
        path=path.relative_to(storage.root).as_posix(),
        size_bytes=path.stat().st_size,
    )
    session.add(model)
    session.flush()
    return model


def zip_tree(root: Path) -> bytes:
    """Every file under ``root`` as a zip archive (paths relative to ``root``), in memory."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root).as_posix())
    return out.getvalue()
