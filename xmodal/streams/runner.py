"""Run the ingest app on its own event loop in a background thread.

One way to run the agents everywhere — `xmodal worker`, `xmodal up` and the tests — so the code
that users run is the code that is tested. The caller's thread stays free for signals and for
the query consumer.

Stopping is in this order, so a stop loses nothing and leaves nothing behind:
1. drain: the batch in hand is written and acked, no further batch is taken;
2. `app.stop()`: faust commits what was acked, and the consumer leaves the group (LeaveGroup), so
   its partitions move to the other workers at once instead of after `session.timeout.ms`;
3. every task faust left on the loop is cancelled and awaited, async generators are closed, and
   only then is the loop closed (no "Task was destroyed but it is pending!").
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from xmodal.errors import XmodalError
from xmodal.streams.app import IngestApp

__all__ = ["FaustRunner"]

log = logging.getLogger(__name__)

# The batch in hand may be a large encode (CLIP on a CPU): give it time to finish, since a batch
# cut short is encoded again by the next owner.
DRAIN_TIMEOUT_S = 20.0
# Tasks faust leaves behind get this long to honour their cancellation.
CANCEL_TIMEOUT_S = 5.0


class FaustRunner:
    def __init__(self, app: IngestApp, executor: ThreadPoolExecutor | None = None) -> None:
        self._app = app
        self._executor = executor
        self._loop: asyncio.AbstractEventLoop | None = None  # made in start(): nothing to leak before
        self._thread = threading.Thread(target=self._run, name="xmodal-faust", daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    def _run(self) -> None:
        assert self._loop is not None  # set by start() before the thread starts
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._app.start())
        except BaseException as e:  # reported to start() in the caller's thread
            self._start_error = e
        self._started.set()
        if self._start_error is None:
            loop.run_forever()
        try:
            _cancel_remaining(loop)
        finally:
            loop.close()

    def start(self, timeout_s: float = 60.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise XmodalError(f"the Faust app did not start within {timeout_s:.0f} s")
        if self._start_error is not None:
            raise XmodalError(f"the Faust app failed to start: {self._start_error}") from self._start_error

    @property
    def crashed(self) -> BaseException | None:
        """Why ingest stopped on its own (e.g. the index stayed unavailable), else None."""
        if self._app.failure is not None:
            return self._app.failure
        reason = getattr(self._app, "crash_reason", None)  # faust's own services crashed
        return reason if isinstance(reason, BaseException) else None

    def stop(self, timeout_s: float = 30.0) -> None:
        loop = self._loop
        if loop is None or not self._thread.is_alive():
            self._shutdown_executor()
            return
        try:
            drained = asyncio.run_coroutine_threadsafe(self._app.drain(DRAIN_TIMEOUT_S), loop).result(
                DRAIN_TIMEOUT_S + 5
            )
            if not drained:
                log.warning("the batch in hand did not finish within %.0f s; it will be replayed", DRAIN_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - a failed drain must not skip the stop (commit, LeaveGroup)
            log.warning("the batch in hand could not be drained (%s); it will be replayed", e)
        try:
            asyncio.run_coroutine_threadsafe(self._app.stop(), loop).result(timeout_s)
        except Exception as e:  # noqa: BLE001 - stopping must go on: log and tear down the loop
            log.warning("the Faust app did not stop cleanly: %s", e)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout_s)
        self._shutdown_executor()

    def _shutdown_executor(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run() does at its end: cancel and await what is left, close async generators."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=CANCEL_TIMEOUT_S))
    for task in pending:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.debug("task %r ended with %r while stopping", task, task.exception())
    loop.run_until_complete(loop.shutdown_asyncgens())
