"""Run a Faust app on its own event loop in a background thread.

One way to run the agents everywhere — `xmodal worker`, `xmodal up` and the tests — so the code
that users run is the code that is tested. The caller's thread stays free for signals and for
the query consumer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import faust

from xmodal.errors import XmodalError

__all__ = ["FaustRunner"]

log = logging.getLogger(__name__)


class FaustRunner:
    def __init__(self, app: faust.App, executor: ThreadPoolExecutor | None = None) -> None:
        self._app = app
        self._executor = executor
        self._loop: asyncio.AbstractEventLoop | None = None  # made in start(): nothing to leak before
        self._thread = threading.Thread(target=self._run, name="xmodal-faust", daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    def _run(self) -> None:
        assert self._loop is not None  # set by start() before the thread starts
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._app.start())
        except BaseException as e:  # reported to start() in the caller's thread
            self._start_error = e
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    def start(self, timeout_s: float = 60.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise XmodalError(f"the Faust app did not start within {timeout_s:.0f} s")
        if self._start_error is not None:
            raise XmodalError(f"the Faust app failed to start: {self._start_error}") from self._start_error

    @property
    def crashed(self) -> BaseException | None:
        """The reason the app crashed (e.g. the index stayed unavailable), else None."""
        reason = getattr(self._app, "crash_reason", None)
        return reason if isinstance(reason, BaseException) else None

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._loop is None or not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._app.stop(), self._loop).result(timeout_s)
        except Exception as e:  # noqa: BLE001 - stopping must go on: log and tear down the loop
            log.warning("the Faust app did not stop cleanly: %s", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if not self._thread.is_alive():
            self._loop.close()
