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

_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_register_synth,)


def build_parser() -> argparse.ArgumentParser:
    """The full ``reid`` parser, with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="reid", description="Re-identification with SpCL domain adaptation."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _SUBCOMMANDS:
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
