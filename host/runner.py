"""One agent's loop: fetch, screen, call, stamp, save, publish, acknowledge.

For each batch pulled from the agent's durable consumer (which only ever sees its
granted channels), every message is verified (unsigned or forged ones never reach the
agent) and screened by the control core: scope, self-echo on the signed sender,
idempotency, hop budget, and the kill switch. What passes is handed to the agent in one
call. What the agent returns is screened again (forged sender, malformed or ungranted
channel, size, reply to a message it was never handed); what passes is stamped by the
host (id, sender, hop budget, time) and signed with the agent's key, which the agent
never sees.

Then, in this order: the agent's record is saved with everything to publish (its new
state, progress, and the outbox of signed acts and events); the outbox is published
with ``Nats-Msg-Id``; the batch is acknowledged, and the server's confirmation of the
last acknowledgement awaited in the background. The next batch's save replaces the
outbox (one save per batch); an agent that goes idle has it cleared. A crash at any
point either redoes nothing (the batch was saved: its messages are recognised as
processed, by the ids the record keeps until their acknowledgement is confirmed, and
the saved outbox is published again under the same ids) or redoes the whole batch
from the saved state, so each message is processed once and no output is duplicated.

A kill that lands while the agent is running discards what the call returned; a timer
call so stopped (a vote's deadline, say) is undone as well, its state and wake time
kept as they were, and runs again once the switches change. A fault
(fuel, time, memory, a trap, a flood) quarantines the agent through the kill switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import random
import time
from collections import ChainMap, Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from nats.aio.client import Client
from nats.errors import Error as NatsError

from agora.core.acts import parse_act
from agora.core.control import set_switch
from agora.core.envelope import Act, Event, EventKind, Fact
from agora.core.errors import InputError
from agora.core.ids import new_id, now_ms
from agora.core.keys import ALL_CHANNELS, KeyRegistry, Role, SigningKey
from agora.core.pull import PullFeed
from agora.core.received import MSG_ID_HEADER, PUBLISH_TIMEOUT_S, JetStreamMessage, RawClient
from agora.core.signing import sign_fact, verify_envelope
from agora.core.spine import (
    FRESH_FOR_MS,
    SAFE_REPUBLISH_MS,
    STREAM,
    WINDOW_MS,
    agent_consumer_name,
    arrival_channel,
    channel_subject,
    delivery_count,
    ids_in_stream,
    publish_all,
    stream_place,
)
from agora.core.spine import event_subject as events_of
from agora.host.agent_record import (
    AgentRecord,
    Outgoing,
    RecordConflict,
    RecordTooLarge,
    UntrustedRecord,
)
from agora.host.batch import COPIES, REFUSAL_DETAIL, SETTLED, Batch, Delivery, StreamPlaces
from agora.host.config import DEFAULT_REMEMBERED
from agora.host.controls import (
    EmitVerdict,
    Handed,
    Verdict,
    screen_delivery,
    screen_emit,
    screen_replay,
)
from agora.host.killswitch import KillState, KillSwitch
from agora.host.record_store import RecordStore
from agora.host.sandbox import AgentFault, GuestContext, GuestMessage, GuestOutcome
from agora.host.tasks import finish
from agora.host.vouched import Vouched
from agora.host.watchdog import WatchedSandbox

log = logging.getLogger(__name__)

IDLE_WAIT_S: Final = 0.5
# idle, how often the saved record is looked at for another host's save: a vote it
# opened has a deadline this host must keep if that host goes away
RECHECK_RECORD_S: Final = 5.0
CONFLICT_RETRIES: Final = 20
ACK_CONFIRM_S: Final = 5.0
# a confirmation counts if it came within this part of the ack wait since the batch
# arrived (the server's clock for it started a little earlier, when it handed it over)
ACK_WAIT_MARGIN: Final = 0.8
MIN_WAKE_MS: Final = 250  # the soonest a timer call follows a call: no agent spins on timers
PUBLISH_BYTES_PER_S: Final = 1_000_000  # the slowest link a host is given time for


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """What the runner needs to know about its agent."""

    name: str
    channels: tuple[str, ...]
    settings: tuple[tuple[str, str], ...]
    batch: int
    outbox_limit: int
    ack_wait_s: float = 30.0  # the consumer's: past it, the server hands a message over again
    remembered: int = DEFAULT_REMEMBERED  # conversations whose hop budgets it keeps
    # the channels the key registry lets it use (more than ``channels``, maybe)
    registered: frozenset[str] = frozenset()


class AgentRunner:
    def __init__(
        self,
        *,
        spec: AgentSpec,
        client: Client,
        records: RecordStore,
        guest: WatchedSandbox,
        agent_key: SigningKey,
        host_key: SigningKey,
        killswitch: KillSwitch,
        vouched: Vouched,
    ) -> None:
        self.spec = spec
        self._client = client
        self._js = client.jetstream()
        self._records = records
        self._guest = guest
        self._agent_key = agent_key
        self._host_key = host_key
        self._killswitch = killswitch
        self._vouched = vouched
        self._granted = frozenset(spec.channels)
        self._granted_subjects = frozenset(channel_subject(c) for c in spec.channels)
        self._own_key = KeyRegistry([agent_key.identity(Role.AGENT, spec.channels)])
        # ids whose acknowledgement the server confirmed since the last save
        self._confirmed: set[str] = set()
        self._confirming: set[asyncio.Task[None]] = set()
        self._arrived_at = 0.0  # when the first message of the batch in hand arrived
        self.counters: Counter[str] = Counter()
        self.observers: list[Callable[[Delivery], None]] = []
        self.busy = False
        self._record = AgentRecord()
        self._outbox_published = False  # whether the saved record's outbox went out
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._feed: PullFeed | None = None
        # the switches under which a timer call's output was discarded: its call is
        # undone, and the timer waits until they change
        self._timer_held: KillState | None = None
        self._record_checked_at = time.monotonic()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self._reload()  # an untrusted record: the host quarantines the agent
        try:
            swept = await self._records.sweep()
        except (NatsError, TimeoutError) as exc:  # left for a later start
            log.warning("agent %s: left-over outbox parts not swept: %s", self.spec.name, exc)
        else:
            if swept:
                log.info("agent %s: %d left-over outbox parts purged", self.spec.name, swept)
        self._feed = await self._open_feed()
        self._task = asyncio.create_task(self._run(), name=f"agent-{self.spec.name}")
        self._task.add_done_callback(self._loop_ended)

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop after the batch in hand (graceful), or at once, as a crash would. The
        agent's thread, record store and feed are let go even if its loop had ended
        with an error (which is raised after)."""
        async with contextlib.AsyncExitStack() as then:  # its steps run last to first
            then.push_async_callback(self._stop_feed, give_back=graceful)
            then.push_async_callback(self._records.close)
            then.callback(self._guest.close)
            then.push_async_callback(self._stop_confirming)
            await finish(self._task, self._stopping, graceful=graceful)
            if graceful and self._confirming:  # what they learn lets the record forget ids
                await asyncio.wait(set(self._confirming), timeout=ACK_CONFIRM_S)
                with contextlib.suppress(Exception):
                    await self._tidy_record()

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """Say at once, not only at the stop, that the agent's loop ended with an error
        (its batches are guarded, so only something outside them can end it)."""
        if task.cancelled() or task.exception() is None:
            return
        self.counters["loop-failed"] += 1
        log.critical(
            "agent %s: its loop ended with an error and it takes no more messages until "
            "its host restarts",
            self.spec.name,
            exc_info=task.exception(),
        )

    async def _stop_confirming(self) -> None:
        for confirming in list(self._confirming):
            confirming.cancel()
        await asyncio.gather(*self._confirming, return_exceptions=True)

    async def _stop_feed(self, *, give_back: bool) -> None:
        if self._feed is not None:  # the feed in use now (a failed fetch makes another)
            await self._feed.stop(give_back=give_back)

    async def _open_feed(self) -> PullFeed:
        feed = PullFeed(
            self._client,
            stream=STREAM,
            consumer=agent_consumer_name(self.spec.name),
            batch=self.spec.batch,
        )
        await feed.start()
        return feed

    async def _run(self) -> None:
        with contextlib.suppress(AgentFault):  # a guest that cannot start faults on its call
            await self._guest.start()
        await self._guarded_step(None)  # what a crash left unpublished goes out first
        while not self._stopping.is_set():
            assert self._feed is not None  # noqa: S101 - opened in start()
            try:
                messages = await self._feed.take(self.spec.batch, self._wait_s())
                self._arrived_at = self._feed.taken_since
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters["fetch-error"] += 1
                log.exception("agent %s: fetch failed; binding its consumer again", self.spec.name)
                await asyncio.sleep(IDLE_WAIT_S)
                with contextlib.suppress(Exception):
                    await self._feed.stop(give_back=False)
                    self._feed = await self._open_feed()
                continue
            await self._guarded_step(messages)

    async def _guarded_step(self, messages: list[JetStreamMessage] | None) -> None:
        """A batch (None: only the outbox a crash left unpublished), its failures kept
        from ending the agent's loop."""
        try:
            await self._step_with_retry(messages)
        except asyncio.CancelledError:
            raise
        except UntrustedRecord as exc:
            await self.distrust(exc)
        except Exception:
            # Not acknowledged: the batch comes back after ack wait, at most
            # max_deliver times, and then lands in the dead-letter stream.
            self.counters["host-error"] += 1
            log.exception("agent %s: batch failed; it will be redelivered", self.spec.name)
            await asyncio.sleep(IDLE_WAIT_S)

    def _wait_s(self) -> float:
        wake = self._record.wake_at_ms
        if wake is None or self._stopped() or self._timer_waits():
            return IDLE_WAIT_S  # a stopped agent's wake waits for its resume
        return min(IDLE_WAIT_S, max(0.01, (wake - now_ms()) / 1000))

    # -- one batch ------------------------------------------------------------------------

    async def _step_with_retry(self, messages: list[JetStreamMessage] | None) -> None:
        """Run a batch; if another host saved this agent meanwhile, reload and redo it.

        Two hosts may run the same agent on one durable consumer: each batch goes to one
        of them, and the compare-and-set save orders their progress. A batch redone on
        the fresh record sees what the other host already processed as duplicates.
        """
        for _ in range(CONFLICT_RETRIES):
            counted = self.counters.copy()  # a batch redone is counted once
            try:
                if messages is None:
                    await self._publish_saved_outbox()
                else:
                    await self._step(messages)
            except RecordConflict:
                self.counters.clear()  # in place: whoever holds the counters sees it
                self.counters.update(counted)
                self.counters["record-conflict"] += 1
                await self._reload()
                await asyncio.sleep(random.uniform(0.005, 0.05))  # noqa: S311 - jitter, not secrecy
            else:
                return
        raise RecordConflict(f"agent {self.spec.name!r}: its record keeps changing under it")

    async def _step(self, messages: list[JetStreamMessage]) -> None:
        await self._publish_saved_outbox()  # if a publish failed after the save
        if self._record.outbox and not self._outbox_published:
            return  # stopped while it waited: the batch is not acknowledged, and comes back
        elsewhere = self._run_elsewhere(messages)
        if elsewhere:
            await self._step_aside(messages, elsewhere)
            return
        batch = Batch(
            self.spec.name, processed=itertools.chain(self._record.recent, self._record.unacked)
        )
        admitted = await self._vouched.admit_all([(m.data, m.subject) for m in messages])
        for message, found in zip(messages, admitted, strict=True):
            self._screen(message, found, batch)
        for key, ids in batch.refused.items():
            batch.outgoing.append(self._refusal(key, tuple(ids), batch.refused_from[key]))
        wake = self._record.wake_at_ms
        wake_due = wake is not None and wake <= now_ms() and not self._timer_waits()
        settled = all(v in SETTLED for v, _, _ in batch.refused)
        if messages and settled and not (batch.inbox or wake_due):
            await self._refused_all(messages, batch)
            return
        stopped = self._stopped()
        outcome: GuestOutcome | None = None
        if (batch.inbox or wake_due) and not stopped:
            outcome = await self._call(batch)
        record = self._record
        state, wake_at_ms = record.state, record.wake_at_ms
        if outcome is not None:
            before = batch.mark()
            self._take(outcome, batch)
            if batch.discarded and not batch.inbox:
                # A timer call a kill stopped part of (a deadline's decision, say) is
                # undone whole: none of what it returned goes out, and it runs again
                # once the switches change, a resume above all (what went out now would
                # go out again then).
                self.counters["emitted"] -= batch.undo_emitted(before)
                self._timer_held = self._killswitch.state
            else:
                state, wake_at_ms = outcome.state, _no_sooner(outcome.wake_at_ms)
            self._note_discarded(batch)
        elif not (messages or batch.outgoing):
            await self._tidy_record()
            await self._notice_other_hosts()
            return
        confirmed = frozenset(self._confirmed)
        finished = functools.partial(
            record.finished,
            last_seq=batch.last_seq,
            ids=batch.ids,
            parents=batch.parents,
            conversations=batch.conversations,
            at_ms=now_ms(),
            confirmed=confirmed,
            remembered=self.spec.remembered,
        )
        record = finished(state=state, wake_at_ms=wake_at_ms, outbox=tuple(batch.outgoing))
        try:
            await self._save(record, dropped=confirmed)
        except RecordTooLarge as exc:
            # What the call returned cannot be saved with the batch: it is dropped, as
            # after any fault, and the batch is saved as processed without it (with the
            # host's events, its refusals of what the call returned included).
            self.counters["emitted"] -= batch.emitted
            await self._quarantine(
                "flood",
                f"what one call returned cannot be saved: {exc.what} takes {exc.size} bytes; "
                f"the limit is {exc.limit}",
            )
            kept = tuple(o for o in batch.outgoing if arrival_channel(o.subject) is None)
            record = finished(state=self._record.state, wake_at_ms=None, outbox=kept)
            await self._save(record, dropped=confirmed)
        self._report(batch)
        record = await self._without_killed(record)  # a kill that landed during the save
        await self._publish(record.outbox)
        self._outbox_published = True
        await self._acknowledge(messages, batch.ids)

    def _run_elsewhere(self, messages: list[JetStreamMessage]) -> set[str]:
        """The channels of ``messages`` that this host's configuration does not give the
        agent but the key registry does: another host running it with more channels
        made its consumer take them (a configuration change under way, or hosts that
        disagree)."""
        subjects = {m.subject for m in messages} - self._granted_subjects  # most often none
        channels = {arrival_channel(subject) for subject in subjects}
        return {
            c
            for c in channels
            if c is not None
            and c not in self._granted
            and (c in self.spec.registered or ALL_CHANNELS in self.spec.registered)
        }

    async def _step_aside(self, messages: list[JetStreamMessage], channels: set[str]) -> None:
        """Leave the agent to the host that runs it with ``channels`` too: hand the batch
        back untouched (nothing of it is processed here, so none of it is refused for a
        scope this host alone lacks) and stop taking the agent's messages."""
        self.counters["stepped-aside"] += 1
        log.critical(
            "agent %s: its consumer takes channel(s) %s, which this host's configuration "
            "does not give it: another host runs it with more channels, and this host "
            "leaves it to that one (restart it with the same channels to run it here too)",
            self.spec.name,
            ", ".join(sorted(channels)),
        )
        self._stopping.set()
        for message in messages:
            await message.nak()
        await self._stop_feed(give_back=True)  # what it holds already, too

    async def _refused_all(self, messages: list[JetStreamMessage], batch: Batch) -> None:
        """A batch nothing of which reaches the agent, each message refused by a control
        whose verdict cannot change (the agent's own messages coming back to it, above
        all): it changes nothing the record keeps, so it is not saved. Its refusals are
        published, then the batch acknowledged. If the host stops in between, the batch
        comes again and is refused again in the very same events (their ids and times
        follow from the messages), which the server or the recorder drops as repeats."""
        await self._publish(tuple(batch.outgoing))
        await self._acknowledge(messages, [])

    async def distrust(self, exc: UntrustedRecord) -> None:
        """The agent's saved record is not one a host wrote (read at start, or again
        after another host saved): nothing in it may be used. This runner stops taking
        the agent's messages, which stay in the stream, and the agent is quarantined;
        once the record is put right (deleted, to start afresh), a restart of the host
        and `agora resume --agent` run it again."""
        self._stopping.set()
        log.critical("agent %s: %s; it stops here", self.spec.name, exc)
        try:
            await self._quarantine("record", str(exc))
        except Exception:  # the stop above holds whatever the server does
            log.exception("agent %s: its quarantine could not be recorded", self.spec.name)

    def _timer_waits(self) -> bool:
        """Whether the timer waits for the switches to change (see :meth:`_step`)."""
        return self._timer_held is not None and self._killswitch.state is self._timer_held

    def _stopped(self) -> bool:
        """Whether the agent may not run at all: killed, quarantined, or every channel it
        was granted killed (a timer call could then only produce what a kill discards).
        """
        state = self._killswitch.state
        name = self.spec.name
        return state.blocks_agent(name) or all(state.blocks(name, c) for c in self._granted)

    async def _acknowledge(self, messages: list[JetStreamMessage], ids: list[str]) -> None:
        """Acknowledge a batch. The record keeps ``ids`` as processed until the server
        confirms the acknowledgement of every message of the batch (each on its own:
        in a cluster, an earlier one can be lost in a change of the consumer's leader
        while a later one is taken), awaited in the background, and only if no copy of
        the batch can be anywhere else: each message was handed over for the first
        time, and the confirmations came before the server could have handed any of
        them over again (its ack wait since the batch arrived). A redelivered batch's
        ids stay: another host may hold the copy handed over before."""
        if not messages:
            return
        if not ids or any(delivery_count(m) != 1 for m in messages):
            for message in messages:
                await message.ack()
            return
        reconnects = self._client.stats["reconnects"]
        answers: asyncio.Future[list[Any]]
        if isinstance(self._client, RawClient):
            answers = await self._client.acknowledge_confirmed([m.reply for m in messages])
        else:
            answers = asyncio.gather(*(m.ack_sync(timeout=ACK_CONFIRM_S) for m in messages))
        arrived = self._arrived_at
        confirming = asyncio.create_task(self._confirm(answers, ids, arrived, reconnects))
        self._confirming.add(confirming)
        confirming.add_done_callback(self._confirming.discard)
        confirming.add_done_callback(lambda _: answers.cancel())  # cancelled before it ran

    async def _confirm(
        self, answers: asyncio.Future[list[Any]], ids: list[str], arrived: float, reconnects: int
    ) -> None:
        answered: list[Any] | None = None
        try:
            async with asyncio.timeout(ACK_CONFIRM_S):
                answered = await answers
        except (TimeoutError, NatsError):
            answers.cancel()  # what is still missing is given up on
        if answered is None or any(isinstance(a, Exception) for a in answered):
            self.counters["ack-unconfirmed"] += 1  # its ids stay in the record: harmless
            return
        in_time = time.monotonic() - arrived < self.spec.ack_wait_s * ACK_WAIT_MARGIN
        if in_time and self._client.stats["reconnects"] == reconnects:  # none lost
            self._confirmed.update(ids)
        else:
            self.counters["ack-late"] += 1

    def _screen(
        self, message: JetStreamMessage, found: tuple[Fact, str] | InputError, batch: Batch
    ) -> None:
        sequence, stored_ms = stream_place(message)
        batch.last_seq = max(batch.last_seq, sequence)
        if isinstance(found, InputError):
            self.counters["unverified"] += 1  # the recorder records the refusal once
            return
        fact, signer = found
        if not isinstance(fact, Act):  # pragma: no cover - admission refuses events on channels
            return
        channel = fact.channel  # admitted: the channel it arrived on
        verdict: str = screen_delivery(
            agent=self.spec.name,
            granted=self._granted,
            channel=channel,
            signed_sender=signer,
            message_id=fact.id,
            hops=fact.hops,
            processed=batch.processed,
        )
        if verdict == Verdict.DELIVER:
            verdict = screen_replay(
                fact_id=fact.id,
                msg_id=(message.headers or {}).get(MSG_ID_HEADER),
                signed_ms=fact.time_ms,
                stored_ms=stored_ms,
                fresh_for_ms=FRESH_FOR_MS,
                window_ms=WINDOW_MS,
            )
        if verdict not in COPIES:  # a copy's refusal must not mark the act processed
            batch.ids.append(fact.id)
        if verdict == Verdict.DELIVER:
            stopped = self._killswitch.state.stopped_by(self.spec.name, channel)
            if stopped is not None:
                verdict = stopped.kind.value
        self.counters[verdict] += 1
        if verdict == Verdict.DELIVER:
            batch.deliver(fact)
        else:
            key = (verdict, channel, self._own_event(fact.id))
            batch.refuse(key, fact.id, sequence, stored_ms)

    async def _call(self, batch: Batch) -> GuestOutcome | None:
        context = GuestContext(
            agent=self.spec.name,
            channels=self.spec.channels,
            now_ms=now_ms(),
            settings=self.spec.settings,
        )
        inbox = tuple(batch.inbox)
        batch.handed_at_ns = time.perf_counter_ns()
        self.busy = True
        try:
            outcome = await self._guest.call(context, self._record.state, inbox)
        except AgentFault as fault:
            self._delivered(batch)
            await self._quarantine(fault.kind, fault.detail)
            return None
        finally:
            self.busy = False
        self.counters["calls"] += 1
        self._delivered(batch)
        if len(outcome.outbox) > self.spec.outbox_limit:
            await self._quarantine(
                "flood",
                f"{len(outcome.outbox)} messages in one call; the limit is "
                f"{self.spec.outbox_limit}",
            )
            return None
        return outcome

    def _delivered(self, batch: Batch) -> None:
        """One ``delivered`` event per channel for what this call was handed."""
        at_ns = batch.handed_at_ns
        by_channel: dict[tuple[str, str], list[str]] = {}
        for act in batch.delivered:
            self.counters["delivered"] += 1
            by_channel.setdefault((act.channel, self._own_event(act.id)), []).append(act.id)
            batch.handed.append(Delivery(self.spec.name, act, at_ns))
        for (channel, _), ids in by_channel.items():
            batch.outgoing.append(
                self._event(
                    EventKind.DELIVERED, reason="delivered", subjects=tuple(ids), channel=channel
                )
            )

    def _report(self, batch: Batch) -> None:
        """Tell the observers what the batch handed over, once it is saved (a batch redone
        after a save conflict is reported once)."""
        for delivery in batch.handed:
            for observer in self.observers:
                observer(delivery)

    def _own_event(self, act_id: str) -> str:
        """``act_id`` if the act gets events of its own (one the recorder may refuse:
        see :meth:`Vouched.grounded`), else "" (it shares its batch's events)."""
        return "" if self._vouched.grounded(act_id) else act_id

    def _take(self, outcome: GuestOutcome, batch: Batch) -> None:
        """Screen, stamp and sign what the agent emitted. Refusals are recorded one
        event per control and call (however many messages a call makes it refuse, its
        facts stay few); what passes them but a kill stops is discarded."""
        # the batch's budgets over the record's; a spent hop is written to the batch's
        parents = ChainMap(batch.parents, self._record.parents)
        conversations = ChainMap(batch.conversations, self._record.conversations)
        refused: dict[str, list[str]] = {}  # by control, why each was refused
        discarded = 0
        for message in outcome.outbox:
            decision = screen_emit(
                agent=self.spec.name,
                granted=self._granted,
                sender=message.sender,
                channel=message.channel,
                conversation=message.conversation_id,
                in_reply_to=message.in_reply_to,
                payload=message.payload,
                parents=parents,
                conversations=conversations,
            )
            if decision.verdict != EmitVerdict.EMIT:
                self.counters[decision.verdict] += 1
                refused.setdefault(decision.verdict, []).append(decision.detail)
                continue
            if self._killswitch.state.blocks(self.spec.name, message.channel):
                discarded += 1
                continue
            if message.hops > decision.hops:
                self.counters["hops-lowered"] += 1
            self._emit(message, decision.hops, batch)
            # the hop is spent: what the message drew on is left with its budget
            if decision.from_conversation or message.in_reply_to is None:
                conversations[message.conversation_id] = decision.hops
            else:
                parents[message.in_reply_to] = Handed(decision.hops, message.conversation_id)
        for verdict, details in refused.items():
            many = f"{len(details)} messages refused; the first: " if len(details) > 1 else ""
            batch.outgoing.append(
                self._event(EventKind.REFUSED, reason=verdict, detail=many + details[0])
            )
        batch.discarded = discarded

    def _note_discarded(self, batch: Batch) -> None:
        """Count what a kill stopped of what the call returned, and say so in an event."""
        if not batch.discarded:
            return
        self.counters["discarded-by-kill"] += batch.discarded
        undone = " (a timer call: it is undone, and runs again once the switches change)"
        batch.outgoing.append(
            self._event(
                EventKind.REFUSED,
                reason="discarded-by-kill",
                detail=f"a kill landed while the agent was running; {batch.discarded} of its "
                f"messages are dropped{undone if not batch.inbox else ''}",
            )
        )

    def _emit(self, message: GuestMessage, hops: int, batch: Batch) -> None:
        act = Act(
            id=new_id("act"),
            conversation=message.conversation_id,
            sender=self.spec.name,
            channel=message.channel,
            act=parse_act(message.act),
            payload=message.payload,
            hops=hops,
            time_ms=now_ms(),
            in_reply_to=message.in_reply_to,
        )
        envelope = sign_fact(act, self._agent_key)
        self._vouched.add(envelope, act, self.spec.name)
        self.counters["emitted"] += 1
        batch.emitted += 1
        batch.outgoing.append(Outgoing(channel_subject(act.channel), act.id, envelope))

    async def _quarantine(self, kind: str, detail: str) -> None:
        """Stop a faulting agent: publish the fault and the quarantine as facts first,
        then switch it off (until resumed), so a switch is never in force unrecorded."""
        self.counters["faults"] += 1
        log.warning("agent %s quarantined after a fault (%s): %s", self.spec.name, kind, detail)
        fault = self._event(EventKind.FAULT, reason=kind, detail=detail)
        quarantine = Event(
            id=new_id("ev"),
            kind=EventKind.QUARANTINED,
            actor=self._host_key.name,
            time_ms=now_ms(),
            reason=kind,
            detail=f"stopped after a fault; resume with `agora resume --agent {self.spec.name}`",
            agent=self.spec.name,
        )
        envelope = sign_fact(quarantine, self._host_key)
        self._vouched.add(envelope, quarantine, self._host_key.name)
        await self._publish(
            (fault, Outgoing(events_of(self._host_key.name), quarantine.id, envelope))
        )
        await set_switch(self._js, quarantine, envelope)

    def _refusal(
        self, key: tuple[str, str, str], ids: tuple[str, ...], came: StreamPlaces
    ) -> Outgoing:
        """The ``refused`` event for what one control refused on one channel in a batch.
        Its id and time follow from the stream messages it refuses (their sequences,
        and when the latest was stored), so refusing the same messages again in one
        batch makes the very same event, which is recorded once; the id through the
        host's key, so no one else can take it first."""
        verdict, channel, _ = key
        what = (self._host_key.name, self.spec.name, verdict, channel, *map(str, came.sequences))
        digest = self._host_key.keyed_digest("\n".join(what).encode())
        return self._event(
            EventKind.REFUSED,
            reason=verdict,
            subjects=ids,
            channel=channel,
            detail=REFUSAL_DETAIL.get(verdict, verdict),
            ident=f"ev-refused-{digest[:32]}",
            at_ms=came.latest_ms,
        )

    def _event(
        self,
        kind: EventKind,
        *,
        reason: str,
        detail: str = "",
        subjects: tuple[str, ...] = (),
        channel: str | None = None,
        ident: str | None = None,
        at_ms: int | None = None,
    ) -> Outgoing:
        event = Event(
            id=ident or new_id("ev"),
            kind=kind,
            actor=self._host_key.name,
            time_ms=now_ms() if at_ms is None else at_ms,
            reason=reason,
            detail=detail[:1000],
            subjects=subjects,
            channel=channel,
            agent=self.spec.name,
        )
        envelope = sign_fact(event, self._host_key)
        self._vouched.add(envelope, event, self._host_key.name)
        return Outgoing(events_of(self._host_key.name), event.id, envelope)

    # -- durable steps ----------------------------------------------------------------

    async def _save(self, record: AgentRecord, *, dropped: frozenset[str]) -> None:
        """Save a record made without the ``dropped`` ids, whose acknowledgement the
        server confirmed: they need not be remembered any more."""
        await self._records.save(record)
        self._record = record
        self._outbox_published = False
        self._confirmed -= dropped

    async def _reload(self) -> None:
        """Read the record another host saved; its outbox is not known to be published."""
        self._record = await self._records.load()
        self._outbox_published = False

    async def _publish_saved_outbox(self) -> None:
        """Publish the saved outbox unless this runner already did.

        Again is harmless within JetStream's duplicate window: the same ids, which the
        server drops. An outbox saved longer ago than that (a host that crashed and came
        back late) is looked for in the stream first, and only what is not there yet
        is published, so no agent is handed one of its acts a second time. An act of
        the agent's that is missing is issued again under a new id and the present
        time, or every host would refuse it as a stale copy (:data:`FRESH_FOR_MS`); a
        new id, because the first publish may still land late (stale, and within the
        duplicate window it would make the server drop this one). The outbox so issued
        is saved before it is published, so a crash in between issues nothing twice.
        Between the two (an outbox saved more than half the window ago, less than the
        whole), it waits for the window to pass first."""
        if not self._record.outbox or self._outbox_published:
            return
        self.busy = True  # work in hand, for a settle
        try:
            await self._publish_outbox(self._record)
        finally:
            self.busy = False

    async def _publish_outbox(self, record: AgentRecord) -> None:
        record = await self._without_killed(record)
        outbox = record.outbox
        age_ms = now_ms() - (record.saved_at_ms or 0)
        if SAFE_REPUBLISH_MS < age_ms <= WINDOW_MS:
            # A first publish may still land, and count as fresh, until the window is
            # over: neither the same ids (stale by then) nor new ones (a copy beside a
            # late first) are safe before that.
            log.info("agent %s: its unsent outbox waits %d ms", self.spec.name, WINDOW_MS - age_ms)
            with contextlib.suppress(TimeoutError):  # a stop ends the wait
                async with asyncio.timeout((WINDOW_MS - age_ms) / 1000 + 0.001):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
        if age_ms > SAFE_REPUBLISH_MS:
            stored = await ids_in_stream(
                self._js,
                subjects=(o.subject for o in outbox),
                after_seq=record.last_seq,
                # past this, a first publish would be stale for every host
                until_ms=(record.saved_at_ms or now_ms()) + WINDOW_MS,
                wanted=(o.msg_id for o in outbox),
            )
            missing = tuple(
                o for o in outbox if o.msg_id not in stored or not self._taken(o, stored[o.msg_id])
            )
            self.counters["republish-skipped"] += len(record.outbox) - len(missing)
            outbox = tuple(self._issued_again(o) for o in missing)
            if outbox != missing:
                confirmed = frozenset(self._confirmed)
                reissued = dataclasses.replace(
                    record.sent(confirmed), outbox=outbox, saved_at_ms=now_ms()
                )
                await self._save(reissued, dropped=confirmed)
        await self._publish(outbox)
        self._outbox_published = True

    async def _without_killed(self, record: AgentRecord) -> AgentRecord:
        """The saved outbox less the agent's messages that a kill now in force stops (to
        a killed channel, or from a killed agent), with an event saying so, saved before
        anything of it goes out: a kill that landed since the outbox was saved (the host
        crashed, or could not publish) discards them as it discards a running call's."""
        state = self._killswitch.state

        def stopped(outgoing: Outgoing) -> bool:  # a host's event goes to no channel
            channel = arrival_channel(outgoing.subject)
            return channel is not None and state.blocks(self.spec.name, channel)

        kept = tuple(o for o in record.outbox if not stopped(o))
        discarded = len(record.outbox) - len(kept)
        if not discarded:
            return record
        self.counters["discarded-by-kill"] += discarded
        notice = self._event(
            EventKind.REFUSED,
            reason="discarded-by-kill",
            detail=f"a kill landed before the agent's saved messages went out; {discarded} "
            "of them are dropped",
        )
        confirmed = frozenset(self._confirmed)
        trimmed = dataclasses.replace(record.forgetting(confirmed), outbox=(*kept, notice))
        await self._save(trimmed, dropped=confirmed)
        return trimmed

    def _taken(self, outgoing: Outgoing, stored_ms: int) -> bool:
        """Whether a copy of ``outgoing`` stored at ``stored_ms`` reaches the hosts: an
        event does (it reaches no agent); an act of this agent's, if it was stored in
        time to be taken as fresh (one that landed late is refused by every host)."""
        try:
            act = verify_envelope(outgoing.envelope, self._own_key).fact
        except InputError:
            return True
        if not isinstance(act, Act):
            return True
        return stored_ms - act.time_ms <= FRESH_FOR_MS

    def _issued_again(self, outgoing: Outgoing) -> Outgoing:
        """``outgoing`` under a new id and the present time, signed again, if it is an act
        this agent's key signed; the host's events (handed to no agent) as they are."""
        try:
            act = verify_envelope(outgoing.envelope, self._own_key).fact
        except InputError:
            return outgoing
        if not isinstance(act, Act):
            return outgoing
        act = dataclasses.replace(act, id=new_id("act"), time_ms=now_ms())
        envelope = sign_fact(act, self._agent_key)
        self._vouched.add(envelope, act, self.spec.name)
        self.counters["issued-again"] += 1
        return Outgoing(outgoing.subject, act.id, envelope)

    async def _notice_other_hosts(self) -> None:
        """Idle, every :data:`RECHECK_RECORD_S`: read the agent's record again if another
        host running it saved it since (its wake time above all: a deadline set there
        is kept here too, should that host go away)."""
        now = time.monotonic()
        if now - self._record_checked_at < RECHECK_RECORD_S:
            return
        self._record_checked_at = now
        try:
            if await self._records.saved_elsewhere():
                await self._reload()
                self.counters["record-reread"] += 1
        except (NatsError, TimeoutError) as exc:  # looked at again next time
            log.warning(
                "agent %s: its saved record could not be looked at: %s", self.spec.name, exc
            )

    async def _tidy_record(self) -> None:
        """When the agent goes idle (or its host stops), drop from the saved record its
        published outbox and the ids whose acknowledgement was confirmed.

        While it is busy, the next batch's save does both anyway, so a batch costs one
        save; idle, this keeps a restart much later from publishing the outbox again,
        and the record from keeping ids it no longer needs."""
        record = self._record
        confirmed = frozenset(self._confirmed)
        sent = record.outbox and self._outbox_published
        if not (sent or any(i in confirmed for i in record.unacked)):
            return
        tidied = record.sent(confirmed) if sent else record.forgetting(confirmed)
        try:
            await self._save(tidied, dropped=confirmed)
        except RecordConflict:  # another host saved this agent since: it moved on
            await self._reload()

    async def _publish(self, outgoing: tuple[Outgoing, ...]) -> None:
        items = [(o.subject, o.msg_id, o.envelope) for o in outgoing]
        # an outbox of several megabytes gets time to cross a slow link too
        timeout_s = PUBLISH_TIMEOUT_S + sum(len(o.envelope) for o in outgoing) / PUBLISH_BYTES_PER_S
        if isinstance(self._client, RawClient):
            await self._client.publish_acked(items, timeout_s=timeout_s)
        else:
            await publish_all(self._js, items, timeout_s=timeout_s)


def _no_sooner(wake_at_ms: int | None) -> int | None:
    """The agent's wake time, no sooner than :data:`MIN_WAKE_MS` from now."""
    if wake_at_ms is None:
        return None
    return max(wake_at_ms, now_ms() + MIN_WAKE_MS)
