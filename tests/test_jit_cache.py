"""The clustering kernels' compiled cache lives outside the package and is reused by the next
process (a fresh worker loads, it does not compile)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import jit_cache


def _fill(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "trainer.jit_cache"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return done.stdout


def test_a_fresh_process_loads_what_the_first_compiled(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != jit_cache.ENV}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    folder = tmp_path / "reid-service" / "numba"
    assert str(folder) in _fill(env)
    files = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    assert any(p.suffix == ".nbc" for p in files) and any(p.suffix == ".nbi" for p in files)
    _fill(env)  # the second process finds every kernel: nothing is compiled or rewritten
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == files


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(jit_cache.ENV, str(tmp_path / "mine"))
    assert jit_cache.configure() == tmp_path / "mine" and (tmp_path / "mine").is_dir()
    monkeypatch.delenv(jit_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert jit_cache.cache_dir() == tmp_path / "reid-service" / "numba"


def test_an_unwritable_cache_is_left_to_numba(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(jit_cache.ENV, str(blocker / "numba"))
    assert jit_cache.configure() is None
