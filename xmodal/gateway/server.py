"""Run the gateway: its SearchClient, then uvicorn in a background thread, on a socket bound first.

Binding the socket here (not inside uvicorn) turns a busy port into a ConfigError that names
XMODAL_HTTP_PORT, gives port 0 its real number before anything is printed, and keeps uvicorn's
signal handlers out of the process: signals belong to the CLI, which calls `stop()`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from xmodal.config import Settings
from xmodal.errors import ConfigError
from xmodal.gateway.app import Gateway, create_app

__all__ = ["GatewayServer"]

log = logging.getLogger(__name__)


class GatewayServer:
    """`start()` serves the gateway on XMODAL_HTTP_HOST:XMODAL_HTTP_PORT (0: a free port); `stop()` ends it."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.port = settings.http_port
        self.gateway: Gateway | None = None
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._crash: BaseException | None = None

    @property
    def url(self) -> str:
        host = self.settings.http_host
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        shown = f"[{shown}]" if ":" in shown else shown
        return f"http://{shown}:{self.port}/"

    def start(self, timeout_s: float = 15.0) -> GatewayServer:
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout_s: float) -> None:
        host = self.settings.http_host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        self._socket = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, self.settings.http_port))
        except OSError as e:
            raise ConfigError(
                f"the HTTP gateway cannot listen on {host}:{self.settings.http_port} ({e.strerror or e}); "
                "set XMODAL_HTTP_PORT (0: any free port) or XMODAL_HTTP_HOST"
            ) from e
        self.port = int(sock.getsockname()[1])
        self.gateway = Gateway(self.settings, self.bootstrap)  # assigned first: stop() closes it on any failure
        self.gateway.start()
        config = uvicorn.Config(
            create_app(self.gateway),
            log_config=None,  # the process's logging stays as the CLI set it
            log_level=self.settings.log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        # One line per request is the proxy's job; ours would drown the system's own log.
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # after Config, which sets it
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=self._run, args=(server, sock), name="xmodal-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() >= deadline:
                raise ConfigError(f"the HTTP gateway did not start on {host}:{self.port}: {self._crash or 'timed out'}")
            time.sleep(0.02)
        log.info("HTTP gateway on %s", self.url)

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as e:  # noqa: BLE001 - recorded for `crashed`; SystemExit from uvicorn too
            self._crash = e
            log.exception("the HTTP gateway stopped")

    @property
    def crashed(self) -> BaseException | None:
        """Why the server or its search client stopped on its own, else None."""
        if self._crash is not None:
            return self._crash
        if self._thread is not None and not self._thread.is_alive() and self._server is not None and not self._server.should_exit:
            return RuntimeError("the HTTP gateway's server thread ended")
        if self.gateway is not None and self.gateway.client.dead is not None and self._server is not None and not self._server.should_exit:
            return self.gateway.client.dead
        return None

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self.gateway is not None:
            self.gateway.stop()
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
