"""Tests for the synthetic Market-1501-style dataset generator and the ``reid synth`` CLI.

Datasets are tiny (a dozen identities, small images) so that the whole file runs in seconds.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.cli import main
from trainer.synth import FILENAME_RE, SPLITS, STYLES, generate_dataset, parse_filename

IDS, CAMS, HEIGHT, WIDTH, IPC = 12, 3, 96, 48, 4


def _files(root: Path) -> dict[str, list[Path]]:
    return {split: sorted((root / split).iterdir()) for split in SPLITS}


def _bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, int]]]:
    """One small dataset per style, all with the same seed."""
    out = {}
    for style in ("market", "night", "indoor"):
        root = tmp_path_factory.mktemp(style)
        counts = generate_dataset(
            root, IDS, CAMS, style, seed=3, height=HEIGHT, width=WIDTH, images_per_camera=IPC
        )
        out[style] = (root, counts)
    return out


def test_layout_and_file_names(datasets: dict[str, tuple[Path, dict[str, int]]]) -> None:
    root, counts = datasets["market"]
    files = _files(root)
    assert all(files[split] for split in SPLITS)
    frames = []
    for split, paths in files.items():
        for path in paths:
            match = FILENAME_RE.match(path.name)
            assert match is not None, path.name
            assert match.group(5) == "00"
            pid, cam, seq, frame = parse_filename(path.name)
            assert 1 <= pid <= IDS and 1 <= cam <= CAMS and seq == 1
            frames.append(frame)
        assert (
            len(paths)
            == counts[{"bounding_box_train": "train", "query": "query"}.get(split, "gallery")]
        )
    assert len(frames) == len(set(frames)) == counts["images"]
    assert min(parse_filename(p.name)[0] for p in files["bounding_box_train"]) == 1


def test_splits_and_cameras(datasets: dict[str, tuple[Path, dict[str, int]]]) -> None:
    root, _ = datasets["market"]
    files = _files(root)
    parsed = {s: [parse_filename(p.name) for p in paths] for s, paths in files.items()}
    train_ids = {p for p, *_ in parsed["bounding_box_train"]}
    query_ids = {p for p, *_ in parsed["query"]}
    gallery_ids = {p for p, *_ in parsed["bounding_box_test"]}
    assert train_ids == set(range(1, IDS // 2 + 1))
    assert query_ids == gallery_ids == set(range(IDS // 2 + 1, IDS + 1))

    per_id_cam: dict[tuple[int, int], int] = defaultdict(int)
    for pid, cam, _, _ in itertools.chain.from_iterable(parsed.values()):
        per_id_cam[pid, cam] += 1
    cams_of: dict[int, set[int]] = defaultdict(set)
    for pid, cam in per_id_cam:
        cams_of[pid].add(cam)
    assert all(len(c) >= 2 for c in cams_of.values())
    assert all(2 <= n <= IPC for n in per_id_cam.values())
    assert len({n for n in per_id_cam.values()}) > 1  # counts vary

    gallery = {(pid, cam) for pid, cam, _, _ in parsed["bounding_box_test"]}
    query = [(pid, cam) for pid, cam, _, _ in parsed["query"]]
    assert len(query) == len(set(query))  # one query per (identity, camera)
    for pid, cam in query:
        assert cam in cams_of[pid]
        assert any(g_pid == pid and g_cam != cam for g_pid, g_cam in gallery), (pid, cam)


def test_images_are_jpegs_of_requested_size(
    datasets: dict[str, tuple[Path, dict[str, int]]],
) -> None:
    root, _ = datasets["night"]
    for path in itertools.chain.from_iterable(_files(root).values()):
        with Image.open(path) as img:
            assert img.format == "JPEG"
            assert img.mode == "RGB"
            assert img.size == (WIDTH, HEIGHT)
            img.verify()


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    kwargs = {"identities": 12, "cameras": 3, "style": "market", "height": 64, "width": 32}
    generate_dataset(tmp_path / "a", seed=7, **kwargs)
    generate_dataset(tmp_path / "b", seed=7, workers=2, **kwargs)  # workers must not matter
    generate_dataset(tmp_path / "c", seed=8, **kwargs)
    a, b, c = (_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a != c
    # Not just renamed files: the pixels (people, scenes) differ too.
    images_a = [v for k, v in a.items() if k.endswith(".jpg")]
    images_c = [v for k, v in c.items() if k.endswith(".jpg")]
    assert all(x != y for x, y in zip(images_a[:20], images_c[:20], strict=False))


def _stats(root: Path) -> tuple[float, np.ndarray]:
    paths = list(itertools.chain.from_iterable(_files(root).values()))
    pixels = np.concatenate([np.asarray(Image.open(p)).reshape(-1, 3) for p in paths])
    hist = np.concatenate([np.histogram(pixels[:, c], 16, (0, 256))[0] for c in range(3)])
    return float(pixels.mean()), hist / hist.sum()


def test_styles_differ(datasets: dict[str, tuple[Path, dict[str, int]]]) -> None:
    stats = {style: _stats(root) for style, (root, _) in datasets.items()}
    assert stats["market"][0] > stats["indoor"][0] + 15 > stats["night"][0] + 30
    for s1, s2 in itertools.combinations(stats, 2):
        l1 = np.abs(stats[s1][1] - stats[s2][1]).sum()
        assert l1 > 0.5, (s1, s2, l1)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_identity_is_in_the_pixels(
    datasets: dict[str, tuple[Path, dict[str, int]]], style: str
) -> None:
    """Mean colour of the figure region: closer within an identity than across identities."""
    root, _ = datasets[style]
    paths = list(itertools.chain.from_iterable(_files(root).values()))
    pids = np.array([parse_filename(p.name)[0] for p in paths])
    h0, h1, w0, w1 = int(HEIGHT * 0.2), int(HEIGHT * 0.8), int(WIDTH * 0.3), int(WIDTH * 0.7)
    vecs = np.stack(
        [np.asarray(Image.open(p), np.float32)[h0:h1, w0:w1].mean((0, 1)) for p in paths]
    )
    dist = np.linalg.norm(vecs[:, None] - vecs[None], axis=-1)
    same = pids[:, None] == pids[None]
    off_diag = ~np.eye(len(paths), dtype=bool)
    within, across = dist[same & off_diag].mean(), dist[~same].mean()
    assert within < 0.75 * across, (within, across)


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    args = ["synth", str(out), "--identities", "4", "--cameras", "2", "--style", "indoor"]
    assert main([*args, "--seed", "0", "--images-per-camera", "3"]) == 0
    summary = capsys.readouterr().out.strip()
    assert len(summary.splitlines()) == 1
    counts = {s: len(list((out / s).iterdir())) for s in SPLITS}
    for split, n in counts.items():
        assert f"{split}={n}" in summary
    with Image.open(next((out / "query").iterdir())) as img:
        assert img.size == (128, 256)  # default size

    # Non-empty OUT is refused unless --overwrite, which replaces the splits.
    with pytest.raises(SystemExit) as exc:
        main([*args, "--seed", "1"])
    assert exc.value.code != 0
    assert "not empty" in capsys.readouterr().err
    stale = out / "query" / "9999_c1s1_999999_00.jpg"
    stale.write_bytes(b"")
    assert main([*args, "--seed", "1", "--height", "64", "--width", "32", "--overwrite"]) == 0
    assert not stale.exists()
    with Image.open(next((out / "query").iterdir())) as img:
        assert img.size == (32, 64)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--identities", "1"], "--identities"),
        (["--cameras", "1"], "--cameras"),
        (["--style", "sunset"], "market"),
        (["--images-per-camera", "1"], "--images-per-camera"),
        (["--cameras", "12"], "cameras"),
    ],
)
def test_cli_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(tmp_path / "x"), "--identities", "4", "--cameras", "2", *extra])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert message in err
    if "sunset" in extra:
        assert all(name in err for name in STYLES)


def test_library_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known styles: market, night, indoor"):
        generate_dataset(tmp_path / "x", 4, 2, "sunset", 0)
    with pytest.raises(ValueError, match="identities"):
        generate_dataset(tmp_path / "x", 1, 2, "market", 0)
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path / "y", 4, 2, "market", 0)
