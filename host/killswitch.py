"""The out-of-band kill switch: a key-value bucket that only privileged identities write.

Keys are ``all``, ``agent.<name>`` and ``channel.<name>``. Each value is a signed
event: ``killed`` (by an operator, the bridge or the host), ``quarantined`` (by the host,
after an agent faulted) or ``resumed``. The host watches the bucket and keeps the latest
verified value of each key in memory, so checking before a delivery costs a dictionary
lookup. A value that does not verify, or whose key does not match what it says, is
ignored and logged: writing to the bucket is not enough to stop anything, a key is needed
too. Agents hold no NATS connection at all, and no channel name can reach the bucket's
subjects (``$KV.agora-control.*``), so no agent can touch it.

Nothing said on a channel affects this state: "stop" in a message is just a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from agora.core.admission import admit
from agora.core.control import ALL_KEY, key_of_event
from agora.core.envelope import Event, EventKind
from agora.core.errors import InputError
from agora.core.keys import KeyRegistry
from agora.core.spine import CONTROL_BUCKET

log = logging.getLogger(__name__)

BLOCKING_KINDS: Final = frozenset({EventKind.KILLED, EventKind.QUARANTINED})
SWITCH_KINDS: Final = BLOCKING_KINDS | {EventKind.RESUMED}


@dataclass(frozen=True, slots=True)
class KillState:
    """What is stopped right now, by key, with the event that stopped it."""

    stopped: dict[str, Event]

    def blocks(self, agent: str, channel: str) -> bool:
        return self.stopped_by(agent, channel) is not None

    def stopped_by(self, agent: str, channel: str) -> Event | None:
        """The event that stops delivering ``channel`` to ``agent``, if any."""
        stopped = self.stopped
        return (
            stopped.get("agent." + agent)
            or stopped.get("channel." + channel)
            or stopped.get(ALL_KEY)
        )

    def blocks_agent(self, agent: str) -> bool:
        return ALL_KEY in self.stopped or ("agent." + agent) in self.stopped


class KillSwitch:
    """The host's live view of the bucket, updated by a watcher task."""

    def __init__(self, registry: KeyRegistry) -> None:
        self._registry = registry
        self.state = KillState({})
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.listeners: list[Callable[[str, Event], None]] = []
        self._changed = asyncio.Condition()

    async def start(self, js: JetStreamContext) -> None:
        self._kv = await js.key_value(CONTROL_BUCKET)
        watcher = await self._kv.watchall()
        self._task = asyncio.create_task(self._follow(watcher), name="agora-killswitch")
        await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for update in watcher:
                if update is None:  # the initial values have all been seen
                    self._ready.set()
                    continue
                entry = update
                try:
                    if not self._ready.is_set() and entry.operation not in ("DEL", "PURGE"):
                        # At start, a value that does not verify must not lift a kill
                        # written before it: use the newest one in the key's history
                        # that does.
                        entry = await self._newest_verified(update)
                    self._apply(entry.key, entry.value or b"", entry.operation)
                except Exception:
                    log.exception("ignored control value under %r", entry.key)
                async with self._changed:
                    self._changed.notify_all()
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def wait_for(
        self, predicate: Callable[[KillState], bool], timeout_s: float = 10.0
    ) -> None:
        """Wait until the switch's state satisfies ``predicate``."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: predicate(self.state))

    async def _newest_verified(self, entry: KeyValue.Entry) -> KeyValue.Entry:
        if self._verified_event(entry.key, entry.value or b"", quiet=True) is not None:
            return entry
        assert self._kv is not None  # noqa: S101 - set in start()
        with contextlib.suppress(Exception):
            for older in reversed(await self._kv.history(entry.key)):
                if self._verified_event(older.key, older.value or b"", quiet=True) is not None:
                    return older
        return entry

    def _apply(self, key: str, value: bytes, operation: str | None) -> None:
        stopped = dict(self.state.stopped)
        if operation in ("DEL", "PURGE"):
            # A deletion carries no signature: only a signed resume lifts a kill.
            log.warning("ignored the deletion of control key %r: resume with a signed event", key)
            return
        event = self._verified_event(key, value)
        if event is None:
            return
        if event.kind in BLOCKING_KINDS:
            stopped[key] = event
        else:
            stopped.pop(key, None)
        self.state = KillState(stopped)
        for listener in self.listeners:
            listener(key, event)

    def _verified_event(self, key: str, value: bytes, *, quiet: bool = False) -> Event | None:
        try:
            fact = admit(value, self._registry).fact
        except InputError as exc:
            if not quiet:
                log.warning("ignored control value under %r: %s", key, exc)
            return None
        if not isinstance(fact, Event) or fact.kind not in SWITCH_KINDS:
            log.warning("ignored control value under %r: not a kill, quarantine or resume", key)
            return None
        try:
            expected = key_of_event(fact)
        except InputError as exc:
            log.warning("ignored control value under %r: %s", key, exc)
            return None
        if expected != key:
            log.warning("ignored control value under %r: it is about %r", key, expected)
            return None
        return fact
