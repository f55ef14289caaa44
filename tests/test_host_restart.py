"""Restarts: in the middle of a vote, in the middle of a conversation, and with kills in
force. Each message is processed once, no output is duplicated, and the outcome is the
one an uninterrupted run would give.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from agora.cli.session import connected, open_session
from agora.cli.workspace import AgentPlan, create_workspace
from agora.core.acts import Performative
from agora.core.envelope import Act, Event, EventKind
from agora.core.errors import ConfigError, InternalError, MalformedEnvelope
from agora.core.factlog import (
    CHECKPOINT_DIR,
    LOG_FILE,
    POSITION_FILE,
    FactLog,
    checkpoint_name,
    read_facts,
)
from agora.core.ids import new_id, now_ms
from agora.core.keys import Role, read_private_key_file
from agora.core.received import MSG_ID_HEADER, RawClient
from agora.core.signing import pae, sign_fact
from agora.core.spine import (
    AGENTS_BUCKET,
    STREAM,
    agent_consumer_config,
    agent_consumer_name,
    bucket_history,
    channel_subject,
    ensure_consumer,
    ensure_spine,
    publish_all,
    publish_envelope,
    read_in_order,
)
from agora.host import recorder as recorder_module
from agora.host import runner as runner_module
from agora.host.agent_record import (
    RECORD_TYPE,
    AgentRecord,
    Outgoing,
    RecordConflict,
    RecordTooLarge,
    UntrustedRecord,
    part_key,
    signed_part,
)
from agora.host.killswitch import KillSwitch
from agora.host.nats_server import EmbeddedNats
from agora.host.record_store import MAX_OUTBOX_PARTS, RecordStore
from agora.host.tasks import cancel
from agora.host.watchdog import WatchedSandbox
from tests.factories import make_act
from tests.harness import Harness, running_host

VOTERS = {
    "alice-voter": {"approve": "tests pass", "default": "reject"},
    "bob-voter": {"approve": "reviewed", "default": "reject"},
    "carol-voter": {"approve": "tests pass", "veto": "friday", "default": "accept"},
}
VOTE = {
    "coordinator": AgentPlan(
        "coordinator",
        ("release",),
        {"voters": ",".join(VOTERS), "quorum": "3", "deadline-ms": "60000"},
    ),
    **{n: AgentPlan("voter", ("release",), rule) for n, rule in VOTERS.items()},
}
PAIR = {
    "synth-agent": AgentPlan("chatty", ("build-coord",)),
    "relay-agent": AgentPlan("chatty", ("build-coord",)),
}


async def test_a_restart_in_the_middle_of_a_vote_still_decides_right(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(
        tmp_path, components, agents=VOTE, channels=("release",), start=False
    ) as h:
        # carol's consumer exists (she was deployed), but her host is not running yet.
        await ensure_spine(h.js)
        await ensure_consumer(
            h.js,
            agent_consumer_config(
                "carol-voter", ["release"], ack_wait_s=30, max_deliver=5, batch=64
            ),
        )
        await h.start_host(["coordinator", "alice-voter", "bob-voter"])
        request = await h.inject("release", "ship it: tests pass, reviewed", hops=8)
        await h.settle()
        assert len(h.acts_by("alice-voter")) == len(h.acts_by("bob-voter")) == 1
        assert not [a for a in h.acts_by("coordinator") if a.act.value == "inform"]
        await h.stop_host()  # two votes in, one to come: the tally lives in saved state

        await h.start_host()
        await h.settle()
        coordinator = h.acts_by("coordinator")
    proposals = [a for a in coordinator if a.act.value == "propose"]
    decisions = [json.loads(a.payload) for a in coordinator if a.act.value == "inform"]
    assert len(proposals) == 1
    assert proposals[0].in_reply_to == request.id
    assert len(decisions) == 1
    assert decisions[0]["outcome"] == "accepted"
    assert decisions[0]["votes"] == dict.fromkeys(VOTERS, "accept")
    for voter in VOTERS:
        assert len(h.acts_by(voter)) == 1
    _each_delivered_once(h)


async def test_a_crash_in_the_middle_of_a_conversation_loses_and_repeats_nothing(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    hops = 16
    # What a crash left delivered but unacknowledged comes back after ack_wait_s.
    quick = {"consumer": {"ack_wait_s": 1, "max_deliver": 5}}
    async with running_host(tmp_path, components, agents=PAIR, extra=quick) as h:
        enough = asyncio.Event()
        h.running().runners["synth-agent"].observers.append(
            lambda _: enough.set() if len(h.deliveries) >= 8 else None
        )
        await h.inject("build-coord", "count down", hops=hops)
        await enough.wait()
        await h.stop_host(graceful=False)  # cancelled wherever they are, as in a crash
        stopped_at = len(h.deliveries)
        assert stopped_at < 2 * hops

        await h.start_host()
        await h.settle()
    replies = [a for n in PAIR for a in h.acts_by(n)]
    # Two chains of replies, one started by each agent, with hops-1 down to 0.
    assert len(replies) == 2 * hops
    assert sorted(a.hops for a in replies) == sorted(list(range(hops)) * 2)
    answered = Counter((a.sender, a.in_reply_to) for a in replies)
    assert max(answered.values()) == 1  # no agent answered any message twice
    _each_delivered_once(h)


async def test_a_batch_redelivered_after_many_others_is_still_processed_once(
    tmp_path: Path, components: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host "crashes" after saving a batch and publishing its outputs, before the
    # acknowledgement; the batch comes back after ack wait, by when more messages than
    # the record's window of recent ids have been processed.
    one = {"synth-agent": PAIR["synth-agent"]}
    slow = {"consumer": {"ack_wait_s": 8, "max_deliver": 5}}
    async with running_host(tmp_path, components, agents=one, extra=slow) as h:
        stuck = asyncio.Event()

        async def crash_before_the_ack(*_: object) -> None:
            stuck.set()
            await asyncio.Event().wait()

        acknowledge = runner_module.AgentRunner._acknowledge
        monkeypatch.setattr(runner_module.AgentRunner, "_acknowledge", crash_before_the_ack)
        first = await h.inject("build-coord", "the batch whose ack is lost", hops=1)
        await asyncio.wait_for(stuck.wait(), 10)
        await h.stop_host(graceful=False)
        monkeypatch.setattr(runner_module.AgentRunner, "_acknowledge", acknowledge)

        others = [_signed_request(h, f"other {n}") for n in range(600)]
        host = await h.start_host()
        handed = asyncio.Event()  # (settling would wait for the redelivery too)
        host.runners["synth-agent"].observers.append(
            lambda _: handed.set() if len(h.deliveries) == 601 else None
        )
        await publish_all(
            h.js, ((channel_subject("build-coord"), a.id, e) for a, e in others), timeout_s=30
        )
        await asyncio.wait_for(handed.wait(), 10)
        await asyncio.sleep(0.2)  # for the last batch's save
        record = await h.record("synth-agent")
        assert first.id not in record.recent  # pushed out by the 600 since
        assert first.id in record.unacked  # its acknowledgement was never confirmed
        counters = host.runners["synth-agent"].counters
        for _ in range(150):  # it comes back 8 s after it was handed over
            if counters["duplicate"]:
                break
            await asyncio.sleep(0.1)
        await h.settle()
        assert counters["duplicate"] == 1
        record = await h.record("synth-agent")
    handed = Counter(d.act.id for d in h.deliveries)
    assert handed[first.id] == 1
    assert all(handed[o.id] == 1 for o, _ in others)
    replies = Counter(a.in_reply_to for a in h.acts_by("synth-agent"))
    assert replies[first.id] == 1
    assert len(replies) == 601
    assert max(replies.values()) == 1
    assert len(record.unacked) <= 64  # confirmed acknowledgements are forgotten
    refused = [(e.reason, s) for e, s in h.per_subject(EventKind.REFUSED)]
    assert ("duplicate", first.id) in refused


async def test_an_agents_own_message_coming_back_is_refused_once_and_saves_nothing(
    tmp_path: Path, components: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent's reply comes back to it and is refused (self-echo) with no save of
    # its record; the host "crashes" after publishing the refusal, before the
    # acknowledgement, and the reply, delivered again, is refused in the same event.
    one = {"synth-agent": PAIR["synth-agent"]}
    quick = {"consumer": {"ack_wait_s": 1, "max_deliver": 5}}
    async with running_host(tmp_path, components, agents=one, extra=quick) as h:
        stuck = asyncio.Event()
        acknowledge = runner_module.AgentRunner._acknowledge

        async def crash_before_the_echos_ack(
            runner: runner_module.AgentRunner, messages: list[Any], ids: list[str]
        ) -> None:
            if ids:  # a batch the agent was handed: acknowledged as usual
                await acknowledge(runner, messages, ids)
                return
            stuck.set()
            await asyncio.Event().wait()

        monkeypatch.setattr(runner_module.AgentRunner, "_acknowledge", crash_before_the_echos_ack)
        request = await h.inject("build-coord", "once", hops=1)
        await asyncio.wait_for(stuck.wait(), 10)
        await h.stop_host(graceful=False)
        monkeypatch.setattr(runner_module.AgentRunner, "_acknowledge", acknowledge)
        [reply] = h.acts_by("synth-agent")
        record = await h.record("synth-agent")
        assert record.calls == 1 and reply.id not in (*record.recent, *record.unacked)

        host = await h.start_host()
        counters = host.runners["synth-agent"].counters
        for _ in range(50):  # delivered again a second after it was first
            if counters["self-echo"]:
                break
            await asyncio.sleep(0.1)
        await h.settle()
        assert counters["self-echo"] == 1
        assert (await h.record("synth-agent")).calls == 1
    refused = [(e.reason, s) for e, s in h.per_subject(EventKind.REFUSED)]
    assert refused == [("self-echo", reply.id)]
    assert [d.act.id for d in h.deliveries] == [request.id]


@pytest.mark.parametrize("in_time", [True, False])
async def test_a_batch_is_forgotten_only_once_its_acknowledgement_is_confirmed_in_time(
    tmp_path: Path,
    components: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    in_time: bool,
) -> None:
    # A confirmation that comes later than the server's ack wait since the batch
    # arrived may come after the server handed the batch to another host: its ids stay.
    if not in_time:
        monkeypatch.setattr(runner_module, "ACK_WAIT_MARGIN", 0.0)
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        request = await h.inject("build-coord", "hello", hops=1)
        await h.settle()
        runner = h.running().runners["synth-agent"]
        for _ in range(50):  # the idle agent's record drops what was confirmed
            if (
                not runner._confirming
                and (request.id in (await h.record("synth-agent")).unacked) != in_time
            ):
                break
            await asyncio.sleep(0.1)
        record = await h.record("synth-agent")
        assert (request.id in record.unacked) is not in_time
        assert request.id in record.recent
        assert runner.counters["ack-late"] == (0 if in_time else 1)


async def test_a_batch_keeps_its_ids_unless_every_acknowledgement_is_confirmed(
    tmp_path: Path, components: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # In a cluster, the acknowledgement of an earlier message of a batch can be lost in
    # a change of the consumer's leader while a later one's is taken and confirmed; the
    # earlier message then comes back after the ack wait, so its id must stay.
    monkeypatch.setattr(runner_module, "ACK_CONFIRM_S", 1.0)
    one = {"synth-agent": PAIR["synth-agent"]}
    quick = {"consumer": {"ack_wait_s": 2, "max_deliver": 5}}
    async with running_host(tmp_path, components, agents=one, extra=quick) as h:
        await h.stop_host()  # the two wait in the stream for one batch
        first = await h.inject("build-coord", "one", hops=1)
        second = await h.inject("build-coord", "two", hops=1)
        lost: list[str] = []
        publish = RawClient.publish

        async def losing_the_first_ack(
            client: RawClient, subject: str, payload: bytes = b"", **options: Any
        ) -> None:
            if payload == b"+ACK" and not lost:
                lost.append(subject)
                return
            await publish(client, subject, payload, **options)

        monkeypatch.setattr(RawClient, "publish", losing_the_first_ack)
        host = await h.start_host()
        runner = host.runners["synth-agent"]
        for _ in range(50):
            if runner.counters["ack-unconfirmed"] and not runner._confirming:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the idle agent's record drops what was confirmed
        assert len(lost) == 1 and runner.counters["ack-unconfirmed"] == 1
        record = await h.record("synth-agent")
        assert record.calls == 1  # the two came in one batch
        assert {first.id, second.id} <= set(record.unacked)
        await h.settle()  # the first comes back after the ack wait: it was processed
        assert runner.counters["duplicate"] == 1
    assert [d.act.id for d in h.deliveries] == [first.id, second.id]


def _signed_request(h: Harness, text: str) -> tuple[Act, bytes]:
    ident = new_id("act")
    act = Act(
        id=ident,
        conversation=ident,
        sender="maintainer",
        channel="build-coord",
        act=Performative.REQUEST,
        payload=text,
        hops=1,
        time_ms=now_ms(),
    )
    return act, sign_fact(act, h.session.key("maintainer"))


async def test_a_fact_is_written_at_once_and_the_position_moves_only_once_it_is_synced(
    tmp_path: Path, components: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The disk holds every fsync: facts are still written and agents still served (the
    # event loop never waits on the disk), but the position stays where the log is
    # durable, so a crash of the machine now would read those facts again.
    disk = threading.Event()
    fsync = FactLog.fsync

    def slow_fsync(log: FactLog) -> None:
        disk.wait(10)
        fsync(log)

    monkeypatch.setattr(FactLog, "fsync", slow_fsync)
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        recorder = h.running().recorder
        assert recorder is not None
        written: list[str] = []
        durable: list[str] = []
        recorder.observers.append(lambda fact: written.append(fact.id))
        recorder.durable_observers.append(lambda fact: durable.append(fact.id))
        before = recorder.position
        request = await h.inject("build-coord", "hello", hops=1)
        for _ in range(100):
            if len(h.acts_by("synth-agent")) == 1:
                break
            await asyncio.sleep(0.05)
        [reply] = h.acts_by("synth-agent")  # read from the log file, written
        assert [d.act.id for d in h.deliveries] == [request.id]
        assert {request.id, reply.id} <= set(written)
        assert durable == [] and recorder.position == before
        disk.set()
        await h.settle()
        assert {request.id, reply.id} <= set(durable)
        assert recorder.position > before
        assert durable == written
    h.verify()


async def test_a_failed_fsync_stops_the_recorder_and_a_restart_records_again(
    tmp_path: Path, components: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a failed fsync nothing written since the last good one can be called
    # durable (the system may report the next fsync a success): the recorder stops
    # where the log was last durable, the agents go on, and a restart records again.
    fsync = FactLog.fsync
    failing = threading.Event()

    def disk(log: FactLog) -> None:
        if failing.is_set():
            raise OSError(5, "Input/output error")
        fsync(log)

    monkeypatch.setattr(FactLog, "fsync", disk)
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        await h.inject("build-coord", "before", hops=1)
        await h.settle()
        recorder = h.running().recorder
        assert recorder is not None
        durable = recorder.position
        failing.set()
        after = await h.inject("build-coord", "after", hops=1)
        for _ in range(100):
            if recorder.failure is not None and len(h.deliveries) == 2:
                break
            await asyncio.sleep(0.05)
        assert recorder.failure is not None and "Input/output error" in recorder.failure
        assert h.running().status()["recorder"]["failure"] == recorder.failure
        assert recorder.position == durable  # never past what was last durable
        assert [d.act.id for d in h.deliveries][-1] == after.id  # the agents went on
        with pytest.raises(InternalError, match="the recorder stopped"):
            recorder.snapshot()
        await h.stop_host()
        failing.clear()
        await h.start_host()
        await h.settle()
    replies = h.acts_by("synth-agent")
    assert after.id in {f.id for f in h.facts()}
    assert [a.in_reply_to for a in replies].count(after.id) == 1
    h.verify()


async def test_a_recorder_position_left_behind_records_nothing_twice(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # The position is saved at most once a second, so a crash can leave it behind the
    # log; here it is set back to the start of the stream, the worst case.
    async with running_host(tmp_path, components, agents=PAIR) as h:
        await h.inject("build-coord", "count down", hops=4)
        await h.settle()
        recorded = [f.id for f in h.facts()]
        await h.stop_host(graceful=False)
        (h.facts_dir / POSITION_FILE).write_text("0\n")

        host = await h.start_host()
        later = await h.inject("build-coord", "one more", hops=1)
        await h.settle()
        assert host.recorder is not None
        assert host.recorder.counters.repeated >= len(recorded)
    ids = [f.id for f in h.facts()]
    assert ids[: len(recorded)] == recorded
    assert later.id in ids
    assert len(ids) == len(set(ids))
    h.verify()


@pytest.mark.parametrize("damage", ["spoiled", "rolled-back"])
async def test_a_log_that_lost_its_tail_is_recorded_again_from_the_stream(
    tmp_path: Path, components: dict[str, Path], damage: str
) -> None:
    # A machine crash spoiled entries written and never synced (a block of zeros before
    # lines the disk kept), or the log was put back from a copy older than the saved
    # position: the entries lost come again from the stream, the same bytes in order.
    async with running_host(tmp_path, components, agents=PAIR) as h:
        await h.inject("build-coord", "count down", hops=4)
        await h.settle()
        await h.stop_host()  # the position is saved past every entry
        assert (h.facts_dir / POSITION_FILE).read_text().split()[1] == str(len(h.facts()))
        log_file = h.facts_dir / LOG_FILE
        whole = log_file.read_bytes()
        lines = whole.splitlines(keepends=True)
        keep = len(lines) - 3
        for note in (h.facts_dir / CHECKPOINT_DIR).glob("*.note"):
            if int(note.name.split(".")[0]) > keep:
                note.unlink()  # no checkpoint was written over what was lost
        if damage == "spoiled":
            zeros = b"\0" * (len(lines[keep]) - 1) + b"\n"
            log_file.write_bytes(b"".join([*lines[:keep], zeros, *lines[keep + 1 :]]))
        else:
            log_file.write_bytes(b"".join(lines[:keep]))

        host = await h.start_host()
        await h.settle()
        assert host.recorder is not None
        assert host.recorder.size >= len(lines)
        assert log_file.read_bytes().startswith(whole)
    h.verify()


async def test_an_idle_agent_keeps_no_outbox_to_publish_again(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # While busy, each batch's save replaces the last outbox; idle, it is dropped, so a
    # restart long after (past JetStream's duplicate window) has nothing to send again.
    async with running_host(tmp_path, components, agents=PAIR) as h:
        await h.inject("build-coord", "hello", hops=2)
        await h.settle()

        async def records() -> list[AgentRecord]:
            return [await h.record(n) for n in PAIR]

        for _ in range(50):
            if not any(r.outbox for r in await records()):
                break
            await asyncio.sleep(0.1)
        assert all(r.calls >= 1 and not r.outbox for r in await records())


async def _copies(js: JetStreamContext, subject: str, msg_id: str) -> list[tuple[int, bytes]]:
    """Every message on ``subject`` that carries ``msg_id``: its stream sequence and data."""
    subscription = await read_in_order(js, subjects=[subject], after_seq=0)
    copies: list[tuple[int, bytes]] = []
    try:
        while True:
            try:
                message = await subscription.next_msg(timeout=1.0)
            except TimeoutError:
                return copies
            if (message.headers or {}).get(MSG_ID_HEADER) == msg_id:
                copies.append((message.metadata.sequence.stream, message.data))
            if not message.metadata.num_pending:
                return copies
    finally:
        await subscription.unsubscribe()


async def test_an_outbox_saved_long_before_a_restart_is_not_published_twice(
    tmp_path: Path, components: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Long before": past JetStream's duplicate window (shortened to 0.2 s here), and
    # past the host's own margin for it (none here); the host first waits for its own
    # view of the window (3 s here, from the save) to be over.
    monkeypatch.setattr(runner_module, "SAFE_REPUBLISH_MS", 0)
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        request = await h.inject("build-coord", "hello", hops=1)
        await h.settle()
        [reply] = h.acts_by("synth-agent")
        await h.stop_host()
        # The host "crashed" right after saving this outbox: the reply (which it did
        # publish) and one more act (which it did not).
        subject = channel_subject("build-coord")
        [(request_seq, _)] = await _copies(h.js, subject, request.id)
        [(_, published)] = await _copies(h.js, subject, reply.id)
        # signed long ago: published now as it is, every host would refuse it as stale
        late = replace(reply, id=new_id("act"), payload="one more", time_ms=now_ms() - 3_600_000)
        forged = replace(late, id=new_id("act"), payload="forged")
        # and one that did reach the stream, but too late to be taken as fresh: every
        # host refuses that copy as stale, so it counts as not there
        landed_late = replace(late, id=new_id("act"), payload="too late")
        landed_envelope = sign_fact(landed_late, h.session.key("synth-agent"))
        await publish_envelope(
            h.js, channel="build-coord", msg_id=landed_late.id, envelope=landed_envelope
        )
        store = await h.record_store("synth-agent")
        saved = await store.load()
        crashed = replace(
            saved,
            outbox=(
                Outgoing(subject, reply.id, published),
                Outgoing(subject, late.id, sign_fact(late, h.session.key("synth-agent"))),
                # and one the agent's key never signed: it is not signed again either
                Outgoing(subject, forged.id, sign_fact(forged, h.session.key("maintainer"))),
                Outgoing(subject, landed_late.id, landed_envelope),
            ),
            last_seq=request_seq,  # the batch that made this outbox
        )
        await store.save(crashed)
        # and JetStream's duplicate window is past
        info = await h.js.stream_info(STREAM)
        await h.js.update_stream(replace(info.config, duplicate_window=0.2))
        await asyncio.sleep(0.5)

        restarted_ms = now_ms()
        assert saved.saved_at_ms is not None and restarted_ms < saved.saved_at_ms + 3000
        monkeypatch.setattr(runner_module, "WINDOW_MS", 3000)  # what comes back: self-echo
        host = await h.start_host()
        await h.settle()
        assert len(await _copies(h.js, subject, reply.id)) == 1
        assert await _copies(h.js, subject, late.id) == []
        assert host.runners["synth-agent"].counters["republish-skipped"] == 1
    recorded = [f.id for f in h.facts()]
    assert recorded.count(reply.id) == 1
    assert request.id in recorded
    # The missing act goes out under a new id, signed when it really goes out: under its
    # own, a first publish landing late would be kept and this one dropped.
    [sent] = [a for a in h.acts_by("synth-agent") if a.payload == "one more"]
    assert sent.id != late.id
    assert sent.time_ms >= saved.saved_at_ms + 3000  # not before the window was over
    assert (sent.in_reply_to, sent.conversation) == (late.in_reply_to, late.conversation)
    assert forged.id not in recorded
    # the late copy is a fact like any other (and refused by every host as stale); the
    # act went out again under a new id
    too_late = [a for a in h.acts_by("synth-agent") if a.payload == "too late"]
    assert [a.id for a in too_late].count(landed_late.id) == 1
    [again] = [a for a in too_late if a.id != landed_late.id]
    assert again.time_ms >= saved.saved_at_ms + 3000


async def test_a_record_is_signed_by_its_agent_and_one_written_by_others_is_not_trusted(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        request = await h.inject("build-coord", "hello", hops=1)
        await h.settle()
        await h.stop_host()
        store = await h.record_store("synth-agent")
        saved = await store.load()
        kv = await h.js.key_value(AGENTS_BUCKET)
        stored = (await kv.get("synth-agent")).value or b""
        # Anyone able to write the bucket: a changed byte, or another key's signature
        for spoiled in (
            stored.replace(b'"calls":', b'"calls":9'),
            stored.rpartition(b"\n")[0] + b"\n" + b"A" * 88,
        ):
            await kv.put("synth-agent", spoiled)
            with pytest.raises(MalformedEnvelope, match="not signed by its key"):
                await store.load()
        # A record signed over its whole JSON (as saved before records were signed over
        # its digest) is read with its outbox; the same signature over other bytes is not
        body = saved.encode()
        older = base64.b64encode(h.session.key("synth-agent").sign(pae(RECORD_TYPE, body)))
        await kv.put("synth-agent", body + b"\n" + older)
        assert await store.load() == saved
        await kv.put("synth-agent", body.replace(b'"calls":', b'"calls":9') + b"\n" + older)
        with pytest.raises(MalformedEnvelope, match="not signed by its key"):
            await store.load()
        # A record signed by its key that this host cannot read (another version's, say):
        # nothing in it can be used either
        broken = b'{"state":"", "calls": 1'
        signature = base64.b64encode(h.session.key("synth-agent").sign(signed_part(broken)))
        await kv.put("synth-agent", broken + b"\n" + signature)
        with pytest.raises(UntrustedRecord, match="cannot be read"):
            await store.load()
        # An unsigned record (whoever wrote it could plant budgets, ids and state in it)
        # is refused too: a host starts, but not that agent, which it quarantines
        planted = replace(saved, conversations={"conv-x": 1_000_000})
        await kv.put("synth-agent", planted.encode())
        with pytest.raises(MalformedEnvelope, match="unsigned"):
            await store.load()
        host = await h.start_host()
        await host.killswitch.wait_for(lambda s: s.blocks_agent("synth-agent"))
        assert host.runners["synth-agent"]._task is None  # never started
        assert host.recorder is not None  # the rest of the host runs
        await h.inject("build-coord", "anyone?", hops=1)
        await asyncio.sleep(0.5)
        assert [d.act.id for d in h.deliveries] == [request.id]
    assert request.id in {f.id for f in h.facts()}
    [fault] = h.events(EventKind.FAULT, agent="synth-agent")
    assert fault.reason == "record" and "unsigned" in fault.detail


async def test_an_outbox_too_large_for_one_record_is_saved_in_parts_it_names(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        await h.inject("build-coord", "hello", hops=1)
        await h.settle()
        await h.stop_host()
        kv = await h.js.key_value(AGENTS_BUCKET)
        key = h.session.key("synth-agent")

        def store() -> RecordStore:  # a host whose server takes 4 KiB per message
            return RecordStore(h.js, kv, "synth-agent", max_bytes=4096, key=key)

        async def parts() -> list[str]:
            await writer.close()  # the purges under way done
            return await h.outbox_parts("synth-agent")

        writer = store()
        saved = await writer.load()
        outbox = _padded("n", 12)
        big = replace(saved, outbox=outbox)
        await writer.save(big)
        put = await parts()
        assert len(put) >= 3  # some 10 KB of outbox in parts of at most 4 KiB
        sizes = [len((await kv.get(k)).value or b"") for k in put]
        assert max(sizes) <= 4096
        assert await store().load() == big  # read back whole, in order, by another host
        # a part changed, or gone, and the record is not one a host wrote
        first = (await kv.get(put[0])).value or b""
        await kv.put(put[0], first.replace(b"act-", b"act_"))
        with pytest.raises(UntrustedRecord, match="not the one its record names"):
            await store().load()
        await kv.delete(put[0])
        with pytest.raises(UntrustedRecord, match="is gone"):
            await store().load()
        await kv.put(put[0], first)
        # the next save, its outbox small, deletes the parts nothing names any more
        await writer.save(replace(big, outbox=outbox[:1]))
        assert await parts() == []
        bucket = await h.js.stream_info(f"KV_{AGENTS_BUCKET}")
        assert bucket.state.messages == 1  # the record alone: the parts left no marker
        assert (await store().load()).outbox == outbox[:1]
        # more than the parts allowed is refused before anything is put, and so is one
        # output larger than a part, each saying what did not fit
        with pytest.raises(RecordTooLarge, match="its outbox \\(120 outputs\\)") as refused:
            await writer.save(replace(big, outbox=outbox * 10))
        assert refused.value.limit == 4096 * MAX_OUTBOX_PARTS
        huge = Outgoing("agora.ch.build-coord", "act-huge", b'{"pad":"%s"}' % (b"z" * 5000))
        with pytest.raises(RecordTooLarge, match="one of its outputs takes 6") as refused:
            await writer.save(replace(big, outbox=(*outbox, huge)))
        assert refused.value.limit == 4096
        assert await parts() == []
        assert (await store().load()).outbox == outbox[:1]
        # a part the saved record names already is named again, not put again
        await writer.save(big)
        named = await parts()
        messages = (await h.js.stream_info(f"KV_{AGENTS_BUCKET}")).state.messages
        await writer.save(replace(big, calls=big.calls + 1))
        assert await parts() == named
        assert (await h.js.stream_info(f"KV_{AGENTS_BUCKET}")).state.messages == messages
        # a part a crash left behind is swept once the bucket took a record after it
        # (before, it may be another host's save under way); a part the record names
        # never is
        left = part_key("synth-agent", "ab" * 16)
        await kv.put(left, b"[]")
        assert await writer.sweep() == 0  # maybe another host's save under way
        await writer.save(big)
        assert await writer.sweep() == 1
        assert await parts() == named
        assert await store().load() == big


async def _crashed_with_unsent(
    h: Harness, payloads: list[str], *, max_bytes: int | None = None
) -> list[Act]:
    """synth-agent replies once, its host stops, and its record is saved as a host that
    crashed before publishing would have left it: with replies carrying ``payloads`` in
    its outbox (``max_bytes``: a server that takes that much per message)."""
    await h.inject("build-coord", "hello", hops=16)
    await h.settle()
    [reply] = h.acts_by("synth-agent")
    await h.stop_host()
    store = await h.record_store("synth-agent", max_bytes=max_bytes)
    saved = await store.load()
    unsent = [replace(reply, id=new_id("act"), payload=p, time_ms=now_ms()) for p in payloads]
    subject = channel_subject("build-coord")
    key = h.session.key("synth-agent")
    outbox = tuple(Outgoing(subject, a.id, sign_fact(a, key)) for a in unsent)
    await store.save(replace(saved, outbox=outbox, saved_at_ms=now_ms()))
    return unsent


async def test_an_outbox_saved_in_parts_before_a_crash_goes_out_once_on_restart(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        # The host "crashed" right after saving a batch's outbox, too large for one
        # message to the server (4 KiB here), in parts, before publishing any of it
        payloads = [f"more {n} " + "z" * 500 for n in range(12)]
        more = await _crashed_with_unsent(h, payloads, max_bytes=4096)
        subject = channel_subject("build-coord")
        assert len(await h.outbox_parts("synth-agent")) >= 3
        await h.start_host()
        await h.settle()
        for act in more:
            assert len(await _copies(h.js, subject, act.id)) == 1
        await h.stop_host()  # the agent idle, its record drops the outbox and its parts
        assert await h.outbox_parts("synth-agent") == []
    recorded = [f.id for f in h.facts()]
    assert all(recorded.count(act.id) == 1 for act in more)


async def test_an_outbox_saved_before_a_kill_goes_out_without_what_the_kill_stops(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        # The host "crashed" right after saving a batch's outbox, before publishing it;
        # an operator killed the channel before it came back
        [unsent] = await _crashed_with_unsent(h, ["after the kill?"])
        subject = channel_subject("build-coord")
        await h.switch(EventKind.KILLED, channel="build-coord")
        host = await h.start_host()
        await h.settle()
        assert await _copies(h.js, subject, unsent.id) == []
        assert host.runners["synth-agent"].counters["discarded-by-kill"] == 1
    [notice] = [e for e in h.events(EventKind.REFUSED) if e.reason == "discarded-by-kill"]
    assert notice.agent == "synth-agent" and "1 of them" in notice.detail


async def test_a_load_that_meets_a_part_just_purged_reads_the_newer_record(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        kv = await h.js.key_value(AGENTS_BUCKET)
        writer = _ghost_store(h, kv)
        first = AgentRecord(outbox=_padded("first", 12))
        second = AgentRecord(outbox=_padded("second", 12), calls=2)
        await writer.save(first)

        class Racing:
            """The bucket as a second host sees it while the writer saves meanwhile:
            between its read of the record and of the record's first part."""

            raced = False

            async def get(self, wanted: str) -> Any:
                if ".outbox." in wanted and not self.raced:
                    self.raced = True
                    await writer.save(second)  # and purges the first record's parts
                    await writer.close()
                return await kv.get(wanted)

        reader = _ghost_store(h, Racing())  # type: ignore[arg-type]
        assert await reader.load() == second


