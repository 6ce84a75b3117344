"""The SpCL engine end to end on tiny synthetic collections (CPU, seconds)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from trainer.auto_eps import GRID
from trainer.checkpoint import CHECKPOINT_NAME, load_checkpoint
from trainer.config import TrainConfig
from trainer.data import read_dataset, strip_labels
from trainer.engine import DomainData, EvalData, SpCLTrainer
from trainer.events import Event
from trainer.models import load_model
from trainer.synth import generate_dataset


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("collections")
    common = {"identities": 12, "cameras": 3, "height": 64, "width": 32, "images_per_camera": 3}
    generate_dataset(root / "src", style="market", seed=1, **common)
    generate_dataset(root / "tgt", style="night", seed=2, **common)
    return {"source": root / "src", "target": root / "tgt"}


TINY = {
    "arch": "mobilenet_v2",
    "pretrained": "none",
    "epochs": 2,
    "iters": 3,
    "batch_size": 8,
    "num_instances": 4,
    "height": 64,
    "width": 32,
    "k1": 8,
    "k2": 3,
    "eval_step": 1,
    "workers": 0,
    "device": "cpu",
    "seed": 3,
}


def tiny_config(**overrides: object) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


def data(
    collections: dict[str, Path], source: bool = True, target: bool = True, evaluate: bool = False
) -> dict:
    out: dict = {}
    if source:
        ds = read_dataset(collections["source"])
        out["source"] = DomainData(ds.root, ds.split("train"))
    if target:
        ds = read_dataset(collections["target"])
        out["target"] = DomainData(ds.root, strip_labels(ds.split("train")))
        if evaluate:
            out["evaluation"] = EvalData(ds.root, ds.split("query"), ds.split("gallery"))
    return out


def run(out: Path, collections, config=None, stop_at=None, resume=False, **which):
    events: list[Event] = []
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return stop_at is not None and calls["n"] > stop_at

    trainer = SpCLTrainer(
        config or tiny_config(),
        out,
        callback=events.append,
        should_stop=should_stop,
        **data(collections, **which),
    )
    return trainer, trainer.run(resume=resume), events


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, collections):
    """One uninterrupted UDA run, with evaluation, shared by the tests below."""
    return run(tmp_path_factory.mktemp("full"), collections, evaluate=True)


def test_uda_runs_and_exports(full_run, collections) -> None:
    trainer, result, events = full_run
    assert result.status == "succeeded" and result.epochs_done == 2
    assert trainer.mode == "uda"
    # Memory: one row per source class, then one per target image.
    n_classes = len({i.pid for i in read_dataset(collections["source"]).split("train")})
    n_target = len(read_dataset(collections["target"]).split("train"))
    assert trainer.memory.features.shape[0] == n_classes + n_target
    assert torch.equal(trainer.memory.labels[:n_classes], torch.arange(n_classes))
    k = kinds(events)
    assert k.count("epoch_start") == 2 and k.count("evaluation") == 2
    assert k.count("iteration") == 6 and k[-1] == "run_end"
    it = next(e for e in events if e.kind == "iteration")
    assert it.loss_source is not None and it.loss_target is not None
    assert it.loss == pytest.approx(it.loss_source + it.loss_target)
    model, meta = load_model(result.model_path)
    assert meta["arch"] == "mobilenet_v2" and meta["height"] == 64
    assert meta["extra"]["mode"] == "uda"
    assert not any(m.__class__.__name__.startswith("DSBN") for m in model.modules())


def test_usl_and_source_only(tmp_path: Path, collections) -> None:
    trainer, result, events = run(tmp_path / "usl", collections, source=False)
    assert trainer.mode == "usl" and result.status == "succeeded"
    assert trainer.num_classes == 0
    it = next(e for e in events if e.kind == "iteration")
    assert it.loss_source is None and it.loss_target == pytest.approx(it.loss)

    trainer, result, events = run(tmp_path / "src", collections, target=False)
    assert trainer.mode == "source_only" and result.status == "succeeded"
    assert "epoch_start" not in kinds(events)  # nothing to cluster
    it = next(e for e in events if e.kind == "iteration")
    assert it.loss_target is None


def final_state(trainer: SpCLTrainer) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    state.update({f"memory.{k}": v for k, v in trainer.memory.state_dict().items()})
    return state


@pytest.mark.parametrize("stop_at", [4, 3])  # mid-epoch, and exactly at an epoch boundary
def test_cancel_then_resume_equals_uninterrupted(
    tmp_path: Path, collections, full_run, stop_at
) -> None:
    full = full_run[0]
    _, result, events = run(tmp_path / "part", collections, stop_at=stop_at)
    assert result.status == "cancelled" and result.model_path is None
    assert not (tmp_path / "part" / "model.pt").exists()
    saved = load_checkpoint(tmp_path / "part" / CHECKPOINT_NAME)
    assert (saved["epoch"], saved["iteration"]) == divmod(stop_at, 3)
    assert events[-1].kind == "run_end" and events[-1].status == "cancelled"

    resumed, result, events = run(tmp_path / "part", collections, resume=True)
    assert result.status == "succeeded"
    start = next(e for e in events if e.kind == "run_start")
    assert (start.start_epoch, start.start_iteration) == divmod(stop_at, 3)
    expected, got = final_state(full), final_state(resumed)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key


def test_resume_refuses_other_options(tmp_path: Path, collections) -> None:
    run(tmp_path, collections, stop_at=1)
    with pytest.raises(ValueError, match="lr"):
        run(tmp_path, collections, config=tiny_config(lr=1e-3), resume=True)
    # Workers and device may change.
    _, result, _ = run(tmp_path, collections, config=tiny_config(workers=1), resume=True)
    assert result.status == "succeeded"


def test_loader_workers_do_not_change_the_result(tmp_path: Path, collections) -> None:
    """Two epochs: persistent workers must also pick up the second epoch's pseudo-labels."""
    a, _, _ = run(tmp_path / "a", collections, source=False)
    b, _, _ = run(tmp_path / "b", collections, config=tiny_config(workers=2), source=False)
    for key, value in final_state(a).items():
        assert torch.equal(value, final_state(b)[key]), key


