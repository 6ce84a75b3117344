"""k-reciprocal re-ranking (``POST /search`` with ``rerank=true``): its mAP gain and its cost on
real CUHK03 crops (../shared/data/cuhk03-detected.tar.gz: 451 camera-1 queries against the
487-image camera-2 gallery), with the code the service runs (:func:`trainer.rerank.rerank_distances`
on each query's top :data:`~trainer.rerank.SHORTLIST` by cosine).

The encoder: ``--model RUN/model.pt`` (e.g. a `reid train` run on CUHK03), or by default
ImageNet MobileNetV2 at 128x64 (not adapted: a weak starting point). Prints one JSON line.

    python benchmarks/rerank.py
    python benchmarks/rerank.py --model bench_out/recipes/cuhk03-usl/recommended-s1/model.pt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from recipes import cuhk03_folder

from trainer.data import read_dataset
from trainer.embedder import Embedder
from trainer.evaluation import rank_metrics
from trainer.models.export import save_model
from trainer.models.weights import build_encoder
from trainer.rerank import SHORTLIST, rerank_distances


def _model(args: argparse.Namespace) -> Path:
    if args.model is not None:
        return args.model
    path = args.data / "imagenet_mobilenet_v2.pt"
    if not path.is_file():
        save_model(path, build_encoder("mobilenet_v2", "imagenet").eval(), height=128, width=64)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=Path("bench_out/data"))
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    tree = read_dataset(cuhk03_folder(args.data))
    query, gallery = tree.split("query"), tree.split("gallery")
    embedder = Embedder.load(_model(args), "cpu", engine="auto")
    q = embedder.features(tree.root, [i.path for i in query]).numpy()
    g = embedder.features(tree.root, [i.path for i in gallery]).numpy()
    labels = (
        np.array([i.pid for i in query]),
        np.array([i.pid for i in gallery]),
        np.array([i.camid for i in query]),
        np.array([i.camid for i in gallery]),
    )
    cosine = q @ g.T
    before = rank_metrics(1.0 - cosine, *labels)
    reranked = 1.0 - cosine  # the shortlist moves in front, in its re-ranked order
    start = time.perf_counter()
    for i in range(len(q)):
        short = np.argsort(-cosine[i], kind="stable")[:SHORTLIST]
        order = short[np.argsort(rerank_distances(q[i], g[short]), kind="stable")]
        reranked[i, order] = -2.0 + np.arange(len(order)) * 1e-6
    per_query_ms = 1000 * (time.perf_counter() - start) / len(q)
    after = rank_metrics(reranked, *labels)
    print(
        json.dumps(
            {
                "model": str(_model(args)),
                "queries": len(q),
                "gallery": len(g),
                "shortlist": SHORTLIST,
                "mAP": [round(100 * before["mAP"], 2), round(100 * after["mAP"], 2)],
                "rank1": [round(100 * before["rank1"], 2), round(100 * after["rank1"], 2)],
                "rerank_ms_per_query": round(per_query_ms, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