async def test_a_save_that_loses_to_another_hosts_purges_nothing_the_winner_names(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # Two hosts issue the very same outbox (as after a crash, both publishing it again)
    # and save it at the same revision: the loser's conflict must leave the parts the
    # winner's record names.
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        kv = await h.js.key_value(AGENTS_BUCKET)
        first, second = _ghost_store(h, kv), _ghost_store(h, kv)
        await first.save(AgentRecord(calls=1))
        await first.load()
        await second.load()
        same = AgentRecord(outbox=_padded("same", 12), calls=2)
        await first.save(same)
        with pytest.raises(RecordConflict, match="changed since this host read it"):
            await second.save(same)
        await second.close()  # its purges done
        assert await _ghost_store(h, kv).load() == same
        # the same bytes twice in one outbox: one part, put once, named twice
        twin = Outgoing("agora.ch.build-coord", "act-twin", b'{"pad":"%s"}' % (b"z" * 1150))
        twins = AgentRecord(outbox=(twin, twin, twin, twin), calls=3)
        await first.save(twins)
        await first.close()  # the purges of the parts it no longer names done
        assert len(await first.part_keys()) == 1
        assert await _ghost_store(h, kv).load() == twins
        await first.save(AgentRecord(calls=4))
        await first.close()
        assert await first.part_keys() == []


def _ghost_store(h: Harness, kv: KeyValue) -> RecordStore:
    """A store, on a server taking 4 KiB per message, for an agent no host runs."""
    return RecordStore(h.js, kv, "ghost", max_bytes=4096, key=h.session.key("synth-agent"))


def _padded(name: str, count: int) -> tuple[Outgoing, ...]:
    return tuple(
        Outgoing("agora.ch.build-coord", f"act-{name}-{n}", b'{"pad":"%s"}' % (b"z" * 600))
        for n in range(count)
    )


async def test_a_record_spoiled_while_its_agent_runs_quarantines_it(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        await h.inject("build-coord", "hello", hops=1)
        await h.settle()
        kv = await h.js.key_value(AGENTS_BUCKET)
        saved = await (await h.record_store("synth-agent")).load()
        # written under the host: its next save conflicts, and what it reads is no record
        # a host wrote
        await kv.put("synth-agent", replace(saved, calls=99).encode())
        later = await h.inject("build-coord", "after", hops=1)
        host = h.running()
        await host.killswitch.wait_for(lambda s: s.blocks_agent("synth-agent"))
        runner = host.runners["synth-agent"]
        await asyncio.wait_for(asyncio.shield(runner._task), 10)  # it stopped taking
        assert host.status()["agents"]["synth-agent"]["state"] == "quarantined"
        consumer = await h.js.consumer_info(STREAM, agent_consumer_name("synth-agent"))
        assert consumer.num_ack_pending == 1  # the batch stays for when it is put right
    # the call's outputs went nowhere: nothing was saved or published from that record
    assert later.id not in {a.in_reply_to for a in h.acts_by("synth-agent")}
    faults = h.events(EventKind.FAULT, agent="synth-agent")
    assert [f.reason for f in faults] == ["record"] and "unsigned" in faults[0].detail


async def test_kills_survive_a_restart_and_resume_undoes_them(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents=PAIR) as h:
        await h.switch(EventKind.KILLED, channel="build-coord")
        await h.running().killswitch.wait_for(lambda s: s.blocks("synth-agent", "build-coord"))
        await h.stop_host()
        host = await h.start_host()
        assert host.killswitch.state.blocks("relay-agent", "build-coord")
        silenced = await h.inject("build-coord", "anyone?", hops=2)
        await h.settle()
        assert h.deliveries == []
        assert host.runners["synth-agent"].counters["killed"] == 1

        await h.switch(EventKind.RESUMED, channel="build-coord")
        await host.killswitch.wait_for(lambda s: not s.stopped)
        heard = await h.inject("build-coord", "back?", hops=1)
        await h.settle()
        assert {d.act.id for d in h.deliveries} == {heard.id}
    # The kill discarded the message; resuming does not replay it.
    assert silenced.id not in {d.act.id for d in h.deliveries}
    kinds = [e.kind for e in h.events(EventKind.KILLED)] + [
        e.kind for e in h.events(EventKind.RESUMED)
    ]
    assert kinds == [EventKind.KILLED, EventKind.RESUMED]


async def test_kill_one_agent_or_everything(tmp_path: Path, components: dict[str, Path]) -> None:
    async with running_host(tmp_path, components, agents=PAIR) as h:
        host = h.running()
        await h.switch(EventKind.KILLED, agent="relay-agent")
        await host.killswitch.wait_for(lambda s: s.blocks_agent("relay-agent"))
        first = await h.inject("build-coord", "one", hops=1)
        await h.settle()
        assert [d.agent for d in h.deliveries if d.act.id == first.id] == ["synth-agent"]

        await h.switch(EventKind.KILLED)
        await host.killswitch.wait_for(lambda s: s.blocks_agent("synth-agent"))
        second = await h.inject("build-coord", "two", hops=1)
        await h.settle()
        assert second.id not in {d.act.id for d in h.deliveries}


async def test_only_signed_privileged_switches_count(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents=PAIR) as h:
        host = h.running()
        control = await h.js.key_value("agora-control")
        await control.put("all", b'{"kind":"killed"}')  # no signature: ignored
        await h.switch(EventKind.KILLED, channel="build-coord", by="synth-agent")  # an agent
        await h.switch(EventKind.KILLED, agent="relay-agent")  # the real thing, last
        await host.killswitch.wait_for(lambda s: s.blocks_agent("relay-agent"))
        assert set(host.killswitch.state.stopped) == {"agent.relay-agent"}


def _each_delivered_once(h: Harness) -> None:
    delivered = Counter((e.agent, s) for e, s in h.per_subject(EventKind.DELIVERED))
    assert delivered
    assert max(delivered.values()) == 1


async def test_deleting_or_spoiling_a_kill_does_not_lift_it(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents=PAIR) as h:
        await h.switch(EventKind.KILLED, channel="build-coord")
        await h.running().killswitch.wait_for(lambda s: s.blocks("synth-agent", "build-coord"))
        control = await h.js.key_value("agora-control")
        # no key is needed to delete a value, or to put another: each is seen running,
        # and again by a host that starts afterwards (a number too long for Python to
        # read too)
        for spoiled in (None, b"junk", b"1" * 5000):
            if spoiled is None:
                await control.delete("channel.build-coord")
            else:
                await control.put("channel.build-coord", spoiled)
            await asyncio.sleep(0.2)
            assert h.running().killswitch.state.blocks("synth-agent", "build-coord")
            await h.stop_host()
            host = await h.start_host()
            assert host.killswitch.state.blocks("synth-agent", "build-coord"), spoiled
        await h.inject("build-coord", "still killed?", hops=1)
        await h.settle()
        assert h.deliveries == []


async def test_an_old_switch_put_back_or_one_under_another_name_changes_nothing(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents=PAIR) as h:
        control = await h.js.key_value("agora-control")
        key = "agent.relay-agent"
        await h.switch(EventKind.KILLED, agent="relay-agent")
        await h.switch(EventKind.RESUMED, agent="relay-agent")
        await h.switch(EventKind.KILLED, agent="relay-agent")
        host = h.running()
        await host.killswitch.wait_for(lambda s: s.blocks_agent("relay-agent"))
        history = await bucket_history(h.js, "agora-control", key)
        [first_kill, resume, _] = [entry.value or b"" for entry in history]
        # a resume signed before the kill in force, put back by anyone who can write
        await control.put(key, resume)
        await asyncio.sleep(0.3)
        assert host.killswitch.state.blocks_agent("relay-agent")
        await h.stop_host()
        host = await h.start_host()
        assert host.killswitch.state.blocks_agent("relay-agent")
        # once resumed, an old kill put back stops nothing either
        await h.switch(EventKind.RESUMED, agent="relay-agent")
        await host.killswitch.wait_for(lambda s: not s.stopped)
        await control.put(key, first_kill)
        await asyncio.sleep(0.3)
        assert not host.killswitch.state.stopped
        # a kill whose actor is not its signer (the host signing for the operator)
        forged = Event(
            id=new_id("ev"),
            kind=EventKind.KILLED,
            actor="maintainer",
            time_ms=now_ms(),
            reason="kill",
            agent="relay-agent",
        )
        await control.put(key, sign_fact(forged, h.session.key("host")))
        await asyncio.sleep(0.3)
        assert not host.killswitch.state.stopped
        await h.stop_host()
        host = await h.start_host()
        assert not host.killswitch.state.stopped
        heard = await h.inject("build-coord", "back?", hops=1)
        await h.settle()
        assert {d.agent for d in h.deliveries if d.act.id == heard.id} == set(PAIR)


async def test_the_bridge_lifts_its_own_kills_not_an_operators(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # A kill label taken off an issue resumes what the label killed, never a kill
    # an operator set from the command line.
    bridge = {"bridge": (Role.BRIDGE, ["build-coord"])}
    async with running_host(tmp_path, components, agents=PAIR, others=bridge) as h:
        host = h.running()
        await h.switch(EventKind.KILLED, channel="build-coord")
        await host.killswitch.wait_for(lambda s: s.blocks("synth-agent", "build-coord"))
        await h.switch(EventKind.RESUMED, channel="build-coord", by="bridge")
        await asyncio.sleep(0.3)
        assert host.killswitch.state.blocks("synth-agent", "build-coord")
        await h.stop_host()
        host = await h.start_host()
        assert host.killswitch.state.blocks("synth-agent", "build-coord")
        # the label added on top of the operator's kill, then taken off: the operator's
        # kill stays in force (the label's kill does not make it the bridge's)
        await h.switch(EventKind.KILLED, channel="build-coord", by="bridge")
        await h.switch(EventKind.RESUMED, channel="build-coord", by="bridge")
        await asyncio.sleep(0.3)
        assert host.killswitch.state.blocks("synth-agent", "build-coord")
        assert host.killswitch.state.stopped["channel.build-coord"].actor == "maintainer"
        await h.stop_host()
        host = await h.start_host()  # read back from the bucket's history, the same
        assert host.killswitch.state.blocks("synth-agent", "build-coord")
        await h.switch(EventKind.RESUMED, channel="build-coord")  # the operator's
        await host.killswitch.wait_for(lambda s: not s.stopped)
        await h.switch(EventKind.KILLED, channel="build-coord", by="bridge")
        await host.killswitch.wait_for(lambda s: s.blocks("synth-agent", "build-coord"))
        await h.switch(EventKind.RESUMED, channel="build-coord", by="bridge")
        await host.killswitch.wait_for(lambda s: not s.stopped)


async def test_a_message_nested_too_deeply_is_refused_and_the_record_goes_on(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    async with running_host(tmp_path, components, agents=PAIR) as h:
        await h.js.publish("agora.ch.build-coord", b"[" * 100_000)
        after = await h.inject("build-coord", "after the bomb", hops=1)
        await h.settle()
        assert {d.act.id for d in h.deliveries} == {after.id}
    assert after.id in {f.id for f in h.facts()}
    assert any(e.reason == "unverified" for e in h.events(EventKind.REFUSED))


async def test_the_host_rides_out_a_nats_server_restart(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = create_workspace(tmp_path, channels=("build-coord",), agents=PAIR)
    session = open_session(config)
    server = EmbeddedNats(data_dir=tmp_path / "nats", port=port)
    await server.start()
    try:
        async with connected(server.url, reconnect=True) as client:
            h = Harness(session=session, client=client, components=components)
            await h.start_host()
            await h.inject("build-coord", "before", hops=1)
            await h.settle()
            await server.stop()  # the server goes away under the running host ...
            await asyncio.sleep(1.0)
            await server.start()  # ... and comes back on the same port and store
            for _ in range(300):
                if client.is_connected:
                    break
                await asyncio.sleep(0.1)
            after = await h.inject("build-coord", "after", hops=1)
            for _ in range(100):
                if after.id in {d.act.id for d in h.deliveries}:
                    break
                await asyncio.sleep(0.1)
            assert {d.act.payload for d in h.deliveries} == {"before", "after"}
            assert all(
                r._task is not None and not r._task.done() for r in h.running().runners.values()
            )
            await h.settle()
            await h.stop_host()
    finally:
        await server.stop()
    h.verify()
    assert after.id in {f.id for f in h.facts()}  # the recorder rode it out too


async def test_a_host_that_fails_to_start_stops_what_it_started(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    """The relay's component cannot be loaded: by then the recorder, the kill switch and
    the signature helper run. They are stopped again and the facts directory unlocked,
    so the host can start again in the same process once it is put right."""
    broken = tmp_path / "broken.wasm"
    broken.write_bytes(b"\0asm not a component")
    async with running_host(tmp_path, components, agents=PAIR, start=False) as h:
        h.components = {**components, "chatty": broken}
        with pytest.raises(Exception, match=r"broken\.wasm"):
            await h.start_host()
        with FactLog.open(h.facts_dir, signer=h.session.key("host")):
            pass  # not locked by the recorder of the failed start
        h.components = components
        await h.start_host()
        await h.inject("build-coord", "after the failed start")
        await h.settle()
        assert len(h.acts_by("relay-agent")) >= 1


async def test_a_stop_step_that_fails_leaves_every_other_part_stopped(
    tmp_path: Path, components: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        request = await h.inject("build-coord", "before the stop", hops=1)
        await h.settle()
        host = h.running()

        async def stuck(self: KillSwitch) -> None:
            raise RuntimeError("the kill switch would not stop")

        monkeypatch.setattr(KillSwitch, "stop", stuck)
        with pytest.raises(RuntimeError, match="would not stop"):
            await host.stop()
        monkeypatch.undo()
        h.host = None  # stopped, the kill switch's error apart
        assert not host._ticker._thread.is_alive()  # the steps after it ran
        # the recorder closed its log (checkpointed, its lock let go): a new host records
        await h.start_host()
        later = await h.inject("build-coord", "after", hops=1)
        await h.settle()
    recorded = {f.id for f in h.facts()}
    assert {request.id, later.id} <= recorded


async def test_a_recorder_whose_reading_ended_with_an_error_still_checkpoints_at_its_stop(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        request = await h.inject("build-coord", "recorded", hops=1)
        await h.settle()
        host = h.running()
        recorder = host.recorder
        assert recorder is not None
        await cancel(recorder._task)

        async def failed() -> None:
            raise RuntimeError("the reading ended")

        recorder._task = asyncio.create_task(failed())
        await asyncio.wait({recorder._task})
        with pytest.raises(RuntimeError, match="the reading ended"):
            await host.stop()
        h.host = None  # stopped, the recorder's error apart
        # its log was checkpointed over every fact, and let go: a new host records
        recorded = h.facts()
        assert request.id in {f.id for f in recorded}
        assert (h.facts_dir / CHECKPOINT_DIR / checkpoint_name(len(recorded))).exists()
        await h.start_host()
        later = await h.inject("build-coord", "after", hops=1)
        await h.settle()
    assert later.id in {f.id for f in h.facts()}


async def test_a_position_that_cannot_be_saved_costs_the_recorder_nothing_but_a_retry(
    tmp_path: Path, components: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not saving it only makes a restart read again what the log already holds.
    write = recorder_module.write_position
    refused: list[int] = []

    def full_once(path: Path, position: recorder_module.Position) -> None:
        if not refused:
            refused.append(position.seq)
            raise OSError(28, "No space left on device")
        write(path, position)

    monkeypatch.setattr(recorder_module, "write_position", full_once)
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        first = await h.inject("build-coord", "first", hops=1)
        await h.settle()
        later = await h.inject("build-coord", "later", hops=1)
        await h.settle()
        recorder = h.running().recorder
        assert recorder is not None and recorder.failure is None and refused
        await h.stop_host()
        saved = recorder_module.read_position(h.facts_dir / POSITION_FILE)
        assert saved.seq == recorder.position > refused[0]
    assert {first.id, later.id} <= {f.id for f in h.facts()}


async def test_an_agent_whose_loop_failed_still_lets_go_of_its_feed_at_a_stop(
    tmp_path: Path,
    components: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(self: WatchedSandbox) -> None:
        raise RuntimeError("the guest could not start")

    monkeypatch.setattr(WatchedSandbox, "start", broken)
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        runner = h.running().runners["synth-agent"]
        assert runner._task is not None
        await asyncio.wait({runner._task}, timeout=5)
        assert isinstance(runner._task.exception(), RuntimeError)  # its loop ended
        # said at once, not only at the stop
        assert runner.counters["loop-failed"] == 1
        assert any(
            r.levelname == "CRITICAL" and "its loop ended with an error" in r.getMessage()
            for r in caplog.records
        )
        feed = runner._feed
        assert feed is not None
        await h.stop_host()  # the error is told (logged), the rest goes on
        assert feed._subscription is None  # its feed was stopped all the same


async def test_an_agents_key_rotated_between_runs_keeps_its_record_and_every_fact_verifies(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        await h.inject("build-coord", "before the rotation", hops=1)
        await h.settle()
        await h.stop_host()
        before = await h.record("synth-agent")
        config = h.session.config
        rotate = [
            *("keys", "rotate", "synth-agent", "--facts-dir", config.facts_dir),
            *("--registry", config.registry, "--keys-dir", config.keys_dir),
        ]
        rotated = await asyncio.to_thread(
            subprocess.run,
            [Path(sys.executable).parent / "agora", *rotate],
            capture_output=True,
            text=True,
            check=False,
        )
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        entries = len(read_facts(config.facts_dir))
        assert f"stays valid for entries 0-{entries - 1} of" in rotated.stdout
        old_key = next(config.keys_dir.glob("synth-agent.key.retired-*"))
        old = read_private_key_file(old_key, "synth-agent")
        h.session = open_session(config.path)
        assert h.session.key("synth-agent").public_key != old.public_key

        host = await h.start_host()  # its record, signed with the old key, is read
        after = await h.inject("build-coord", "after the rotation", hops=1)
        forged = make_act(sender="synth-agent", payload="signed with its old key", hops=1)
        await publish_envelope(
            h.js, channel="build-coord", msg_id=forged.id, envelope=sign_fact(forged, old)
        )
        await h.settle()
        assert host.runners["synth-agent"].counters["unverified"] == 1
        record = await h.record("synth-agent")  # saved again, under the new key
        await h.stop_host()
        # whoever still has the old key (and may write the bucket) cannot plant a record
        # signed with it now: it is stored after the key was retired
        kv = await h.js.key_value(AGENTS_BUCKET)
        limit = h.client.max_payload
        old_store = RecordStore(h.js, kv, "synth-agent", max_bytes=limit, key=old)
        await kv.put("synth-agent", old_store._signed(replace(record, calls=0).encode()))
        retired = h.session.registry.get("synth-agent").retired
        store = RecordStore(
            h.js,
            kv,
            "synth-agent",
            max_bytes=limit,
            key=h.session.key("synth-agent"),
            retired_keys=retired,
        )
        with pytest.raises(UntrustedRecord, match="retired before the record was stored"):
            await store.load()
    assert record.calls == before.calls + 1
    assert h.acts_by("synth-agent")[-1].in_reply_to == after.id
    assert forged.id not in {f.id for f in h.facts()}
    h.verify()  # the old key's facts under the registry that retired it


async def test_a_recorder_refuses_a_position_in_a_stream_that_is_gone(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # The server's store reset (here: the stream deleted): its sequences start again at
    # 1, so a recorder that read on from its saved place would wait for good for a
    # message the new stream has not reached, recording nothing and saying nothing.
    one = {"synth-agent": PAIR["synth-agent"]}
    async with running_host(tmp_path, components, agents=one) as h:
        await h.inject("build-coord", "before the reset", hops=1)
        await h.settle()
        await h.stop_host()
        recorded = len(h.facts())
        await h.js.delete_stream(STREAM)
        with pytest.raises(ConfigError, match="the server's store was reset") as refused:
            await h.start_host()
        assert str(h.facts_dir / POSITION_FILE) in str(refused.value)
        assert len(h.facts()) == recorded  # nothing changed
        # as a recorder wrote it before it named the stream: its sequence tells
        position = h.facts_dir / POSITION_FILE
        position.write_text(" ".join(position.read_text().split()[:2]) + "\n")
        with pytest.raises(ConfigError, match="while recording a longer stream"):
            await h.start_host()

        (h.facts_dir / POSITION_FILE).unlink()  # as the error says, to go on in this log
        await h.start_host()
        after = await h.inject("build-coord", "after the reset", hops=1)
        await h.settle()
    assert after.id in {f.id for f in h.facts()}
    assert len(h.facts()) > recorded
    h.verify()
