"""The ``reid`` command line: one subcommand per task of the re-identification pipeline.

Each subcommand is a ``_register_<name>(subparsers)`` function that adds its parser and sets
``func`` to a handler ``(args) -> exit status``; listing it in ``_SUBCOMMANDS`` is all it
takes to add one. Handlers raise ``ValueError``/``OSError`` for bad input, which ``main``
turns into a one-line message on stderr and ``SystemExit(2)`` (as argparse does for bad
arguments), so users never see a traceback for a typo.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type that rejects integers below ``minimum`` with a readable message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


# --------------------------------------------------------------------------------------
# reid synth


def _register_synth(subparsers: argparse._SubParsersAction) -> None:
    from trainer.synth import STYLES  # light import: numpy and PIL only

    styles = ", ".join(f"{name} ({s.description})" for name, s in STYLES.items())
    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic Market-1501-style dataset",
        description=(
            "Draw a synthetic re-ID dataset (bounding_box_train, query, bounding_box_test) "
            "for tests, benchmarks and demos. Deterministic for a given seed."
        ),
        epilog=f"styles: {styles}",
    )
    parser.add_argument("out", type=Path, help="output directory (created; must be empty)")
    parser.add_argument(
        "--identities",
        type=_int_at_least(2),
        default=100,
        help="number of people; the first half is train (default: 100)",
    )
    parser.add_argument(
        "--cameras",
        type=_int_at_least(2),
        default=6,
        help="number of cameras, at most 9 (default: 6)",
    )
    parser.add_argument(
        "--style", choices=sorted(STYLES), default="market", help="imaging domain (default: market)"
    )
    parser.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--height",
        type=_int_at_least(32),
        default=256,
        help="image height in pixels (default: 256)",
    )
    parser.add_argument(
        "--width", type=_int_at_least(16), default=128, help="image width in pixels (default: 128)"
    )
    parser.add_argument(
        "--images-per-camera",
        type=_int_at_least(2),
        default=6,
        help="most images of one person per camera (default: 6)",
    )
    parser.add_argument(
        "--workers",
        type=_int_at_least(0),
        default=1,
        help="rendering processes, 0 = one per CPU (default: 1)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the splits of an existing non-empty OUT"
    )
    parser.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from trainer.synth import generate_dataset

    start = time.perf_counter()
    counts = generate_dataset(
        args.out,
        identities=args.identities,
        cameras=args.cameras,
        style=args.style,
        seed=args.seed,
        height=args.height,
        width=args.width,
        images_per_camera=args.images_per_camera,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    print(
        f"synth {args.style} seed={args.seed}: {counts['identities']} identities "
        f"({counts['train_identities']} train, {counts['test_identities']} test), "
        f"{counts['cameras']} cameras: bounding_box_train={counts['train']} "
        f"query={counts['query']} bounding_box_test={counts['gallery']} "
        f"({counts['images']} images, {time.perf_counter() - start:.1f}s) -> {args.out}"
    )
    return 0


# --------------------------------------------------------------------------------------
# reid train


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    import dataclasses

    from trainer.config import RECIPES, TrainConfig

    parser = subparsers.add_parser(
        "train",
        help="train an encoder by SpCL (adaptation, unsupervised or source-only)",
        description=(
            "Train a re-ID encoder by SpCL. --source and --target: domain adaptation; "
            "--target alone: unsupervised; --source alone: supervised direct-transfer "
            "baseline. Target labels are never read for training. Writes RUN/model.pt, "
            "RUN/metrics.jsonl and RUN/checkpoint.pt."
        ),
    )
    parser.add_argument("--target", type=Path, help="unlabeled target collection (train split)")
    parser.add_argument("--source", type=Path, help="labeled source collection (train split)")
    parser.add_argument(
        "--eval",
        type=Path,
        help="labeled query/gallery split evaluated for information "
        "(default: the target's, when it has one)",
    )
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument(
        "--resume", action="store_true", help="continue from RUN/checkpoint.pt if it exists"
    )
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = "the recipe's" if f.default is None else f.default
        if f.name == "recipe":
            parser.add_argument(
                flag,
                choices=sorted(RECIPES),
                default=f.default,
                help=f"defaults of the options marked 'the recipe's' (default: {f.default}): "
                + "; ".join(f"{name}: {_recipe_text(values)}" for name, values in RECIPES.items()),
            )
        elif "bool" in str(f.type):
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=f.default,
                help=f"{_FLAG_HELP.get(f.name, '')}(default: {default})",
            )
        else:
            kind = {"int": int, "float": float}.get(str(f.type).removesuffix(" | None"), str)
            if f.name == "eps":
                kind = _eps
            parser.add_argument(
                flag,
                type=kind,
                default=f.default,
                help=f"{_FLAG_HELP.get(f.name, '')}(default: {default})",
            )
    parser.set_defaults(func=_run_train)


_FLAG_HELP = {
    "eps": "DBSCAN radius, or 'auto' to choose it from the target data at the first epoch ",
    "pooling": "avg or gem ",
    "camera_contrast": "inter-camera proxy loss on the target (needs camera ids) ",
    "camera_centring": "remove each camera's mean feature before clustering ",
    "refresh_every": "re-embed the target memory rows every N epochs, 0: never ",
    "image_anchors": "target batches: every image an anchor once per pass (not every label) ",
    "flip": "flip-averaged embeddings at evaluation, embedding and search ",
    "amp": "mixed precision on CUDA ",
}


def _recipe_text(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _eps(text: str) -> float | str:
    """--eps: a number or 'auto'."""
    from trainer.config import AUTO

    if text == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or {AUTO!r}, got {text!r}") from None


def _training_sets(args: argparse.Namespace):
    """Source, target and evaluation data named on the command line."""
    from trainer.data import read_dataset, strip_labels
    from trainer.engine import DomainData, EvalData

    source = target = evaluation = None
    if args.source is not None:
        ds = read_dataset(args.source)
        items = [i for i in ds.split("train") if i.pid is not None]
        if not items:
            raise ValueError(f"{args.source}: no labeled training images for a source")
        source = DomainData(ds.root, items)
    target_ds = None
    if args.target is not None:
        target_ds = read_dataset(args.target)
        items = strip_labels(target_ds.split("train"))
        if not items:
            raise ValueError(f"{args.target}: no training images")
        target = DomainData(target_ds.root, items)
    eval_ds = read_dataset(args.eval) if args.eval is not None else target_ds
    if eval_ds is not None:
        query, gallery = eval_ds.split("query"), eval_ds.split("gallery")
        labeled = all(i.pid is not None for i in [*query, *gallery])
        if query and gallery and labeled:
            evaluation = EvalData(eval_ds.root, query, gallery)
        elif args.eval is not None:
            raise ValueError(f"{args.eval}: needs labeled query and gallery splits")
    return source, target, evaluation


def _run_train(args: argparse.Namespace) -> int:
    import dataclasses
    import signal

    from trainer.checkpoint import CHECKPOINT_NAME
    from trainer.config import TrainConfig
    from trainer.engine import SpCLTrainer
    from trainer.progress import ProgressReporter

    if args.target is None and args.source is None:
        raise ValueError("give --target, --source or both")
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    if (args.out / CHECKPOINT_NAME).exists() and not args.resume:
        raise ValueError(f"{args.out} holds a checkpoint: pass --resume or choose another --out")
    source, target, evaluation = _training_sets(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stop = {"asked": False}

    def ask_stop(signum: int, frame: object) -> None:
        stop["asked"] = True
        sys.stderr.write("\nstopping after this iteration (checkpoint kept; --resume goes on)\n")

    previous = signal.signal(signal.SIGINT, ask_stop)
    reporter = ProgressReporter(args.out / "metrics.jsonl")
    try:
        result = SpCLTrainer(
            config,
            args.out,
            target=target,
            source=source,
            evaluation=evaluation,
            callback=reporter,
            should_stop=lambda: stop["asked"],
        ).run(resume=args.resume)
    finally:
        reporter.close()
        signal.signal(signal.SIGINT, previous)
    return 0 if result.status == "succeeded" else 130


# --------------------------------------------------------------------------------------
# reid embed / reid evaluate


def _image_files(root: Path) -> list[str]:
    """Image files under `root` (no symlinks, no hidden entries), relative POSIX paths, sorted."""
    import os

    from trainer.data import IMAGE_EXTENSIONS

    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(folder, name)
            if (
                not name.startswith(".")
                and path.suffix.lower() in IMAGE_EXTENSIONS
                and not path.is_symlink()
            ):
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model file (RUN/model.pt)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    parser.add_argument("--batch-size", type=_int_at_least(1), default=128)
    parser.add_argument("--workers", type=_int_at_least(0), default=2)
    parser.add_argument(
        "--domain",
        choices=("target", "source"),
        default="target",
        help="BN branch of a domain-adapted model: source for images of the source domain "
        "(default: target)",
    )


def _load(args: argparse.Namespace):
    from trainer.embedder import Embedder
    from trainer.engine import resolve_device

    engine = getattr(args, "engine", "torch")  # reid evaluate measures the PyTorch model
    return Embedder.load(args.model, resolve_device(args.device), args.domain, engine)


def _register_embed(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="embed every image under a folder",
        description="Write OUT.npz with `paths` (relative to DIR, sorted) and `features` "
        "(float32, L2-normalised, N x d). Unreadable images are reported and left out.",
    )
    _add_model_options(parser)
    parser.add_argument("--images", type=Path, required=True, help="folder of images (DIR)")
    parser.add_argument("--out", type=Path, required=True, help="output .npz file")
    parser.add_argument(
        "--engine",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="torch, onnx (ONNX Runtime, CPU) or auto: the faster here (default)",
    )
    parser.set_defaults(func=_run_embed)


def _run_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from trainer.data import ImageError, probe_image

    if not args.images.is_dir():
        raise ValueError(f"{args.images} is not a directory")
    embedder = _load(args)
    paths = []
    for rel in _image_files(args.images):
        try:
            probe_image(args.images / rel)
            paths.append(rel)
        except ImageError as exc:
            sys.stderr.write(f"skipped {rel}: {exc}\n")
    if not paths:
        raise ValueError(f"{args.images}: no readable images")
    features = embedder.features(
        args.images, paths, batch_size=args.batch_size, workers=args.workers
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as f:  # exact name: np.savez would append .npz
        np.savez(f, paths=np.array(paths), features=features.numpy().astype(np.float32))
    print(f"{len(paths)} images, {features.shape[1]}-d features -> {args.out}")
    return 0


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="mAP and CMC of a model on a query/gallery split",
        description='Print one JSON line {"mAP", "rank1", "rank5", "rank10"} (fractions) for '
        "DIR's labeled query and gallery splits.",
    )
    _add_model_options(parser)
    parser.add_argument("--data", type=Path, required=True, help="dataset with query/gallery")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from trainer.data import read_dataset
    from trainer.features import evaluate_retrieval

    ds = read_dataset(args.data)
    query, gallery = ds.split("query"), ds.split("gallery")
    if not query or not gallery:
        raise ValueError(f"{args.data}: needs both a query and a gallery split")
    embedder = _load(args)
    metrics = evaluate_retrieval(
        embedder.encoder,
        ds.root,
        query,
        gallery,
        embedder.transform,
        embedder.device,
        workers=args.workers,
        flip=embedder.flip,
    )
    print(json.dumps(metrics))
    return 0


# --------------------------------------------------------------------------------------
# reid export


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model file to ONNX",
        description="Write the model's embedding as an ONNX graph: input `images` (float32 "
        "N x 3 x H x W, dynamic N, normalised with the file's mean/std), output `embeddings` "
        "(N x d, L2-normalised), flip-averaging included when the model uses it; the metadata "
        "holds height, width, mean, std, feature_dim, arch and the model file's SHA-256. Then "
        "runs both engines on the same images and prints how far apart they are.",
    )
    parser.add_argument("--model", type=Path, required=True, help="model file (RUN/model.pt)")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="(default: onnx)")
    parser.add_argument("--out", type=Path, required=True, help="output file (MODEL.onnx)")
    parser.add_argument(
        "--opset", type=int, default=None, help="ONNX opset, 11 or more (default 17)"
    )
    parser.add_argument(
        "--fp16", action="store_true", help="half-precision weights and compute (I/O float32)"
    )
    parser.add_argument(
        "--domain", choices=("target", "source"), default="target", help="BN branch to export"
    )
    parser.add_argument(
        "--check-images",
        type=Path,
        default=None,
        help="folder of images for the parity check (default: 8 random inputs)",
    )
    parser.set_defaults(func=_run_export)


def _parity_batch(embedder, folder: Path | None, limit: int = 32):
    """Up to ``limit`` images of ``folder`` through the model's transform, or random inputs."""
    import torch

    from trainer.features import ImageDataset

    if folder is None:
        h, w = embedder.meta["height"], embedder.meta["width"]
        return torch.randn(8, 3, h, w, generator=torch.Generator().manual_seed(0)), "random inputs"
    if not folder.is_dir():
        raise ValueError(f"--check-images {folder} is not a directory")
    dataset = ImageDataset(folder, _image_files(folder)[:limit], embedder.transform)
    if not len(dataset):
        raise ValueError(f"--check-images {folder}: no images")
    return torch.stack([dataset[i][0] for i in range(len(dataset))]), f"images of {folder}"


