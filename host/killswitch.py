"""The out-of-band kill switch: a key-value bucket that only privileged identities write.

Keys are ``all``, ``agent.<name>`` and ``channel.<name>``. Each value is a signed
event: ``killed`` (by an operator, the bridge or the host), ``quarantined`` (by the host,
after an agent faulted) or ``resumed``. The host watches the bucket and keeps, for each
key, the switch event in force, so checking before a delivery costs a dictionary
lookup. Writing to the bucket is not enough to change anything, a key is needed too:

- a value that does not verify, whose key does not match what it says, or whose actor
  is not its signer is ignored and logged;
- an event signed earlier than the one in force (an old ``resumed`` put back after a
  newer kill, say) is ignored: what is in force only moves forward in signed time;
- a deletion or a purge carries no signature and lifts nothing; at start each key's
  whole history is read, so a deletion after a kill does not hide it either;
- a ``resumed`` from the bridge (a kill label taken off an issue) lifts only a kill the
  bridge set: an operator's kill is lifted by an operator; and a kill from the bridge
  does not take the place of a stop it did not set (else adding the label and taking it
  off would lift an operator's kill).

A limit: what the bucket no longer holds cannot be read back at start. A purge of a key,
or more writes to it than the bucket's history keeps (:data:`~agora.core.spine.CONTROL_HISTORY`), by
whoever may write the bucket, leaves a host that starts afterwards without that key's
kill (hosts already running keep it): the NATS server's permissions must keep the
bucket to operators, the bridge and hosts. Agents hold no NATS connection at all, and
no channel name can reach the bucket's subjects (``$KV.agora-control.*``), so no agent
can touch it.

Nothing said on a channel affects this state: "stop" in a message is just a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from agora.core.admission import admit
from agora.core.control import ALL_KEY, key_of_event
from agora.core.envelope import Event, EventKind, Fact
from agora.core.errors import InputError
from agora.core.keys import Identity, KeyRegistry, Role
from agora.core.spine import CONTROL_BUCKET, bucket_history
from agora.host.tasks import cancel

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
        self._js: JetStreamContext | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.listeners: list[Callable[[str, Event], None]] = []
        self._changed = asyncio.Condition()
        # each key's switch event in force (a resume too), and its signer's role
        self._in_force: dict[str, tuple[Event, Role]] = {}

    async def start(self, js: JetStreamContext) -> None:
        self._js = js
        watcher = await (await js.key_value(CONTROL_BUCKET)).watchall()
        self._task = asyncio.create_task(self._follow(watcher), name="agora-killswitch")
        await self._ready.wait()

    async def stop(self) -> None:
        await cancel(self._task)

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for update in watcher:
                if update is None:
                    # nats-py says the initial values were all seen, but it can say so
                    # before the first arrived: only an empty bucket is taken at its word
                    if not self._ready.is_set() and not await self._holds_values():
                        self._ready.set()
                    continue
                try:
                    if self._ready.is_set():
                        self._consider(update.key, update.value or b"", update.operation)
                    else:  # at start: the key's whole history, in signed time
                        await self._read_history(update)
                except Exception:
                    log.exception("ignored control value under %r", update.key)
                if update.delta == 0:  # nothing more was pending: the initial values are in
                    self._ready.set()
                async with self._changed:
                    self._changed.notify_all()
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _holds_values(self) -> bool:
        """Whether the bucket's stream holds any message (if it does, the watcher's
        last initial value, or a newer one, is still to come)."""
        assert self._js is not None  # noqa: S101 - set in start()
        try:
            info = await self._js.stream_info(f"KV_{CONTROL_BUCKET}")
        except (NatsError, TimeoutError):
            log.exception("the control bucket is out of reach: started on what was seen")
            return False
        return info.state.messages > 0

    async def wait_for(
        self, predicate: Callable[[KillState], bool], timeout_s: float = 10.0
    ) -> None:
        """Wait until the switch's state satisfies ``predicate``."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: predicate(self.state))

    async def _read_history(self, latest: KeyValue.Entry) -> None:
        """Every verified switch event the bucket still holds under the key of its
        ``latest`` entry, taken in the order they were signed (a value put back later
        is no newer for that)."""
        assert self._js is not None  # noqa: S101 - set in start()
        key = latest.key
        try:
            entries = [*await bucket_history(self._js, CONTROL_BUCKET, key), latest]
        except (NatsError, TimeoutError):
            log.exception("control key %r: its history is out of reach; its value alone", key)
            entries = [latest]
        found: list[tuple[Event, Role]] = []
        for entry in entries:
            if entry.operation not in _DELETIONS:
                verified = self._verified_event(key, entry.value or b"", quiet=True)
                if verified is not None:
                    found.append(verified)
        for event, role in sorted(found, key=lambda item: (item[0].time_ms, item[0].id)):
            self._take(key, event, role, quiet=True)

    def _consider(self, key: str, value: bytes, operation: str | None) -> None:
        if operation in _DELETIONS:
            # A deletion carries no signature: only a signed resume lifts a kill.
            log.warning("ignored the deletion of control key %r: resume with a signed event", key)
            return
        verified = self._verified_event(key, value)
        if verified is not None:
            self._take(key, *verified)

    def _take(self, key: str, event: Event, role: Role, *, quiet: bool = False) -> None:
        """Put ``event`` in force under ``key``, unless the one in force outranks it."""
        current = self._in_force.get(key)
        if current is not None:
            held, held_by = current
            if (event.time_ms, event.id) <= (held.time_ms, held.id):
                if event.id != held.id and not quiet:
                    log.warning(
                        "ignored control value under %r: %s %s was signed before the %s %s "
                        "in force",
                        key,
                        event.kind.value,
                        event.id,
                        held.kind.value,
                        held.id,
                    )
                return
            if _keeps_anothers_kill(event, role, held, held_by):
                if not quiet:
                    log.info(
                        "control value under %r: %s %s leaves the %s %s of %s (%s) in force",
                        key,
                        event.kind.value,
                        event.id,
                        held.kind.value,
                        held.id,
                        held.actor,
                        held_by.value,
                    )
                return
            if event.kind is EventKind.RESUMED and _lifts_only_its_own(role, held_by):
                log.warning(
                    "ignored control value under %r: a %s's resume does not lift the %s %s "
                    "of %s (%s)",
                    key,
                    role.value,
                    held.kind.value,
                    held.id,
                    held.actor,
                    held_by.value,
                )
                return
        self._in_force[key] = (event, role)
        stopped = dict(self.state.stopped)
        if event.kind in BLOCKING_KINDS:
            stopped[key] = event
        else:
            stopped.pop(key, None)
        self.state = KillState(stopped)
        for listener in self.listeners:
            listener(key, event)

    def _verified_event(
        self, key: str, value: bytes, *, quiet: bool = False
    ) -> tuple[Event, Role] | None:
        """The switch event ``value`` carries under ``key``, and its signer's role, if it
        may be in force there (else None, and why is logged unless ``quiet``)."""
        try:
            verified = admit(value, self._registry)
            found = _switch_of(key, verified.fact, verified.signer)
        except InputError as exc:
            found = str(exc)
        if isinstance(found, str):
            if not quiet:
                log.warning("ignored control value under %r: %s", key, found)
            return None
        return found


