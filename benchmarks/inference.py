"""Embedding throughput: eager PyTorch vs ONNX Runtime (the model's own export), on this machine.

For each encoder (MobileNetV2 at 128x64, ResNet-50 at 256x128; random weights: speed does not
depend on them) a model file is written, exported with ``reid export``'s code, and both engines
embed the same batches of 1 and 32 images; prints images/s per engine and batch, the speed-up,
and how far the two engines' embeddings are apart (max |diff|). One JSON line per encoder.

    python benchmarks/inference.py
    python benchmarks/inference.py --archs mobilenet_v2 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from trainer.embedder import Embedder
from trainer.models.encoder import Encoder
from trainer.models.export import save_model
from trainer.onnx_embedder import parity

SIZES = {"mobilenet_v2": (128, 64), "resnet50": (256, 128)}


def images_per_s(embed, batch: torch.Tensor, repeats: int) -> float:
    embed(batch)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        embed(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def measure(arch: str, folder: Path, repeats: int) -> dict:
    height, width = SIZES[arch]
    torch.manual_seed(0)
    model = folder / f"{arch}.pt"
    save_model(model, Encoder(arch).eval(), height=height, width=width)
    eager = Embedder.load(model, "cpu", engine="torch")
    onnx = Embedder.load(model, "cpu", engine="onnx")
    out: dict = {"arch": arch, "input": f"{height}x{width}", "threads": torch.get_num_threads()}
    for n in (1, 32):
        batch = torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(n))
        runs = max(2, repeats if n == 1 else repeats // 4)
        torch_rate = images_per_s(eager.embed, batch, runs)
        onnx_rate = images_per_s(onnx.embed, batch, runs)
        out[f"torch_img_s_b{n}"] = round(torch_rate, 1)
        out[f"onnx_img_s_b{n}"] = round(onnx_rate, 1)
        out[f"speedup_b{n}"] = round(onnx_rate / torch_rate, 2)
        if n == 32:
            out["max_abs_diff"] = float(
                f"{parity(eager.embed(batch), onnx.embed(batch)).max_abs:.2e}"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=40, help="timed runs at batch 1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            print(json.dumps(measure(arch, Path(tmp), args.repeats)), flush=True)


if __name__ == "__main__":
    main()
