"""Where the compiled pseudo-labelling kernels live, and compiling them before a job needs them.

The k-reciprocal kernels (:mod:`trainer.kreciprocal`) are Numba functions: compiling them costs
about 7 s on 2 cores, more than the rest of a 13k-image clustering step. Numba's cache would
keep them next to the source, in ``trainer/__pycache__``, which is read-only in a site-packages
install or a container image, so each fresh worker would pay again. Instead the cache lives in
a writable folder outside the package: ``NUMBA_CACHE_DIR`` when set (the images point it at a
folder of their own), else the user's cache (``$XDG_CACHE_HOME/reid-service/numba``, by default
``~/.cache/reid-service/numba``). ``make install`` and the image builds fill it
(``python -m trainer.jit_cache``), and every process loads the kernels in the background as
soon as it imports :mod:`trainer.cluster` (workers: when they start).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["cache_dir", "configure", "kernel", "preload", "warm_up"]

ENV = "NUMBA_CACHE_DIR"
logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The folder Numba's cache goes to (``NUMBA_CACHE_DIR``, else the user's cache)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reid-service" / "numba"


def configure() -> Path | None:
    """Point Numba's cache at :func:`cache_dir`; must run before the kernels are defined
    (this module runs it on import, and every kernel is made by :func:`kernel`). Works whether
    or not Numba was
    imported already: the environment for later imports, ``numba.config`` for this one.
    A folder that cannot be written is left alone (Numba then falls back to its own places)."""
    folder = cache_dir()
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        logger.warning("Numba cache %s is not writable: kernels compile in every process", folder)
        return None
    os.environ[ENV] = str(folder)
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.config.CACHE_DIR = str(folder)
    return folder


def kernel(function: Callable) -> Callable:
    """``numba.njit(nogil=True, cache=True)``, the cache configured first: how the package's
    kernels are compiled (``nogil``: the drivers run row blocks on threads)."""
    from numba import njit

    return njit(nogil=True, cache=True)(function)


_preloading: threading.Thread | None = None
_preload_lock = threading.Lock()


def _run_kernels() -> float:
    import torch

    from trainer.cluster import jaccard_distance, self_paced_labels

    start = time.perf_counter()
    features = torch.nn.functional.normalize(
        torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), dim=1
    )
    dist = jaccard_distance(features, k1=8, k2=3)
    self_paced_labels(dist, eps=0.6)
    return time.perf_counter() - start


def warm_up() -> float:
    """Compile (or load from the cache) every kernel of pseudo-labelling on a tiny input, and
    wait for a :func:`preload` under way; returns the seconds it took. Call it before forking:
    afterwards no thread of this module is running."""
    start = time.perf_counter()
    import trainer.cluster  # noqa: F401  # starts the preload, if nothing did yet

    thread = _preloading
    if thread is not None and thread is not threading.current_thread():
        thread.join()  # first: two threads compiling the same kernels can abort the process
    _run_kernels()  # loaded by now (or the preload failed: this raises the reason)
    return time.perf_counter() - start


def preload() -> threading.Thread:
    """Load the kernels on a daemon thread, once per process: :mod:`trainer.cluster` starts it
    on import, so a job's first clustering, which comes after its data, model and features,
    finds them ready (about 0.4 s on 2 cores from the cache, 7 s to compile)."""
    global _preloading
    with _preload_lock:
        if _preloading is None:

            def run() -> None:
                try:
                    seconds = _run_kernels()
                    logger.debug("clustering kernels ready in %.1fs (%s)", seconds, cache_dir())
                except Exception:  # only costs the first clustering the load or compile time
                    logger.exception("loading the clustering kernels failed")

            _preloading = threading.Thread(target=run, name="reid-jit-preload", daemon=True)
            _preloading.start()
        return _preloading


configure()  # at import: before any kernel is defined

if __name__ == "__main__":  # python -m trainer.jit_cache: fill the cache (install, image build)
    seconds = warm_up()
    print(f"pseudo-labelling kernels compiled or loaded in {seconds:.1f}s; cache: {cache_dir()}")
