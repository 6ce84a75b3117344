"""The `reid` command line contract: train, embed, evaluate (synth has its own tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.cli import main
from trainer.models import load_model
from trainer.synth import generate_dataset

TINY = [
    "--arch", "mobilenet_v2", "--pretrained", "none", "--epochs", "1", "--iters", "2",
    "--batch-size", "8", "--num-instances", "4", "--height", "64", "--width", "32",
    "--k1", "8", "--k2", "3", "--workers", "0", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    common = {"identities": 10, "cameras": 2, "height": 64, "width": 32, "images_per_camera": 3}
    generate_dataset(root / "src", style="market", seed=5, **common)
    generate_dataset(root / "tgt", style="indoor", seed=6, **common)
    run = root / "run"
    code = main(["train", "--source", str(root / "src"), "--target", str(root / "tgt"),
                 "--out", str(run), *TINY])  # fmt: skip
    assert code == 0
    return {"root": root, "run": run, "target": root / "tgt"}


def test_train_writes_model_metrics_checkpoint(trained) -> None:
    run = trained["run"]
    assert (run / "model.pt").is_file() and (run / "checkpoint.pt").is_file()
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "phase" and "run_start" in names and names[-1] == "run_end"
    assert "evaluation" in names  # the target's query/gallery by default
    assert events[-1]["status"] == "succeeded"


def test_train_refuses_to_overwrite_a_run(trained, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--target", str(trained["target"]), "--out", str(trained["run"]), *TINY])
    assert exc.value.code == 2
    assert "--resume" in capsys.readouterr().err


def test_train_errors_are_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path / "r"), *TINY])
    assert exc.value.code == 2 and "--target" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--target", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit):
        main(["train", "--target", str(tmp_path), "--out", str(tmp_path / "r"), "--eps", "2"])
    assert "eps" in capsys.readouterr().err


def test_embed(trained, tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    (images / "sub").mkdir(parents=True)
    for name in ("b.jpg", "a.png", "sub/c.jpg"):
        Image.new("RGB", (20, 40), (120, 30, 200)).save(images / name)
    (images / "notes.txt").write_text("not an image")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "emb.npz"
    assert main(["embed", "--model", str(trained["run"] / "model.pt"), "--images", str(images),
                 "--out", str(out), "--device", "cpu", "--workers", "0"]) == 0  # fmt: skip
    data = np.load(out)
    assert list(data["paths"]) == ["a.png", "b.jpg", "sub/c.jpg"]
    feats = data["features"]
    assert feats.dtype == np.float32 and feats.shape == (3, 1280)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)


def test_evaluate_prints_one_json_line(trained, capsys) -> None:
    capsys.readouterr()
    assert main(["evaluate", "--model", str(trained["run"] / "model.pt"), "--data",
                 str(trained["target"]), "--device", "cpu", "--workers", "0"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert set(metrics) == {"mAP", "rank1", "rank5", "rank10"}
    assert all(0 <= v <= 1 for v in metrics.values())
    assert metrics["rank1"] <= metrics["rank5"] <= metrics["rank10"]


def test_embed_by_domain_branch(trained, tmp_path: Path) -> None:
    """An adapted model embeds source images through its source BN branch on request."""
    src_query = trained["root"] / "src" / "query"
    outs = {}
    for domain in ("target", "source"):
        outs[domain] = tmp_path / f"{domain}.npz"
        assert main(["embed", "--model", str(trained["run"] / "model.pt"), "--images",
                     str(src_query), "--out", str(outs[domain]), "--device", "cpu",
                     "--workers", "0", "--domain", domain]) == 0  # fmt: skip
    target, source = (np.load(outs[d])["features"] for d in ("target", "source"))
    assert target.shape == source.shape and not np.allclose(target, source, atol=1e-4)


def test_embed_source_branch_of_an_unadapted_model_is_one_line(trained, tmp_path, capsys):
    run = tmp_path / "usl"
    assert main(["train", "--target", str(trained["target"]), "--out", str(run), *TINY]) == 0
    with pytest.raises(SystemExit) as exc:
        main(["embed", "--model", str(run / "model.pt"), "--images", str(trained["target"]),
              "--out", str(tmp_path / "x.npz"), "--domain", "source"])  # fmt: skip
    assert exc.value.code == 2 and "no source branch" in capsys.readouterr().err


def test_recipe_and_eps_flags(trained, tmp_path: Path) -> None:
    run = tmp_path / "paper"
    assert main(["train", "--target", str(trained["target"]), "--out", str(run), *TINY,
                 "--recipe", "paper", "--eps", "auto", "--flip"]) == 0  # fmt: skip
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(e["event"] == "eps_chosen" for e in events)
    config = load_model(run / "model.pt")[1]["extra"]["config"]
    assert (config["recipe"], config["eps"], config["flip"], config["camera_contrast"]) == (
        "paper",
        "auto",
        True,
        False,
    )