def _switch_of(key: str, fact: Fact, signer: Identity) -> tuple[Event, Role] | str:
    """``fact`` and its signer's role if it is a switch event that may be in force under
    ``key``, else why not."""
    if not isinstance(fact, Event) or fact.kind not in SWITCH_KINDS:
        return "not a kill, quarantine or resume"
    if fact.actor != signer.name:
        return f"it names {fact.actor!r} as its actor but {signer.name!r} signed it"
    expected = key_of_event(fact)
    if expected != key:
        return f"it is about {expected!r}"
    return fact, signer.role


_DELETIONS: Final = ("DEL", "PURGE")


def _keeps_anothers_kill(event: Event, role: Role, held: Event, held_by: Role) -> bool:
    """Whether a kill by the bridge leaves a stop it did not set in force: taking its
    place would make that stop the bridge's own, which the label's removal then lifts."""
    return (
        role is Role.BRIDGE
        and event.kind in BLOCKING_KINDS
        and held.kind in BLOCKING_KINDS
        and held_by is not Role.BRIDGE
    )


def _lifts_only_its_own(resumer: Role, killer: Role) -> bool:
    """Whether a resume signed by ``resumer`` is refused for a kill ``killer`` set: the
    bridge (a label taken off an issue) lifts only its own kills."""
    return resumer is Role.BRIDGE and killer is not Role.BRIDGE