def test_rejects_bad_inputs(tmp_path: Path, collections) -> None:
    with pytest.raises(ValueError, match="target collection, a source"):
        SpCLTrainer(tiny_config(), tmp_path)
    ds = read_dataset(collections["source"])
    unlabeled = DomainData(ds.root, strip_labels(ds.split("train")))
    with pytest.raises(ValueError, match="identity label"):
        SpCLTrainer(tiny_config(), tmp_path, source=unlabeled)
    with pytest.raises(ValueError, match="batch_size"):
        tiny_config(batch_size=0)
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epochs": 1, "lr_rate": 0.1})


# --- recipes ---------------------------------------------------------------------------

# `paper` must stay exactly the method of e492021, the last commit before recipes existed:
# the same tiny run by that commit's trainer/, on this machine, must give the same losses and
# mAP bit for bit. (Pinned numbers would not do: another CPU's kernels round differently in
# the 7th digit, and the first re-clustering turns that into a different run.)
BEFORE_RECIPES = "e492021"
_OLD_RUN = """
import json, sys
from pathlib import Path
from trainer.config import TrainConfig
from trainer.data import read_dataset, strip_labels
from trainer.engine import DomainData, EvalData, SpCLTrainer
config, src, tgt, out = json.loads(sys.argv[1])
s, t = read_dataset(Path(src)), read_dataset(Path(tgt))
events = []
SpCLTrainer(TrainConfig(**config), Path(out), callback=events.append,
            source=DomainData(s.root, s.split("train")),
            target=DomainData(t.root, strip_labels(t.split("train"))),
            evaluation=EvalData(t.root, t.split("query"), t.split("gallery"))).run()
import trainer
print(json.dumps([trainer.__file__, [e.loss for e in events if e.kind == "iteration"],
                  [e.mAP for e in events if e.kind == "evaluation"]]))
"""


