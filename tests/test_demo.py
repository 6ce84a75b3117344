"""``reid demo``: the whole path end to end (``--quick``), its failure modes, and the report.

The end-to-end run goes through ``reid.cli.main`` exactly as the console script does, with
hostile ``REID_*`` settings in the environment (a PostgreSQL URL and a broker that do not
exist, API keys): the demo must ignore the first two and use the key.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from demo import DemoError
from demo.plan import QUICK_PLAN, DemoOptions, make_plan
from demo.report import (
    Hit,
    QueryResult,
    ReportData,
    chart_points,
    render_report,
)
from demo.run import MARKER, prepare_out
from demo.watch import Console, watch_job
from reid.cli import main

# --------------------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``reid demo --quick`` for the module (about 20 s on 2 CPU cores)."""
    work = tmp_path_factory.mktemp("demo")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("REID_") and not name.startswith("REID_TEST_"):
                mp.delenv(name)
        mp.chdir(work)
        mp.setenv("REID_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nowhere")
        mp.setenv("REID_BROKER_URL", "redis://127.0.0.1:1/0")
        mp.setenv("REID_API_KEYS", "demo-secret")
        start = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["demo", "--quick", "--out", "tmp", "--port", "0"])
        seconds = time.perf_counter() - start
    return {
        "code": code,
        "out": out.getvalue(),
        "err": err.getvalue(),
        "dir": work / "tmp",
        "seconds": seconds,
    }


def test_quick_demo_succeeds(quick_run: dict[str, Any]) -> None:
    assert quick_run["code"] == 0, quick_run["err"]
    assert quick_run["seconds"] < 120
    printed = quick_run["out"]
    assert re.search(r"target mAP before adaptation: \d+\.\d%", printed)
    assert re.search(r"target mAP after adaptation: +\d+\.\d%", printed)
    assert re.search(r"target mAP: \d+\.\d% before adaptation -> \d+\.\d% after", printed)
    assert "epoch 2/2" in printed and "pseudo-labels" in printed  # progress was shown
    assert "ignoring REID_DATABASE_URL, REID_BROKER_URL" in printed
    assert f"report: {quick_run['dir'] / 'report.html'}" in printed


def test_quick_demo_report(quick_run: dict[str, Any]) -> None:
    page = (quick_run["dir"] / "report.html").read_text(encoding="utf-8")
    points = _chart_metrics(page)  # the UI's chart module draws them (tests/test_ui_browser.py)
    assert [p["epoch"] for p in points] == [-1, 0, 1]  # before adaptation, then 2 epochs
    assert all(p["loss"] > 0 for p in points[1:]) and points[0]["mAP"] is not None
    queries = QUICK_PLAN.queries
    assert page.count('<figure class="q"') == queries
    # every query: 8 results after adaptation and 8 before, each marked right or wrong
    assert page.count('<figure class="ok"') + page.count('<figure class="bad"') == 2 * 8 * queries
    assert page.count("data:image/jpeg;base64,") >= queries + 8
    summary = json.loads((quick_run["dir"] / "summary.json").read_text())
    assert summary["job"]["status"] == "succeeded"
    assert 0 <= summary["map_before"] <= 1 and 0 <= summary["map_after"] <= 1
    assert len(summary["job"]["metrics"]) == QUICK_PLAN.epochs
    assert all("mAP" in e and "loss" in e and "clusters" in e for e in summary["job"]["metrics"])
    assert (quick_run["dir"] / MARKER).exists()
    assert (quick_run["dir"] / "service" / "reid.db").exists()  # its own SQLite, not $REID_…


# --------------------------------------------------------------------------------------
# failures: one line, non-zero, nothing left running


@pytest.fixture
def no_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the starting model's evaluation (seconds) in the failure tests."""
    from demo import run as demo_run

    monkeypatch.setattr(demo_run, "evaluate_start", lambda start: {"mAP": 0.1, "rank1": 0.2})


