"""The host's pure pieces: the agent record, the kill switch's keys and state, faults."""

from __future__ import annotations

import base64
import gc
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agora.core.control import control_key
from agora.core.envelope import Event, EventKind
from agora.core.errors import ConfigError, InputError, InvalidChannel, MalformedEnvelope
from agora.core.factlog import FactLog
from agora.core.keys import KeyRegistry, SigningKey
from agora.core.signing import sign_fact
from agora.core.verify import verify_directory
from agora.host.agent_record import (
    MAX_RECENT,
    AgentRecord,
    OutboxPart,
    Outgoing,
    decode_part,
    encode_parts,
    part_key,
)
from agora.host.config import without_credentials
from agora.host.controls import Handed
from agora.host.killswitch import KillState
from agora.host.recorder import Position, read_position, write_position
from agora.host.sandbox import classify_fault
from agora.host.service import startup_heap_frozen


def test_an_agent_record_round_trips_and_stays_bounded() -> None:
    record = AgentRecord()
    for batch in range(600):
        record = record.finished(
            state=b"\x00\xffstate",
            last_seq=batch,
            ids=[f"m{batch}"],
            parents={f"m{batch}": Handed(3, f"c{batch}")},
            conversations={f"c{batch}": 3},
            wake_at_ms=batch,
            outbox=(Outgoing("agora.ch.x", f"a{batch}", b'{"e":1}'),),
            at_ms=1_700_000_000_000 + batch,
        )
    assert len(record.recent) == MAX_RECENT
    assert record.recent[-1] == "m599"
    assert len(record.parents) <= 256 and record.parents["m599"] == Handed(3, "c599")
    assert list(record.conversations)[-1] == "c599"
    spent = record.finished(
        state=b"",
        last_seq=600,
        ids=[],
        parents={"m500": Handed(1, "c500")},
        conversations={"c450": 2},
        wake_at_ms=None,
        outbox=(),
        at_ms=1_700_000_000_600,
    )
    assert spent.parents["m500"] == Handed(1, "c500")  # a spent budget stays spent
    assert list(spent.parents)[-1] == "m500" and list(spent.conversations)[-1] == "c450"
    assert AgentRecord.decode(record.encode()) == record
    assert record.saved_at_ms == 1_700_000_000_599
    assert record.sent().outbox == ()
    older = json.loads(record.encode())
    del older["saved_at_ms"]  # a record saved before the field existed still reads
    assert AgentRecord.decode(json.dumps(older).encode()).saved_at_ms is None
    older["parents"] = {"m1": 3}  # saved before a parent kept its conversation
    assert AgentRecord.decode(json.dumps(older).encode()).parents == {"m1": Handed(3, "")}
    older["parents"] = {"m1": [3]}
    with pytest.raises(MalformedEnvelope, match=r"a parent must be \[hops, conversation\]"):
        AgentRecord.decode(json.dumps(older).encode())


def test_an_agent_record_keeps_every_unconfirmed_id_past_the_recent_window() -> None:
    def batch(record: AgentRecord, ids: list[str], confirmed: set[str]) -> AgentRecord:
        return record.finished(
            state=b"",
            last_seq=0,
            ids=ids,
            parents={},
            conversations={},
            wake_at_ms=None,
            outbox=(),
            at_ms=0,
            confirmed=confirmed,
        )

    # a batch saved, its acknowledgement never confirmed (a crash), then 600 more
    record = batch(AgentRecord(), ["lost-ack"], set())
    for n in range(600):
        record = batch(record, [f"m{n}"], {f"m{n - 1}"})
    assert "lost-ack" not in record.recent  # past the window of recent ids
    assert record.unacked == ("lost-ack", "m599")  # but still known as processed
    assert AgentRecord.decode(record.encode()).unacked == record.unacked
    assert record.sent({"m599"}).unacked == ("lost-ack",)
    older = json.loads(record.encode())
    del older["unacked"]  # a record saved before the field existed still reads
    assert AgentRecord.decode(json.dumps(older).encode()).unacked == ()


def test_an_agent_record_reads_the_forms_saved_before() -> None:
    envelope = b'{"payload":"eyJ2IjoyfQ==","payloadType":"t","signatures":[]}'
    record = AgentRecord(
        recent=("m1", "m2"),
        unacked=("m2",),
        parents={"m1": Handed(2, "c1"), "m2": Handed(1, "")},
        conversations={"c1": 2},
        outbox=(Outgoing("agora.ch.x", "act-1", envelope),),
    )
    saved = json.loads(record.encode())
    assert saved["recent"] == "m1 m2" and saved["parents"] == ["m1 m2", [2, 1], "c1 ."]
    assert saved["outbox"] == [["agora.ch.x", "act-1", base64.b64encode(envelope).decode()]]
    saved.update(  # lists and mappings, an envelope as its JSON text
        recent=["m1", "m2"],
        unacked=["m2"],
        parents={"m1": [2, "c1"], "m2": [1, ""]},
        conversations={"c1": 2},
        outbox=[["agora.ch.x", "act-1", envelope.decode()]],
    )
    assert AgentRecord.decode(json.dumps(saved).encode()) == record
    saved["outbox"][0][2] = 7
    with pytest.raises(MalformedEnvelope, match="an outbox envelope must be a string"):
        AgentRecord.decode(json.dumps(saved).encode())