def _run_export(args: argparse.Namespace) -> int:
    from trainer.embedder import Embedder
    from trainer.models.onnx_export import DEFAULT_OPSET, export_onnx
    from trainer.onnx_embedder import OnnxEmbedder, parity

    opset = DEFAULT_OPSET if args.opset is None else args.opset
    exported = export_onnx(args.model, args.out, opset=opset, fp16=args.fp16, domain=args.domain)
    reference = Embedder.load(args.model, "cpu", domain=args.domain)
    batch, what = _parity_batch(reference, args.check_images)
    check = parity(reference.embed(batch), OnnxEmbedder.load(exported.path).embed(batch))
    print(
        f"wrote {exported.path} ({exported.size_bytes / 2**20:.1f} MiB, opset {exported.opset}, "
        f"{'fp16' if exported.fp16 else 'fp32'}, {exported.metadata['feature_dim']}-d); "
        f"vs PyTorch on {check.images} {what}: max |diff| {check.max_abs:.2e}, "
        f"min cosine {check.min_cosine:.6f}"
    )
    return 0


# --------------------------------------------------------------------------------------

_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _register_synth,
    _register_train,
    _register_embed,
    _register_evaluate,
    _register_export,
)


def build_parser(
    extra: Sequence[Callable[[argparse._SubParsersAction], None]] = (),
) -> argparse.ArgumentParser:
    """The full ``reid`` parser, with every registered subcommand plus `extra` ones (the
    service adds its own this way: the trainer never imports the service)."""
    parser = argparse.ArgumentParser(
        prog="reid", description="Re-identification with SpCL domain adaptation."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in (*_SUBCOMMANDS, *extra):
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reid`` script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as exc:
        # Same exit status and stream as argparse's own errors, without a traceback.
        parser.exit(2, f"reid {args.command}: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
