"""Training recipes side by side: `paper`, each improvement alone on top of it, `recommended`.

Benchmarks (target mAP / rank-1 on the target's query/gallery split, the last epoch's model):

- `cuhk03-usl`: unsupervised on real CUHK03 crops (`../shared/data/cuhk03-detected.tar.gz`,
  labels ignored), evaluated on its disjoint query/gallery identities;
- `synth-cuhk03`: a `reid synth` source (daylight `market` style, 200 labeled people) adapted
  to CUHK03, the setting of the paper's PersonX → Market experiment;
- `market-night`: the synthetic daylight → night pair of `benchmarks/adaptation.py`;
- `cuhk03-night`: real labeled CUHK03 as the source, a synthetic night street as the target.

Budget (the issue's, CPU): MobileNetV2 + ImageNet weights, 128×64, 20 epochs × 30 iterations ×
batch 32 per domain. Every run is cached as JSON under OUT, so a rerun only trains what is
missing; `--official CHECKOUT` adds the official scripts (benchmarks/official_spcl.py) on
synth-cuhk03. Prints a markdown table: mean ± sd over the seeds, and the train wall time.

    python benchmarks/recipes.py                                  # everything, 3 seeds
    python benchmarks/recipes.py --benchmarks cuhk03-usl --rows paper recommended --seeds 1
    python benchmarks/recipes.py --row eps0.5:recipe=paper,eps=0.5  # an extra row to try
    python benchmarks/recipes.py --official ../official-spcl --benchmarks synth-cuhk03
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.config import TrainConfig
from trainer.data import read_dataset, strip_labels
from trainer.data.transforms import eval_transform
from trainer.engine import DomainData, EvalData, SpCLTrainer
from trainer.events import EpochStart, Event, Iteration
from trainer.features import evaluate_retrieval
from trainer.models import load_model
from trainer.synth import generate_dataset

CUHK03 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cuhk03-detected.tar.gz"
BUDGET = {
    "arch": "mobilenet_v2", "pretrained": "imagenet", "height": 128, "width": 64,
    "epochs": 20, "iters": 30, "batch_size": 32, "num_instances": 4, "device": "cpu",
}  # fmt: skip

# Rows: training options on top of the budget. `flip` changes no training, so its row
# re-evaluates the paper row's models (same seeds) with flip-averaged embeddings.
ROWS: dict[str, dict] = {
    "paper": {"recipe": "paper"},
    "+auto-eps": {"recipe": "paper", "eps": "auto"},
    "+camera-centring": {"recipe": "paper", "camera_centring": True},
    "+camera-contrast": {"recipe": "paper", "camera_contrast": True},
    "+refresh": {"recipe": "paper", "refresh_every": 5},
    "+image-anchors": {"recipe": "paper", "image_anchors": True},
    "+flip": {"recipe": "paper", "flip": True},
    "+channels-last": {"recipe": "paper", "channels_last": True},
    "+gem": {"recipe": "paper", "pooling": "gem"},
    "recommended": {"recipe": "recommended"},
}
EVAL_ONLY = {"+flip": "paper"}


@dataclass(frozen=True)
class Benchmark:
    source: Path | None
    target: Path


def cuhk03_folder(data: Path) -> Path:
    """``data/cuhk03``: the real CUHK03 crops, extracted from ../shared/data once."""
    root = data / "cuhk03"
    if not (root / "bounding_box_train").is_dir():
        if not CUHK03.is_file():
            sys.exit(f"{CUHK03} is missing (see ../shared/data/README.md)")
        tmp = data / ".cuhk03.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(CUHK03) as tar:
            tar.extractall(tmp, filter="data")
        tmp.rename(root)
    return root


def _synth(data: Path, name: str, identities: int, style: str, seed: int) -> Path:
    root = data / name
    if not root.exists():
        generate_dataset(root, identities=identities, cameras=4, style=style, seed=seed,
                         height=128, width=64)  # fmt: skip
    return root


def benchmarks(data: Path) -> dict[str, Benchmark]:
    data.mkdir(parents=True, exist_ok=True)
    return {
        "cuhk03-usl": Benchmark(None, cuhk03_folder(data)),
        "synth-cuhk03": Benchmark(
            _synth(data, "synth_market", 400, "market", 0), cuhk03_folder(data)
        ),
        "market-night": Benchmark(
            _synth(data, "market", 120, "market", 0), _synth(data, "night", 120, "night", 1)
        ),
        "cuhk03-night": Benchmark(
            cuhk03_folder(data), _synth(data, "synth_night", 400, "night", 2)
        ),
    }


def _evaluation(target: Path) -> EvalData:
    ds = read_dataset(target)
    return EvalData(ds.root, ds.split("query"), ds.split("gallery"))


def train(bench: Benchmark, options: dict, seed: int, run_dir: Path, workers: int) -> dict:
    """One training run; returns its result (metrics, wall time, the eps it clustered with)."""
    cfg = TrainConfig.from_dict({**BUDGET, **options, "seed": seed, "workers": workers,
                                 "eval_step": BUDGET["epochs"]})  # fmt: skip
    domains = {}
    if bench.source is not None:
        ds = read_dataset(bench.source)
        domains["source"] = DomainData(ds.root, ds.split("train"))
    ds = read_dataset(bench.target)
    domains["target"] = DomainData(ds.root, strip_labels(ds.split("train")))
    eps_used: list[float] = []
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    log = (run_dir / "events.jsonl").open("w")

    def keep(event: Event) -> None:
        if isinstance(event, EpochStart) and event.epoch == 0:
            eps_used.append(event.eps)
        if not isinstance(event, Iteration):
            log.write(json.dumps(event.to_dict()) + "\n")
            log.flush()

    trainer = SpCLTrainer(cfg, run_dir, evaluation=_evaluation(bench.target), callback=keep,
                          **domains)  # fmt: skip
    start = time.perf_counter()
    result = trainer.run()
    seconds = time.perf_counter() - start
    log.close()
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    m = result.last_evaluation
    return {"mAP": m["mAP"], "rank1": m["rank1"], "seconds": round(seconds, 1),
            "eps": eps_used[0] if eps_used else None, "config": cfg.to_dict()}  # fmt: skip


def reevaluate(bench: Benchmark, model_dir: Path, flip: bool, base: dict) -> dict:
    """A trained row's model evaluated again with other embedding options (no training)."""
    model, meta = load_model(model_dir / "model.pt")
    ev = _evaluation(bench.target)
    transform = eval_transform(meta["height"], meta["width"])
    m = evaluate_retrieval(
        model, ev.root, ev.query, ev.gallery, transform, torch.device("cpu"), flip=flip
    )
    return {**base, "mAP": m["mAP"], "rank1": m["rank1"]}