@given(
    names=st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True), max_size=40),
    hops=st.integers(0, 32),
)
def test_an_agent_record_of_names_round_trips_through_its_json(names: list[str], hops: int) -> None:
    record = AgentRecord(
        recent=tuple(names),
        unacked=tuple(names[:3]),
        parents={n: Handed(hops, n) for n in names},
        conversations=dict.fromkeys(names, hops),
    )
    assert AgentRecord.decode(record.encode()) == record


@pytest.mark.parametrize(
    "ids", [('quote"back\\slash', "\x01"), ("a b", "c"), ("", "d"), ("\x1c", "e")]
)
def test_an_agent_record_with_an_id_that_is_no_name_still_round_trips(
    ids: tuple[str, ...],
) -> None:
    record = AgentRecord(recent=ids, parents={i: Handed(1, i) for i in ids})
    assert json.loads(record.encode())["recent"] == list(ids)
    assert AgentRecord.decode(record.encode()) == record


@pytest.mark.parametrize(
    "parents",
    [["m1", [1, 2], "c1 c2"], ["m1", [1], "c1 c2"], ["m1", 3, "c1"], "m1"],
)
def test_an_agent_record_whose_budgets_do_not_line_up_is_refused(parents: object) -> None:
    saved = json.loads(AgentRecord().encode())
    saved["parents"] = parents
    with pytest.raises(MalformedEnvelope, match="agent record is unreadable"):
        AgentRecord.decode(json.dumps(saved).encode())


def test_an_outbox_in_parts_round_trips_in_order_within_the_size() -> None:
    outbox = tuple(
        Outgoing("agora.ch.c", f"act-{n}", bytes([n]) * (100 + 37 * n)) for n in range(20)
    )
    parts = encode_parts(outbox, 1500)
    assert len(parts) > 1 and all(len(part) <= 1500 for part in parts)
    assert tuple(o for part in parts for o in decode_part(part)) == outbox
    with pytest.raises(ValueError, match="outbox envelope takes"):
        encode_parts(outbox, 200)  # the last envelope alone does not fit
    place = OutboxPart(part_key("echo-agent", "0f" * 16), "0f" * 32)
    record, parts_named = AgentRecord.decode_with_parts(AgentRecord(calls=3).encode([place]))
    assert record == AgentRecord(calls=3) and parts_named == (place,)


@pytest.mark.parametrize(
    "place",
    [["a.outbox.>", "0" * 64], ["a.*", "0" * 64], ["a.outbox." + "0" * 32, "0" * 63], "a", [1, 2]],
)
def test_an_agent_record_naming_a_part_wrongly_is_refused(place: object) -> None:
    saved = json.loads(AgentRecord().encode())
    saved["outbox_parts"] = [place]
    with pytest.raises(MalformedEnvelope, match="agent record is unreadable"):
        AgentRecord.decode(json.dumps(saved).encode())


@pytest.mark.parametrize("wake", ["Infinity", "NaN", "1.5", "true", '"5"'])
def test_an_agent_record_whose_wake_time_is_no_whole_number_is_refused(wake: str) -> None:
    saved = (
        AgentRecord(wake_at_ms=5)
        .encode()
        .replace(b'"wake_at_ms":5', f'"wake_at_ms":{wake}'.encode())
    )
    assert saved != AgentRecord(wake_at_ms=5).encode()
    with pytest.raises(MalformedEnvelope, match="agent record is unreadable"):
        AgentRecord.decode(saved)


@pytest.mark.parametrize("data", [b"", b"{}", b"[1]", b'{"state": 3}'])
def test_an_unreadable_agent_record_is_refused(data: bytes) -> None:
    with pytest.raises(MalformedEnvelope, match="agent record is unreadable"):
        AgentRecord.decode(data)


def test_control_keys() -> None:
    assert control_key() == "all"
    assert control_key(agent="synth-agent") == "agent.synth-agent"
    assert control_key(channel="build-coord") == "channel.build-coord"
    with pytest.raises(InvalidChannel):
        control_key(channel="build-coord.>")
    with pytest.raises(InputError, match="not both"):
        control_key(agent="a", channel="b")


