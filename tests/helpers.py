"""Helpers shared by test modules (plain functions and the service harness; fixtures live in
conftest.py)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.core.db import create_db_engine, make_session_factory
from app.core.orm import Model
from app.core.settings import Settings
from app.core.storage import StorageLayout
from app.jobs.dispatch import Dispatcher
from app.main import create_app
from trainer.models.dsbn import convert_dsbn, is_dsbn
from trainer.models.encoder import Encoder
from trainer.models.export import save_model
from worker.dispatch import CeleryDispatcher
from worker.embedded import EmbeddedWorker


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


class ServiceHarness:
    """Apps over one database and data directory, built the way every service test needs:
    settings from arguments only (no ``.env``), each client entered (lifespan run) and closed
    at :meth:`close`, and a session factory of its own for checks behind the API's back.

    Jobs go to Celery when ``broker_url`` is set, to the embedded worker when
    ``embedded_worker=True``, else they wait in the database.
    """

    def __init__(self, db_url: str, data_dir: Path, **defaults: Any) -> None:
        self.db_url = db_url
        self.data_dir = data_dir
        self.defaults = defaults
        self.clients: list[TestClient] = []
        self.engine = create_db_engine(db_url)
        self.factory = make_session_factory(self.engine)

    def settings(self, **kwargs: Any) -> Settings:
        values = {**self.defaults, **kwargs}
        return Settings(_env_file=None, data_dir=self.data_dir, database_url=self.db_url, **values)

    def client(self, *, embedded_worker: bool = False, **kwargs: Any) -> TestClient:
        settings = self.settings(**kwargs)
        dispatcher: Dispatcher | None = None
        if settings.broker_url:
            dispatcher = CeleryDispatcher(settings)
        elif embedded_worker:
            dispatcher = EmbeddedWorker(settings)
        client = TestClient(create_app(settings, dispatcher=dispatcher))
        client.__enter__()
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in reversed(self.clients):
            client.__exit__(None, None, None)
        self.engine.dispose()
