"""What does POST /search cost over the model (eager PyTorch) and FAISS called directly?

A gallery of random unit vectors (default 100,000 x 2048) is indexed with ``FeatureIndex``
and registered as a ready index of a small encoder (ResNet-50 at 128x64: 2048-d); then, in the
same run and process:

* single-query p50 latency: ``POST /search`` (in-process ASGI client: HTTP parsing, multipart,
  threads, micro-batcher, JSON, the ``--engine``) vs preprocessing + eager forward + the index's
  search called directly, and vs the pipeline before ONNX Runtime and the threaded flat scan
  (eager forward + FAISS's own scan: ``direct_before``);
* throughput: 8 concurrent clients on ``POST /search`` vs the direct rate with batches of 8.

    python benchmarks/search.py                       # CPU defaults (about a minute)
    python benchmarks/search.py --gallery 20000 --queries 20
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image as PILImage

from app.core.db import create_db_engine, make_session_factory, upgrade_database
from app.core.orm import Dataset, Job, Model, SearchIndex
from app.core.settings import Settings
from app.core.storage import StorageLayout
from app.main import create_app
from app.search.indexes import ITEMS_FILE, SPLIT_CODES
from trainer.data.images import load_rgb
from trainer.data.transforms import eval_transform
from trainer.index import FeatureIndex
from trainer.models.encoder import Encoder
from trainer.models.export import load_model, save_model


def _jpeg(seed: int, height: int, width: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    PILImage.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def _setup(root: Path, args: argparse.Namespace) -> tuple[Settings, int, Path]:
    """Database rows and files of one ready index over random vectors: (settings, model id,
    index folder)."""
    url = f"sqlite:///{root / 'reid.db'}"
    upgrade_database(url)
    settings = Settings(
        _env_file=None, data_dir=root / "data", database_url=url, inference_engine=args.engine
    )
    torch.manual_seed(0)
    encoder = Encoder(args.arch).eval()
    model_path = root / "data" / "models" / "bench.pt"
    model_path.parent.mkdir(parents=True)
    save_model(model_path, encoder, height=args.height, width=args.width)
    engine = create_db_engine(url)
    factory = make_session_factory(engine)
    with factory() as session:
        dataset = Dataset(name="bench", labeled=False, layout="flat")
        session.add(dataset)
        session.flush()
        job = Job(status="succeeded", config={}, request_hash="0" * 64)
        session.add(job)
        session.flush()
        model = Model(
            job_id=job.id,
            arch=args.arch,
            height=args.height,
            width=args.width,
            feature_dim=encoder.feature_dim,
            path="models/bench.pt",
            size_bytes=model_path.stat().st_size,
        )
        session.add(model)
        session.flush()
        index_row = SearchIndex(
            model_id=model.id, dataset_id=dataset.id, status="ready", kind="flat"
        )
        session.add(index_row)
        session.commit()
        ids = (model.id, index_row.id, dataset.id)
    engine.dispose()
    rng = np.random.default_rng(0)
    n, d = args.gallery, encoder.feature_dim
    feats = rng.standard_normal((n, d), dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    t0 = time.perf_counter()
    index = FeatureIndex.build(feats, np.arange(n, dtype=np.int64), use_gpu=False)
    print(f"index: {n} x {d} {index.kind} built in {time.perf_counter() - t0:.2f}s")
    folder = StorageLayout(root / "data").index_dir(ids[1])
    index.save(folder, feats)
    items = np.zeros((n, 6), dtype=np.int64)
    items[:, 0] = items[:, 1] = np.arange(1, n + 1)
    items[:, 2] = ids[2]
    items[:, 3] = SPLIT_CODES["gallery"]
    items[:, 4] = rng.integers(0, 1000, n)
    items[:, 5] = rng.integers(0, 6, n)
    np.save(folder / ITEMS_FILE, items)
    return settings, ids[0], folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--queries", type=int, default=30, help="single-query repetitions")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=6)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument(
        "--engine", default="auto", choices=("auto", "torch", "onnx"), help="the API's"
    )
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        settings, model_id, folder = _setup(Path(tmp), args)
        images = [_jpeg(i, args.height * 2, args.width * 2) for i in range(args.queries)]
        data = {"model_id": str(model_id), "top_k": str(args.top_k)}

        # --- direct: decode + transform + forward + FAISS
        encoder, meta = load_model(Path(tmp) / "data" / "models" / "bench.pt")
        transform = eval_transform(meta["height"], meta["width"], meta["mean"], meta["std"])
        index = FeatureIndex.load(folder)

        def direct(batch: list[bytes]) -> None:
            x = torch.stack([transform(load_rgb(io.BytesIO(b))) for b in batch])
            with torch.inference_mode():
                q = torch.nn.functional.normalize(encoder(x), dim=1).numpy()
            index.search(q, args.top_k)

        def before(batch: list[bytes]) -> None:
            """The pipeline before ONNX Runtime and the threaded flat scan: eager PyTorch and
            FAISS's own (single-threaded below 20 queries) scan."""
            x = torch.stack([transform(load_rgb(io.BytesIO(b))) for b in batch])
            with torch.inference_mode():
                q = torch.nn.functional.normalize(encoder(x), dim=1).numpy()
            index.index.search(q, args.top_k)

        direct(images[:1])  # warm-up
        before(images[:1])
        batches = [images[i : i + args.clients] for i in range(0, len(images), args.clients)]
        batches = [b for b in batches if len(b) == args.clients] or [images[: args.clients]]
        t0 = time.perf_counter()
        for batch in batches:
            direct(batch)
        direct_rate = sum(len(b) for b in batches) / (time.perf_counter() - t0)

        # --- through the API; single queries alternate with direct calls, so a change of
        # machine load during the run hits both sides alike
        with TestClient(create_app(settings)) as client:

            def post(img: bytes) -> None:
                r = client.post(
                    "/search", data=data, files=[("image", ("q.jpg", img, "image/jpeg"))]
                )
                assert r.status_code == 200, r.text

            post(images[0])  # loads model and index (lazily, in a thread)
            api_times, direct_times, before_times = [], [], []
            for img in images:
                t0 = time.perf_counter()
                direct([img])
                t1 = time.perf_counter()
                post(img)
                t2 = time.perf_counter()
                before([img])
                direct_times.append(t1 - t0)
                api_times.append(t2 - t1)
                before_times.append(time.perf_counter() - t2)
            direct_p50 = statistics.median(direct_times) * 1000
            api_p50 = statistics.median(api_times) * 1000
            before_p50 = statistics.median(before_times) * 1000

            def worker(k: int) -> None:
                for j in range(args.per_client):
                    post(images[(k * args.per_client + j) % len(images)])

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            api_rate = args.clients * args.per_client / (time.perf_counter() - t0)
            loaded = list(client.app.state.model_cache.values())
            forwards = sum(b.forwards for m in loaded for b in m.batchers.values())
            # the API's engine ranks the gallery as eager PyTorch does
            x = torch.stack([transform(load_rgb(io.BytesIO(b))) for b in images])
            with torch.inference_mode():
                reference = torch.nn.functional.normalize(encoder(x), dim=1).numpy()
            _, ids_torch = index.search(reference, args.top_k)
            _, ids_api = index.search(loaded[0].embed(x), args.top_k)
            same_rankings = bool((ids_torch == ids_api).all())
            api_engine = loaded[0].embedder.engine

    result = {
        "gallery": args.gallery,
        "arch": args.arch,
        "input": f"{args.height}x{args.width}",
        "torch_threads": torch.get_num_threads(),
        "api_engine": api_engine,
        f"same_top{args.top_k}_as_torch": same_rankings,
        "single_query_p50_ms": {
            "api": round(api_p50, 2),
            "direct": round(direct_p50, 2),
            "ratio": round(api_p50 / direct_p50, 3),
            "direct_before": round(before_p50, 2),
            "api_over_direct_before": round(api_p50 / before_p50, 3),
        },
        f"throughput_qps_{args.clients}_clients": {
            "api": round(api_rate, 2),
            "direct_batched": round(direct_rate, 2),
            "ratio": round(api_rate / direct_rate, 3),
        },
        "api_forwards_total": forwards,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