def _event(kind: EventKind, **target: str) -> Event:
    return Event(id="ev-1", kind=kind, actor="maintainer", time_ms=1, reason="r", **target)


def test_kill_state_blocks_by_agent_channel_or_all() -> None:
    by_channel = KillState({"channel.build-coord": _event(EventKind.KILLED, channel="build-coord")})
    assert by_channel.blocks("synth-agent", "build-coord")
    assert not by_channel.blocks("synth-agent", "release")
    assert not by_channel.blocks_agent("synth-agent")
    by_agent = KillState({"agent.synth-agent": _event(EventKind.QUARANTINED, agent="synth-agent")})
    assert by_agent.blocks_agent("synth-agent") and not by_agent.blocks_agent("relay-agent")
    everything = KillState({"all": _event(EventKind.KILLED)})
    assert everything.blocks("anyone", "anywhere")


@pytest.mark.parametrize(
    ("message", "stderr", "kind"),
    [
        ("error while executing: all fuel consumed by WebAssembly", "", "fuel"),
        ("wasm trap: interrupt", "", "timeout"),
        ("wasm `unreachable` instruction executed", "object type name: MemoryError", "memory"),
        ("wasm `unreachable` instruction executed", "ValueError: boom", "trap"),
        ("resource limit exceeded: instance count too high at 65", "", "limits"),
        ("table minimum size of 200000 elements exceeds table limits", "", "limits"),
        ("memory minimum size of 197 pages exceeds memory limits", "", "memory"),
        # a pointer it returned points outside its memory: no lack of memory
        ("list pointer/length out of bounds of memory", "", "trap"),
        ("string pointer/length out of bounds of memory", "", "trap"),
        (
            "too much data is being copied between the host and the guest: fuel allocated "
            "for hostcalls has been exhausted",
            "",
            "flood",
        ),
        # the guest names its own functions: a frame called so names no fault
        (
            "error while executing at wasm backtrace:\n    0:     0x98 - m!all fuel consumed\n"
            "    1:     0x9e - m!interrupt memory\n\nCaused by:\n    wasm trap: wasm "
            "`unreachable` instruction executed\n",
            "",
            "trap",
        ),
        (
            "error while executing at wasm backtrace:\n    0:     0x98 - m!Caused by:\n\n"
            "Caused by:\n    wasm trap: all fuel consumed by WebAssembly\n",
            "",
            "fuel",
        ),
    ],
)
def test_faults_are_named(message: str, stderr: str, kind: str) -> None:
    assert classify_fault(message, stderr) == kind


def test_an_operator_may_sign_a_kill_but_nothing_else(
    tmp_path: Path, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    directory = tmp_path / "facts"
    with FactLog.open(directory, signer=keys["host"]) as log:
        kill = _event(EventKind.KILLED, channel="build-coord")
        log.append(sign_fact(kill, keys["maintainer"]), kill)
    assert verify_directory(directory, registry).ok
    with FactLog.open(directory, signer=keys["host"]) as log:
        note = Event(id="ev-2", kind=EventKind.NOTE, actor="maintainer", time_ms=1, reason="r")
        log.append(sign_fact(note, keys["maintainer"]), note)
    report = verify_directory(directory, registry)
    assert not report.ok
    assert "note event signed by 'maintainer' (operator)" in str(report.problem)


def test_nats_credentials_never_reach_a_message() -> None:
    assert without_credentials("nats://user:s3cret@10.0.0.1:4222") == "nats://***@10.0.0.1:4222"
    assert without_credentials("tls://token@nats.example:4443") == "tls://***@nats.example:4443"
    assert without_credentials("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_a_served_hosts_startup_heap_is_kept_out_of_full_collections() -> None:
    kept = object.__new__(type("Kept", (), {}))
    with startup_heap_frozen():
        assert gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())  # frozen: no scan sees it
    assert gc.get_freeze_count() == 0
    assert any(o is kept for o in gc.get_objects())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Position(0)),
        ("12\n", Position(12)),
        ("12 30\n", Position(12, 30)),
        ("12 30 1764800000123456\n", Position(12, 30, 1764800000123456)),
    ],
    ids=["empty", "older-recorder", "with-entries", "with-its-stream"],
)
def test_a_saved_position_reads_in_either_form(
    tmp_path: Path, text: str, expected: Position
) -> None:
    path = tmp_path / ".position"
    path.write_text(text)
    assert read_position(path) == expected
    write_position(path, Position(7, 9, 11))
    assert read_position(path) == Position(7, 9, 11)


@pytest.mark.parametrize("text", ["x\n", "1 2 3 4\n", "-1 4\n", "1.5\n", "1 " + "9" * 21])
def test_a_damaged_position_is_named(tmp_path: Path, text: str) -> None:
    path = tmp_path / ".position"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"\.position is damaged: expected"):
        read_position(path)