def test_keep_running_serves_the_loaded_data_until_ctrl_c(tmp_path: Path) -> None:
    """``reid demo --quick --keep-running`` as a user runs it: after the report the service
    answers on the printed URL with the demo's data (a search included); Ctrl-C stops it."""
    import signal
    import subprocess
    import sys
    import urllib.request

    env = {k: v for k, v in os.environ.items() if not k.startswith("REID_")}
    command = [sys.executable, "-m", "reid.cli", "demo", "--quick", "--keep-running",
               "--port", "0", "--out", str(tmp_path / "demo")]  # fmt: skip
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=Path(__file__).parent.parent,
        # a test run started in the background ignores SIGINT, and children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(lines)
        url = re.search(r"keeps running at (http://\S+)", text)
        assert url, text
        search = re.search(r"search: +curl (.*)", text)
        assert search and "/search" in search.group(1), text
        with urllib.request.urlopen(f"{url.group(1)}/datasets", timeout=10) as response:
            assert json.load(response)["total"] == 2
        with urllib.request.urlopen(f"{url.group(1)}/indexes", timeout=10) as response:
            assert json.load(response)["items"][0]["status"] == "ready"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0  # a clean stop after a finished demo
    finally:
        if proc.poll() is None:
            proc.kill()


def test_failed_job_is_one_line_and_exit_1(
    isolated_env: Path,
    no_baseline: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trainer.engine import SpCLTrainer

    def boom(self: Any, resume: bool = False) -> None:
        raise RuntimeError("boom in the trainer")

    monkeypatch.setattr(SpCLTrainer, "run", boom)  # the service runs in this process
    code = main(["demo", "--quick", "--out", "out", "--port", "0"])
    err = capsys.readouterr().err
    assert code == 1
    [line] = [x for x in err.splitlines() if x.startswith("reid demo: error:")]
    assert "job 1 failed: RuntimeError: boom in the trainer" in line


def test_rejected_request_is_one_line_and_exit_1(
    isolated_env: Path,
    no_baseline: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from demo import plan as demo_plan

    original = demo_plan.Plan.job_config

    def broken(self: Any, *args: Any) -> dict[str, Any]:
        return {**original(self, *args), "bogus_option": 1}

    monkeypatch.setattr(demo_plan.Plan, "job_config", broken)
    code = main(["demo", "--quick", "--out", "out", "--port", "0"])
    err = capsys.readouterr().err
    assert code == 1
    [line] = [x for x in err.splitlines() if x.startswith("reid demo: error:")]
    assert "POST /jobs -> 422" in line and "bogus_option" in line


def test_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not made by reid demo"):
        prepare_out(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(DemoError, match="not a folder"):
        prepare_out(tmp_path / "file")


def test_rerun_clears_only_its_own_files_and_locks(tmp_path: Path) -> None:
    out, lock, cleared = prepare_out(tmp_path / "demo")
    assert not cleared and (out / MARKER).exists()
    (out / "service").mkdir()
    (out / "report.html").write_text("old")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DemoError, match="another reid demo"):
        prepare_out(out)
    lock.close()
    out2, lock2, cleared2 = prepare_out(out)
    lock2.close()
    assert out2 == out and cleared2
    assert not (out / "service").exists() and not (out / "report.html").exists()
    assert (out / "notes.txt").read_text() == "mine"


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--epochs", "0"])
    assert exc.value.code == 2 and "--epochs" in capsys.readouterr().err


def test_plan_overrides() -> None:
    plan = make_plan(DemoOptions(quick=True, epochs=3, identities=10))
    assert (plan.epochs, plan.identities, plan.iters) == (3, 10, QUICK_PLAN.iters)
    config = plan.job_config("imagenet", 1, "cpu", 0)
    assert config["eval_step"] == 1 and config["epochs"] == 3 and config["workers"] == 0


# --------------------------------------------------------------------------------------
# progress lines


class _FakeClient:
    """Answers GET /jobs/1 with the given job states in turn."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states = states

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        assert path == "/jobs/1"
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


def _job(status: str, phase: str | None, epoch: int, iteration: int, metrics: list) -> dict:
    return {
        "id": 1,
        "status": status,
        "phase": phase,
        "progress": {
            "epoch": epoch,
            "epochs": 2,
            "iteration": iteration,
            "iterations": 4,
            "fraction": min(1.0, (epoch * 4 + iteration) / 8),
        },
        "eta_seconds": 30.0,
        "metrics": metrics,
        "error": None,
    }


def test_watch_job_prints_each_new_fact_once() -> None:
    e0 = {"epoch": 0, "clusters": 5, "unclustered": 1}
    e0_done = {**e0, "loss": 3.5, "loss_source": 1.5, "loss_target": 2.0, "seconds": 4}
    states = [
        _job("queued", None, 0, 0, []),
        _job("running", "initialising", 0, 0, []),
        _job("running", "clustering", 0, 0, []),
        _job("running", "training", 0, 2, [e0]),
        _job("running", "evaluating", 1, 0, [e0_done]),
        _job("running", "evaluating", 1, 0, [{**e0_done, "mAP": 0.25, "rank1": 0.5}]),
        _job("succeeded", None, 2, 0, [{**e0_done, "mAP": 0.25, "rank1": 0.5}]),
    ]
    stream = io.StringIO()
    final = watch_job(_FakeClient(states), 1, Console(stream), poll_s=0)  # type: ignore[arg-type]
    text = stream.getvalue()
    assert final["status"] == "succeeded"
    assert "job 1: queued" in text
    assert "initialising" in text and "epoch 1/2: clustering" in text
    assert text.count("pseudo-labels: 5 clusters, 1 un-clustered") == 1
    assert "epoch 1/2 trained: loss 3.500 (source 1.500 + target 2.000)" in text
    assert "epoch 1/2: evaluating" in text  # the epoch evaluated is the one just finished
    assert text.count("target mAP 25.0%, rank-1 50.0%") == 1


# --------------------------------------------------------------------------------------
# report rendering


def _chart_metrics(page: str) -> list[dict[str, Any]]:
    found = re.search(r'<script type="application/json" id="chart-metrics">(.*?)</script>', page)
    assert found is not None
    return json.loads(found.group(1))


def test_chart_points_put_the_start_at_epoch_zero_and_drop_non_finite() -> None:
    epochs = [{"epoch": 0, "loss": float("nan"), "clusters": 3, "mAP": 0.2}]
    assert chart_points(epochs) == [{"epoch": 0, "loss": None, "clusters": 3, "mAP": 0.2}]
    start = chart_points(epochs, map_before=0.1, rank1_before=None)[0]
    assert start == {"epoch": -1, "mAP": 0.1, "rank1": None}


def test_render_report_marks_results_and_escapes() -> None:
    jpeg = "data:image/jpeg;base64,AAAA"
    hits = [
        Hit(1, jpeg, 0.91, pid=3, camid=1, correct=True),
        Hit(2, jpeg, 0.52, pid=4, camid=2, correct=False),
    ]
    data = ReportData(
        title="demo <b>",
        map_before=0.12,
        map_after=0.25,
        rank1_before=None,
        rank1_after=0.3,
        epochs=[{"epoch": 0, "loss": 1.0, "note": "</script><script>alert(1)</script>"}],
        queries=[QueryResult(jpeg, 3, 0, hits, image_id=7, hits_before=hits[::-1])],
        facts=[("what", "<i>x</i>")],
        links=[("docs", "http://127.0.0.1:8000/docs?a=1&b=2")],
    )
    page = render_report(data)
    assert page.startswith("<!DOCTYPE html>")
    assert "demo &lt;b&gt;" in page and "&lt;i&gt;x&lt;/i&gt;" in page
    assert "a=1&amp;b=2" in page
    assert "12.0%" in page and "25.0%" in page and "n/a" in page
    assert page.count('<figure class="ok"') == 2 and page.count('<figure class="bad"') == 2
    assert "top-1 correct for 1 of 1 queries after adaptation (0 before)" in page
    assert "alert(1)" in page and "</script><script>alert" not in page  # JSON cannot close it
    assert _chart_metrics(page)[1]["note"] == "</script><script>alert(1)</script>"
    assert page.count("<script") == 3 and "http" not in page.split("<body>")[0]  # nothing fetched


def test_missing_weights_fall_back_to_no_pretraining(monkeypatch: pytest.MonkeyPatch) -> None:
    from demo.data import resolve_pretrained
    from trainer.models import weights

    def unavailable(arch: str) -> Path:
        raise weights.WeightsUnavailable(f"ImageNet weights for {arch} are not available offline.")

    monkeypatch.setattr(weights, "imagenet_weights_path", unavailable)
    pretrained, warning = resolve_pretrained("mobilenet_v2")
    assert pretrained == "none"
    assert warning is not None and warning.startswith("warning: ImageNet weights")
    assert "random weights" in warning
