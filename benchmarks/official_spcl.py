"""Run the official SpCL scripts (github yxgeee/SpCL) on CPU, for a side-by-side measurement.

Takes a checkout of the official repository and drives its own `examples/spcl_train_uda.py` or
`examples/spcl_train_usl.py` training loop (`main_worker`) unchanged, after these run-time
patches, none of which touches the method:

- CPU: `.cuda()` is a no-op; `torch.cuda.device_count()` reports 1 so the DSBN batch layout
  of the UDA trainer is the single-device one; the Jaccard step uses its own CPU FAISS branch
  (`search_option=3`) instead of the GPU one.
- Library drift since 2020: `T.Resize(..., interpolation=3)` is given the bicubic enum, and the
  evaluation is this project's `rank_metrics` on the script's own features (the official
  `pairwise_distance` uses a removed `addmm_` signature and its CMC a removed `np.bool`); same
  protocol (same-id-same-camera gallery items ignored, scikit-learn AP).
- Data and backbone: a Market-1501-layout folder for each domain, and this project's MobileNetV2
  encoder with the same ImageNet weights (GAP → BatchNorm1d neck → L2 norm, the structure of the
  official ResNet with `norm=True`), so both sides train the very same network.

The script evaluates every `--eval-step` epochs and keeps the best checkpoint by *target* mAP;
this driver reports the last epoch (what a user without target labels gets) and, separately,
that best value. Prints one JSON line.

    python benchmarks/official_spcl.py --official ../official-spcl --mode uda \\
        --source bench_out/data/synth_market --target bench_out/data/cuhk03 --seed 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import torch
from torch import nn


def _load_script(official: Path, mode: str) -> ModuleType:
    sys.path.insert(0, str(official))
    path = official / "examples" / f"spcl_train_{mode}.py"
    spec = importlib.util.spec_from_file_location(f"official_spcl_{mode}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _patch_cpu(script: ModuleType) -> None:
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.cuda.device_count = lambda: 1
    jaccard = script.compute_jaccard_distance
    script.compute_jaccard_distance = lambda *a, **k: jaccard(*a, **k, search_option=3)
    from torchvision.transforms import InterpolationMode

    resize = script.T.Resize

    def bicubic_resize(size, interpolation=3, **kwargs):
        mode = InterpolationMode.BICUBIC if interpolation == 3 else interpolation
        return resize(size, interpolation=mode, **kwargs)

    script.T = SimpleNamespace(**{**vars(script.T), "Resize": bicubic_resize})


class _OfficialStyleMobileNet(nn.Module):
    """This project's MobileNetV2 encoder with the attribute the scripts read (`num_features`)."""

    def __init__(self) -> None:
        super().__init__()
        from trainer.models import build_encoder

        self.encoder = build_encoder("mobilenet_v2", pretrained="imagenet")
        self.num_features = self.encoder.feature_dim
        # The official ResNet freezes the neck bias; its convert_dsbn then builds fresh BN
        # layers (bias trainable again), which the UDA script inherits as is.
        self.encoder.neck.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def _market_folder(script: ModuleType, root: Path):
    """The official Market-1501 reader pointed at a folder that *is* the dataset root."""
    market = script.datasets.Market1501

    class Folder(market):
        dataset_dir = "."

    return Folder(str(root))


class _Evaluator:
    """Replaces the script's Evaluator: its features, this project's protocol code."""

    def __init__(self, model: nn.Module, log: list[dict]) -> None:
        self.model = model
        self.log = log

    def evaluate(self, loader, query, gallery, cmc_flag: bool = False, rerank: bool = False):
        from spcl.evaluators import extract_features

        from trainer.evaluation import rank_metrics

        feats, _ = extract_features(self.model, loader)
        q = torch.stack([feats[f] for f, _, _ in query])
        g = torch.stack([feats[f] for f, _, _ in gallery])
        m = rank_metrics(
            1.0 - q @ g.T,
            [p for _, p, _ in query],
            [p for _, p, _ in gallery],
            [c for _, _, c in query],
            [c for _, _, c in gallery],
        )
        self.log.append({k: float(v) for k, v in m.items()})
        print(f"Mean AP: {m['mAP']:.1%}  rank-1: {m['rank1']:.1%}", flush=True)
        return ([m["rank1"], m["rank5"], m["rank10"]], m["mAP"]) if cmc_flag else m["mAP"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="official SpCL checkout")
    parser.add_argument("--mode", choices=("uda", "usl"), default="uda")
    parser.add_argument("--source", type=Path, help="labeled source (Market layout), UDA only")
    parser.add_argument("--target", type=Path, required=True, help="target (Market layout)")
    parser.add_argument("--logs", type=Path, default=Path("bench_out/official"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--eps", type=float, default=0.6)
    parser.add_argument("--eval-step", type=int, default=10, help="the script's default")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args()
    if opts.mode == "uda" and opts.source is None:
        parser.error("--mode uda needs --source")

    script = _load_script(opts.official.resolve(), opts.mode)
    _patch_cpu(script)
    roots = {"source": opts.source, "target": opts.target}
    script.get_data = lambda name, data_dir: _market_folder(script, roots[name])
    script.create_model = _model_factory(script, opts.mode)
    evaluations: list[dict] = []
    script.Evaluator = lambda model: _Evaluator(model, evaluations)
    script.load_checkpoint = lambda path: torch.load(path, map_location="cpu", weights_only=False)

    args = argparse.Namespace(
        dataset_source="source", dataset_target="target", dataset="target",
        batch_size=opts.batch_size, workers=opts.workers, height=opts.height, width=opts.width,
        num_instances=4, eps=opts.eps, eps_gap=0.02, k1=30, k2=6, arch="mobilenet_v2",
        features=0, dropout=0, momentum=0.2, lr=3.5e-4, weight_decay=5e-4, epochs=opts.epochs,
        iters=opts.iters, step_size=20, seed=opts.seed, print_freq=10, eval_step=opts.eval_step,
        temp=0.05, data_dir="", logs_dir=str(opts.logs / f"{opts.mode}_seed{opts.seed}"),
    )  # fmt: skip
    random.seed(opts.seed)
    np.random.seed(opts.seed)
    torch.manual_seed(opts.seed)
    stdout = sys.stdout
    sys.stdout = os.fdopen(os.dup(stdout.fileno()), "w")  # the script's Logger closes its console
    start = time.perf_counter()
    try:
        script.main_worker(args)
    finally:
        sys.stdout = stdout
    seconds = time.perf_counter() - start
    # evaluations: every eval_step epochs, the last epoch, then the best checkpoint again.
    last, best = evaluations[-2], evaluations[-1]
    print(json.dumps({
        "runner": "official", "mode": opts.mode, "seed": opts.seed,
        "mAP": last["mAP"], "rank1": last["rank1"],
        "best_mAP": best["mAP"], "best_rank1": best["rank1"], "seconds": round(seconds, 1),
    }), flush=True)  # fmt: skip


def _model_factory(script: ModuleType, mode: str):
    def create_model(args):
        model = _OfficialStyleMobileNet()
        if mode == "uda":
            script.convert_dsbn(model)
        return nn.DataParallel(model)

    return create_model


if __name__ == "__main__":
    main()
