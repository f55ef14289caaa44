"""What every command that talks to a running agora needs: its config, keys and NATS.

``agora up`` with no ``nats.url`` starts an embedded server whose address is written in
its data folder; the other commands find it there, so they work in another terminal
without being told where the server is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import NoStreamResponseError, NotFoundError

from agora.core.acts import check_channel
from agora.core.document import file_in_the_way
from agora.core.errors import AgoraError, ConfigError, InputError, UnknownKey
from agora.core.keys import (
    KeyRegistry,
    SigningKey,
    private_key_path,
    read_private_key_file,
)
from agora.core.received import RawClient
from agora.core.spine import STREAM
from agora.host.config import Config, check_against_registry, load_config, without_credentials

log = logging.getLogger(__name__)

DEFAULT_CONFIG: Final = Path("agora.yaml")


@dataclass(frozen=True, slots=True)
class Session:
    config: Config
    registry: KeyRegistry

    def key(self, name: str) -> SigningKey:
        """The private key of ``name``, which must be in the registry: an agent's from its
        ``key:`` file, any other's from ``keys.dir/NAME.key``. A key whose public half is
        not the registry's is refused here, before it signs what every host refuses."""
        registered = self.registry.get(name).public_key
        config = self.config
        default = private_key_path(config.keys_dir, name)
        agent = config.agents.get(name)
        if agent is None or agent.key == default:
            where = str(default)
            try:
                key = read_private_key_file(default, name)
            except UnknownKey as exc:  # registered: `agora keys new` would refuse the name
                raise UnknownKey(
                    f"{exc}: put back the private key that {config.registry.name} registers "
                    f"for {name!r}, or give {name!r} a new key with `agora keys rotate {name}` "
                    "(what its old key signed stays valid)"
                ) from None
        else:
            where = f"{config.path}: agents.{name}.key"
            try:
                key = read_private_key_file(agent.key, name)
            except AgoraError as exc:
                raise ConfigError(
                    f"{where}: expected its private key file (PKCS#8 PEM, mode 0600): {exc}"
                ) from None
        if key.public_key != registered:
            raise ConfigError(
                f"{where}: expected the private key of {name!r} registered in "
                f"{config.registry}, got another key"
            )
        return key


def declared_channel(config: Config, name: str) -> str:
    """``name`` if the configuration declares it; any other name is a mistake, refused
    before anything connects (an act there could reach no agent)."""
    channel = check_channel(name)
    if channel not in config.channels:
        raise InputError(
            f"no channel {name!r} in {config.path}: the channels are "
            f"{', '.join(config.channels) or 'none'}"
        )
    return channel


def add_config_option(parser: Any) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="the agora configuration file (default: agora.yaml)",
    )


def open_session(config_path: Path) -> Session:
    """Read and check the configuration and the key registry, before anything starts."""
    config = load_config(config_path)
    registry = KeyRegistry.load(config.registry)
    check_against_registry(config, registry)
    return Session(config=config, registry=registry)


def running_url(config: Config) -> str:
    """The NATS URL to use: the configured one, or the running embedded server's."""
    if config.nats.url is not None:
        return config.nats.url
    ports_dir = config.nats.data_dir / "ports"
    for path in sorted(ports_dir.glob("*.ports")) if ports_dir.is_dir() else []:
        try:
            return str(json.loads(path.read_text())["nats"][0])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            continue
    raise ConfigError(
        f"no agora is running with its embedded NATS server in {config.nats.data_dir}: "
        "start one with `agora up`, or set nats.url in the configuration"
    )


OnClose = Callable[[], Awaitable[None]]
RETELL_AFTER_S: Final = 60.0
T = TypeVar("T")
_CREDENTIALS: Final = re.compile(r"://[^@/\s]+@")


class ConnectionTroubles:
    """A long-running process's NATS error callback: each kind of trouble (a server
    gone, refusing connections while it restarts) is logged in one line, and again
    only after :data:`RETELL_AFTER_S`, not with a traceback on every reconnect attempt
    (twice a second)."""

    def __init__(self) -> None:
        self._told: dict[str, float] = {}

    async def tell(self, error: Exception) -> None:
        kind = type(error).__name__
        now = time.monotonic()
        if now - self._told.get(kind, -RETELL_AFTER_S) < RETELL_AFTER_S:
            return
        self._told[kind] = now
        said = _CREDENTIALS.sub("://***@", str(error))  # a URL in it keeps no password
        log.warning("NATS: %s: %s (reconnecting; said once a minute)", kind, said)


