"""Benchmark POST /datasets end to end: a ~13,000-image archive through real HTTP.

Builds a Market-1501-style collection with ``trainer.synth.generate_dataset`` (256x128 JPEGs,
820 identities x 6 cameras = 12,973 images, ~110 MB), zips it, starts the service with uvicorn
on a loopback port in this process (SQLite in a temporary data directory unless
``--database-url`` is given), streams the archive to it with httpx, and prints the wall time,
images/s, the server's phase timings and the peak RSS. The target is <= 60 s on 2 cores.

    .venv/bin/python benchmarks/ingest.py                     # build (cached in --work), upload
    .venv/bin/python benchmarks/ingest.py --compare-pools     # also: threads vs processes
    .venv/bin/python benchmarks/ingest.py --database-url postgresql://postgres@127.0.0.1/bench
                                          # an empty database of its own: it is migrated

``--compare-pools`` times the hash+decode step alone (``app.datasets.ingest.probe_files``) serially,
with a thread pool and with a process pool over the same files, which is how the thread pool
was chosen.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import socket
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import psutil
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.db import upgrade_database
from app.core.settings import Settings
from app.datasets.ingest import _PROBE_BATCH, _probe_batch, chunks, cpu_count, probe_files
from app.main import create_app
from trainer.synth import generate_dataset


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler(threading.Thread):
    """Peak RSS of this process over an interval (ru_maxrss cannot be reset)."""

    def __init__(self, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.peak = 0
        self._stop_event = threading.Event()
        self._process = psutil.Process()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self.period)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak / 2**20


def build_archive(work: Path, identities: int, cameras: int, height: int, width: int,
                  store: bool) -> tuple[Path, Path]:  # fmt: skip
    """The synthetic tree and its zip, reused when already in ``work``."""
    tree = work / f"market-{identities}x{cameras}-{height}x{width}"
    archive = tree.with_suffix(".stored.zip" if store else ".zip")
    if not (tree / "synth.json").exists():
        t0 = time.perf_counter()
        counts = generate_dataset(
            tree, identities, cameras, "market", seed=0, height=height, width=width,
            overwrite=True, workers=0,
        )  # fmt: skip
        print(f"generated {counts['images']:,} images in {time.perf_counter() - t0:.1f}s")
    if not archive.exists():
        t0 = time.perf_counter()
        method = zipfile.ZIP_STORED if store else zipfile.ZIP_DEFLATED
        partial = archive.with_suffix(".part")
        with zipfile.ZipFile(partial, "w", method) as zf:
            for path in sorted(tree.rglob("*")):
                if path.is_file():
                    zf.write(path, f"Market-1501/{path.relative_to(tree).as_posix()}")
        partial.rename(archive)
        print(f"zipped in {time.perf_counter() - t0:.1f}s")
    return tree, archive


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(settings: Settings, port: int) -> tuple[threading.Thread, uvicorn.Server]:
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return thread, server


class PhaseLog(logging.Handler):
    """Keeps the ingest's own timing line (extract / read / probe / store)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def compare_pools(tree: Path) -> None:
    paths = sorted(str(p) for p in tree.rglob("*.jpg"))
    for p in paths:  # page cache warm for every variant
        Path(p).read_bytes()
    n = cpu_count()
    results = {}
    t0 = time.perf_counter()
    probe_files(paths, 40_000_000, workers=1)
    results["serial"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    probe_files(paths, 40_000_000, workers=n)
    results[f"threads x{n}"] = time.perf_counter() - t0
    for method in ("fork", "forkserver"):
        t0 = time.perf_counter()
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(n, mp_context=context) as pool:
            batches = list(chunks(paths, _PROBE_BATCH))
            list(pool.map(_probe_batch, batches, [40_000_000] * len(batches)))
        results[f"processes x{n} ({method}, incl. start)"] = time.perf_counter() - t0
    print(f"hash + decode of {len(paths):,} images:")
    for name, seconds in results.items():
        print(f"  {name:<36} {seconds:6.2f}s  {len(paths) / seconds:7.0f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=820)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--store", action="store_true", help="zip without compression")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "reid-bench")
    parser.add_argument("--database-url", default=None, help="default: SQLite in the data dir")
    parser.add_argument("--compare-pools", action="store_true")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    tree, archive = build_archive(
        args.work, args.identities, args.cameras, args.height, args.width, args.store
    )
    if args.compare_pools:
        compare_pools(tree)
    size_mb = archive.stat().st_size / 2**20
    with tempfile.TemporaryDirectory(dir=args.work, prefix="data-") as data_dir:
        settings = Settings(_env_file=None, data_dir=data_dir, database_url=args.database_url)
        upgrade_database(settings.effective_database_url)
        phases = PhaseLog()
        logging.getLogger("app.datasets.ingest").addHandler(phases)
        logging.getLogger("app.datasets.ingest").setLevel(logging.INFO)
        port = free_port()
        thread, server = serve(settings, port)
        rss_before = psutil.Process().memory_info().rss / 2**20
        sampler = RssSampler()
        sampler.start()
        t0 = time.perf_counter()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            with open(archive, "rb") as fh:
                response = client.post(
                    "/datasets",
                    data={"name": "bench", "labeled": "true"},
                    files={"file": (archive.name, fh, "application/zip")},
                )
            seconds = time.perf_counter() - t0
            rss_peak = sampler.stop()
            if response.status_code != 201:
                raise SystemExit(f"upload failed: {response.status_code} {response.text[:500]}")
            body = response.json()
            t0 = time.perf_counter()
            page = client.get(f"/datasets/{body['id']}/images", params={"limit": 500})
            list_ms = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            deleted = client.delete(f"/datasets/{body['id']}")  # also cleans a shared database
            delete_s = time.perf_counter() - t0
            assert page.status_code == 200 and deleted.status_code == 204
        server.should_exit = True
        thread.join(10)

    backend = settings.effective_database_url.split(":")[0]
    print(f"archive: {archive.name}, {size_mb:.1f} MiB, database {backend}")
    print(
        f"images: {body['num_images']:,} stored, {len(body['rejected'])} rejected, "
        f"splits {body['splits']}"
    )
    print(f"server: {phases.lines[-1] if phases.lines else '(no timing line)'}")
    print(f"POST /datasets: {seconds:.1f}s, {body['num_images'] / seconds:.0f} images/s, "
          f"{size_mb / seconds:.1f} MiB/s on {cpu_count()} CPU(s)")  # fmt: skip
    print(f"GET 500 images of it: {list_ms:.0f} ms; DELETE it: {delete_s:.2f}s")
    print(f"RSS: {rss_before:.0f} MiB before, {rss_peak:.0f} MiB peak during the upload "
          f"(process peak ru_maxrss {peak_rss_mb():.0f} MiB)")  # fmt: skip


if __name__ == "__main__":
    main()
