"""The service of ``reid demo``, run in this process: uvicorn in a background thread.

Why in-process rather than a ``reid serve`` subprocess: one Ctrl-C, one exit status and one
log file; nothing is left running when the demo fails. It is still the real service: the
app of :func:`app.main.create_app` with its embedded worker, spoken to over loopback HTTP.
The socket is bound here first, so a busy port fails fast and ``--port 0`` learns its port.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

from app.core.settings import Settings
from demo.client import DemoError

__all__ = ["DemoService"]


class DemoService:
    """``with DemoService(settings) as service:`` serves ``settings`` on ``service.url``."""

    def __init__(self, settings: Settings, startup_timeout_s: float = 60.0) -> None:
        self.settings = settings
        self.startup_timeout_s = startup_timeout_s
        self.port = settings.port
        self._server = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    def bind(self) -> None:
        """Take the port now (``--port 0``: any free one), so a busy port fails early."""
        if self._socket is None:
            self._socket = self._bind()

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.settings.host, self.settings.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"cannot listen on {self.settings.host}:{self.settings.port} ({exc.strerror}); "
                "pass --port with a free port, or --port 0 for any"
            ) from None
        self.port = sock.getsockname()[1]
        return sock

    def start(self) -> None:
        """Migrate the database, bind, start serving; returns once the app has started."""
        import uvicorn

        from app.core.db import upgrade_database
        from app.core.storage import StorageLayout
        from app.main import create_app
        from worker.dispatch import dispatcher_for

        StorageLayout(self.settings.data_dir).ensure()
        upgrade_database(self.settings.effective_database_url)
        self.bind()
        sock, self._socket = self._socket, None
        config = uvicorn.Config(
            create_app(self.settings, dispatcher=dispatcher_for(self.settings)),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="reid-demo-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not server.started:
            if not self._thread.is_alive():
                raise DemoError("the service failed to start (see service.log)")
            if time.monotonic() > deadline:
                self.stop()
                raise DemoError(f"the service did not start in {self.startup_timeout_s:.0f}s")
            time.sleep(0.05)

    def stop(self, timeout: float | None = 120.0) -> None:
        """Graceful shutdown: the embedded worker checkpoints a running job first."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None
        self._thread = None
        if self._socket is not None:  # bound but never served
            self._socket.close()
            self._socket = None

    def __enter__(self) -> DemoService:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