def _run_before_recipes(tmp_path: Path, collections) -> list[list[float]]:
    repo = Path(__file__).resolve().parents[1]
    old = tmp_path / "old"
    old.mkdir()
    try:
        tree = subprocess.run(
            ["git", "-C", str(repo), "archive", BEFORE_RECIPES, "trainer"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"needs the git history ({BEFORE_RECIPES}): {exc}")
    with tarfile.open(fileobj=io.BytesIO(tree)) as archive:
        archive.extractall(old, filter="data")
    args = json.dumps([TINY, str(collections["source"]), str(collections["target"]),
                       str(tmp_path / "old-run")])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(old), "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    done = subprocess.run(
        [sys.executable, "-c", _OLD_RUN, args], cwd=old, env=env, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    imported, losses, maps = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(imported).is_relative_to(old), f"the old run imported {imported}"
    return [losses, maps]


def test_paper_recipe_reproduces_the_run_before_recipes(tmp_path: Path, collections) -> None:
    want_losses, want_map = _run_before_recipes(tmp_path, collections)
    _, _, events = run(
        tmp_path / "new", collections, config=tiny_config(recipe="paper"), evaluate=True
    )
    assert len(want_losses) == 6
    assert [e.loss for e in events if e.kind == "iteration"] == want_losses
    assert [e.mAP for e in events if e.kind == "evaluation"] == want_map


def test_recommended_run_records_its_choices(full_run) -> None:
    trainer, result, events = full_run
    chosen = [e for e in events if e.kind == "eps_chosen"]
    assert len(chosen) == 1 and chosen[0].epoch == 0
    assert chosen[0].eps in GRID and set(chosen[0].score_by_eps) == {f"{e:g}" for e in GRID}
    assert [e.eps for e in events if e.kind == "epoch_start"] == [chosen[0].eps] * 2
    assert trainer.camera_loss is not None  # the target has three cameras
    _, meta = load_model(result.model_path)
    assert meta["flip"] is True and meta["pooling"] == "avg"
    assert meta["extra"]["config"]["recipe"] == "recommended"


def test_an_explicit_eps_overrides_auto(tmp_path: Path, collections) -> None:
    _, _, events = run(tmp_path, collections, config=tiny_config(eps=0.45), source=False)
    assert "eps_chosen" not in kinds(events)
    assert {e.eps for e in events if e.kind == "epoch_start"} == {0.45}


def test_camera_options_are_no_ops_without_camera_ids(tmp_path: Path, collections) -> None:
    ds = read_dataset(collections["target"])
    target = DomainData(ds.root, strip_labels(ds.split("train"), keep_camid=False))
    states = []
    for on in (True, False):
        config = tiny_config(eps=0.5, camera_contrast=on, camera_centring=on)
        trainer = SpCLTrainer(config, tmp_path / str(on), target=target)
        trainer.run()
        assert trainer.camera_loss is None
        states.append(final_state(trainer))
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


def test_camera_contrast_changes_training_when_cameras_exist(tmp_path: Path, collections) -> None:
    losses = []
    for on in (True, False):
        config = tiny_config(eps=0.5, camera_contrast=on, camera_centring=False)
        _, _, events = run(tmp_path / str(on), collections, config=config, source=False)
        losses.append([e.loss for e in events if e.kind == "iteration"])
    assert losses[0] != losses[1]


def test_refresh_re_embeds_the_target_rows(tmp_path: Path, collections) -> None:
    """refresh_every=2: at epoch 2 (only) the memory's target rows become a fresh pass."""
    refreshed: list[int] = []

    class Spy(SpCLTrainer):
        def _refresh(self, epoch: int) -> None:
            before = self.memory.features[self.num_classes :].clone()
            super()._refresh(epoch)
            after = self.memory.features[self.num_classes :]
            if not torch.equal(before, after):
                refreshed.append(epoch)
                assert torch.equal(after, self._features(self.target, "target"))

    config = tiny_config(eps=0.5, refresh_every=2, epochs=3)
    Spy(config, tmp_path, **data(collections, source=False)).run()
    assert refreshed == [2]


def test_resume_with_refresh_and_anchors_equals_uninterrupted(tmp_path: Path, collections) -> None:
    """The recommended recipe's refresh and image-anchored batches survive an interruption."""
    config = tiny_config(refresh_every=1, epochs=3)
    full, _, _ = run(tmp_path / "full", collections, config=config, source=False)
    _, result, _ = run(tmp_path / "part", collections, config=config, source=False, stop_at=4)
    assert result.status == "cancelled"
    resumed, result, _ = run(tmp_path / "part", collections, config=config, source=False,
                             resume=True)  # fmt: skip
    assert result.status == "succeeded"
    expected, got = final_state(full), final_state(resumed)
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key
    assert resumed.eps == full.eps


def test_channels_last_changes_only_rounding(tmp_path: Path, collections) -> None:
    """Same first loss up to float rounding (later ones drift apart, as any rounding does)."""
    first = []
    for on in (False, True):
        config = tiny_config(recipe="paper", channels_last=on, epochs=1, iters=1)
        trainer, _, events = run(tmp_path / str(on), collections, config=config)
        first.append(next(e.loss for e in events if e.kind == "iteration"))
        assert trainer.channels_last is on
    assert first[0] == pytest.approx(first[1], rel=1e-4)