def official(checkout: Path, bench: Benchmark, seed: int, logs: Path, workers: int) -> dict:
    script = Path(__file__).with_name("official_spcl.py")
    cmd = [sys.executable, str(script), "--official", str(checkout), "--mode", "uda",
           "--source", str(bench.source), "--target", str(bench.target), "--seed", str(seed),
           "--epochs", str(BUDGET["epochs"]), "--iters", str(BUDGET["iters"]),
           "--batch-size", str(BUDGET["batch_size"]), "--eval-step", str(BUDGET["epochs"]),
           "--workers", str(workers), "--logs", str(logs)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _parse_row(text: str) -> tuple[str, dict]:
    """NAME:key=value,key=value (values parsed as JSON where they can be)."""
    name, _, spec = text.partition(":")
    options = {}
    for pair in filter(None, spec.split(",")):
        key, _, value = pair.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return name, options


def _cell(results: list[dict], key: str) -> str:
    values = [100 * r[key] for r in results]
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/recipes"))
    parser.add_argument("--benchmarks", nargs="+", default=["cuhk03-usl", "synth-cuhk03",
                                                            "market-night"])  # fmt: skip
    parser.add_argument("--rows", nargs="*", default=list(ROWS))
    parser.add_argument("--row", action="append", default=[], help="extra NAME:key=value,…")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--official", type=Path, help="official SpCL checkout: adds its row")
    parser.add_argument(
        "--official-on",
        nargs="+",
        default=["synth-cuhk03"],
        help="benchmarks the official row runs on (default: synth-cuhk03)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--table-only", action="store_true", help="print cached results only")
    args = parser.parse_args()

    rows = {name: ROWS[name] for name in args.rows}
    rows.update(_parse_row(text) for text in args.row)
    if args.official:
        rows["official"] = {}
    benches = benchmarks(args.out / "data")
    table: dict[tuple[str, str], list[dict]] = {}
    for bench_name in args.benchmarks:
        bench = benches[bench_name]
        for row, options in rows.items():
            if row == "official" and (bench.source is None or bench_name not in args.official_on):
                continue
            for seed in args.seeds:
                cached = args.out / bench_name / row / f"seed{seed}.json"
                if not cached.exists() and not args.table_only:
                    print(f"{bench_name} / {row} / seed {seed} ...", flush=True)
                    run_dir = args.out / "runs" / bench_name / row / f"seed{seed}"
                    if row == "official":
                        result = official(args.official, bench, seed, run_dir, args.workers)
                    elif row in EVAL_ONLY:
                        base_file = args.out / bench_name / EVAL_ONLY[row] / f"seed{seed}.json"
                        if not base_file.exists():
                            print(f"  needs row {EVAL_ONLY[row]!r} first; skipped")
                            continue
                        base_dir = args.out / "runs" / bench_name / EVAL_ONLY[row] / f"seed{seed}"
                        result = reevaluate(bench, base_dir, options.get("flip", False),
                                            json.loads(base_file.read_text()))  # fmt: skip
                    else:
                        result = train(bench, options, seed, run_dir, args.workers)
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    cached.write_text(json.dumps(result))
                    print(f"  mAP {100 * result['mAP']:.1f}  rank-1 {100 * result['rank1']:.1f}  "
                          f"{result['seconds']:.0f} s", flush=True)  # fmt: skip
                if cached.exists():
                    table.setdefault((bench_name, row), []).append(json.loads(cached.read_text()))

    header = " | ".join(f"{b} mAP | {b} R1 | {b} train s" for b in args.benchmarks)
    print(f"\n| row | {header} |")
    print("|---" * (1 + 3 * len(args.benchmarks)) + "|")
    for row in rows:
        cells = []
        for b in args.benchmarks:
            results = table.get((b, row), [])
            seconds = [r["seconds"] for r in results]
            cells += [_cell(results, "mAP"), _cell(results, "rank1"),
                      f"{statistics.mean(seconds):.0f}" if seconds else "–"]  # fmt: skip
        print(f"| {row} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