@asynccontextmanager
async def connected(
    url: str, *, reconnect: bool = False, on_close: OnClose | None = None
) -> AsyncIterator[Client]:
    """A NATS connection. A command fails fast if the server is not there; a
    long-running process (``reconnect=True``) rides out a server restart. ``on_close``
    is awaited when the connection closes, whether it was closed or lost."""

    async def quiet(_: Exception) -> None:
        return None

    told = ConnectionTroubles()

    async def connect(*, reconnect: bool, on_close: OnClose | None) -> Client:
        # nats-py never gives up on a first connection with 0 attempts or with -1: one
        # attempt more, then an error; -1 only once connected, to ride out restarts
        client = RawClient()  # the host's busiest subscriptions read off the wire
        await client.connect(
            url,
            connect_timeout=3,
            allow_reconnect=reconnect,
            max_reconnect_attempts=-1 if reconnect else 1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # a float works; typed int
            error_cb=told.tell if reconnect else quiet,
            closed_cb=on_close,
        )
        return client

    try:
        if reconnect:  # a server that is not there at all is an error, at once
            await (await connect(reconnect=False, on_close=None)).close()
        client = await connect(reconnect=reconnect, on_close=on_close)
    except Exception as exc:
        raise ConfigError(f"cannot reach NATS at {without_credentials(url)}: {exc}") from exc
    try:
        yield client
    finally:
        try:
            await client.close()
        except OSError as exc:  # lost with something still to send: nowhere to send it
            log.warning(
                "NATS connection closed while lost (%s): what it still held is dropped", exc
            )


@asynccontextmanager
async def agora_connection(
    config: Config, *, on_close: OnClose | None = None
) -> AsyncIterator[Client]:
    """A command's connection to the NATS server of the running agora. What goes wrong
    with NATS inside the block ends the command with one line naming the server (never
    its credentials): a server on which no host has made agora's stream yet says so."""
    url = running_url(config)
    async with connected(url, on_close=on_close) as client:
        try:
            yield client
        except (NotFoundError, NoStreamResponseError) as exc:
            raise await _missing(client, url, exc) from None
        except NatsError as exc:
            raise AgoraError(f"NATS at {without_credentials(url)}: {_said(exc)}") from None


async def _missing(client: Client, url: str, exc: NatsError) -> AgoraError:
    """The error for something NATS did not find: agora's stream itself (no host has run
    on this server), or something else it names."""
    where = without_credentials(url)
    try:
        await client.jetstream().stream_info(STREAM)
    except NotFoundError:
        return ConfigError(f"no agora stream on this NATS server at {where}: run `agora up` first")
    except (NatsError, TimeoutError):
        pass  # the original error is the one to show
    return AgoraError(f"NATS at {where}: {_said(exc)}")


def _said(exc: NatsError) -> str:
    """What a NATS error says, or its name when it says nothing."""
    return str(exc).strip() or type(exc).__name__


def folder_argument(text: str) -> Path:
    """An argument naming a folder, or where one can be made: one with a file in the
    way is refused before anything is made (argparse names the option)."""
    path = Path(text)
    blocking = file_in_the_way(path.absolute())
    if blocking is not None:
        raise argparse.ArgumentTypeError(
            f"expected a folder, or a path where one can be made: {blocking} is a file"
        )
    return path


def run_interruptible(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, where a Ctrl-C always ends the command with
    KeyboardInterrupt: ``main`` is cancelled (and may clean up), and whatever it returns
    afterwards is not the command's. A cancellation can be lost (Python 3.11's
    ``asyncio.wait_for``, which nats-py uses, drops one that lands as what it waits for
    completes), and a Ctrl-C can come while synchronous code runs, before the event
    loop could act on it: either way the command still ends as interrupted. A second
    Ctrl-C ends it at once."""

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        interrupted = forced = False

        def on_sigint(_signum: int, _frame: object) -> None:
            nonlocal interrupted, forced
            if interrupted:
                forced = True
                raise KeyboardInterrupt  # the second: at once, wherever it is
            interrupted = True  # at once too: the handler runs between two bytecodes
            if task is not None:
                loop.call_soon_threadsafe(task.cancel)

        outer = signal.signal(signal.SIGINT, on_sigint)
        try:
            result = await main
        except asyncio.CancelledError:
            if interrupted and not forced:  # forced: raised already, this is the close
                raise KeyboardInterrupt from None
            raise
        finally:
            signal.signal(signal.SIGINT, outer)
        if interrupted:
            raise KeyboardInterrupt
        return result

    return asyncio.run(guarded())
