"""Types read once convert every value of the contract exactly as wasmtime-py does."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from wasmtime import component as wc

from agora.host.guest_records import FlatRecord, FlatRecordList
from agora.host.guest_types import resolve_types
from agora.host.sandbox import load_component, make_engine, make_linker

PLENTY: int = 10**12


def _record(**fields: Any) -> wc.Record:
    record = wc.Record()
    for name, value in fields.items():
        setattr(record, name.replace("_", "-"), value)
    return record


def _message(n: int, *, reply: str | None, payload: str) -> wc.Record:
    return _record(
        id=f"act-{n}",
        conversation_id="conv-1",
        in_reply_to=reply,
        sender="maintainer",
        channel="build-coord",
        act="request" if n % 2 else "inform",
        payload=payload,
        hops=n % 9,
    )


def _plain(value: Any) -> Any:
    """A converted value as plain data, so two conversions can be compared."""
    if isinstance(value, wc.Record):
        return {name: _plain(item) for name, item in vars(value).items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


@pytest.fixture
def handles(components: dict[str, Path]) -> tuple[Any, Any]:
    engine = make_engine()
    component = load_component(engine, components["chatty"])
    linker = make_linker(engine)

    def instance() -> tuple[wasmtime.Store, wc.Func]:
        store = wasmtime.Store(engine)
        store.set_wasi(wasmtime.WasiConfig())
        store.set_fuel(PLENTY)
        store.set_epoch_deadline(PLENTY)
        func = linker.instantiate(store, component).get_func(store, "handle")
        assert func is not None
        return store, func

    generic = instance()
    resolved = instance()
    resolve_types(resolved[1], resolved[0])
    return generic, resolved


@pytest.mark.parametrize("state", [b"", bytes(range(256)), bytes(range(256)) * 300])
def test_a_call_converts_as_wasmtime_does(handles: tuple[Any, Any], state: bytes) -> None:
    ctx = _record(
        agent="synth-agent",
        channels=["build-coord", "release"],
        now_ms=1_700_000_000_123,
        settings=[("quorum", "3"), ("motto", "héllo ✓")],
    )
    inbox = [
        _message(n, reply=None if n % 3 else f"act-{n - 1}", payload="ünïcode ✓ " * n)
        for n in range(12)
    ]
    results = []
    for store, func in handles:
        outcome = func(store, ctx, state, inbox)
        func.post_return(store)
        results.append(outcome)
    generic, resolved = results
    assert resolved.state == generic.state == state
    assert _plain(resolved.outbox) == _plain(generic.outbox)
    assert len(resolved.outbox) == 10  # chatty answers each message with a hop left
    assert getattr(resolved, "wake-at-ms") is getattr(generic, "wake-at-ms") is None


def test_a_value_of_the_wrong_type_is_refused(handles: tuple[Any, Any]) -> None:
    _, (store, func) = handles
    ctx = _record(agent="a", channels=[], now_ms=0, settings=[])
    with pytest.raises(TypeError, match="expected bytes"):
        func(store, ctx, "not bytes", [])


def test_the_sandbox_types_stay_right_across_calls(handles: tuple[Any, Any]) -> None:
    # Types are read once; a second and third call must see the same, not stale memory.
    _, (store, func) = handles
    ctx = _record(agent="a", channels=["c"], now_ms=1, settings=[])
    for round_ in range(3):
        message = _message(round_ + 1, reply=None, payload=f"round {round_}")
        outcome = func(store, ctx, bytes([round_]) * 10, [message])
        func.post_return(store)
        assert outcome.state == bytes([round_]) * 10
        [reply] = outcome.outbox
        assert reply.payload == f"a heard maintainer: round {round_}"
        assert getattr(reply, "in-reply-to") == f"act-{round_ + 1}"


def test_an_empty_inbox_and_state_convert_as_wasmtime_does(handles: tuple[Any, Any]) -> None:
    ctx = _record(agent="a", channels=[], now_ms=0, settings=[])
    for store, func in handles:
        outcome = func(store, ctx, b"", [])
        func.post_return(store)
        assert (outcome.outbox, outcome.state, getattr(outcome, "wake-at-ms")) == ([], b"", None)


def test_many_calls_lend_their_arguments_without_loss(handles: tuple[Any, Any]) -> None:
    # Each call's inbox and state are laid out in buffers Python owns and frees after
    # the call: hundreds of calls of varied sizes must each read back exactly right.
    ctx = _record(agent="a", channels=["c"], now_ms=5, settings=[("k", "v")])
    for round_ in range(300):
        size = round_ % 17
        inbox = [
            _message(
                round_ * 100 + n,
                reply=None if (round_ + n) % 4 else f"act-{n}",
                payload="✓" * ((round_ * 7 + n) % 50),
            )
            for n in range(size)
        ]
        state = bytes([round_ % 256]) * (round_ % 40)
        results = []
        for store, func in handles:
            results.append(func(store, ctx, state, inbox))
            func.post_return(store)
        generic, resolved = results
        assert resolved.state == generic.state == state
        assert _plain(resolved.outbox) == _plain(generic.outbox)
        assert len(resolved.outbox) == sum(1 for m in inbox if m.hops > 0)


def test_messages_convert_in_bulk(handles: tuple[Any, Any]) -> None:
    _, (_, func) = handles
    inbox_type = dict(func.type(None).params)["inbox"]
    assert isinstance(inbox_type, FlatRecordList)
    assert isinstance(inbox_type.element, FlatRecord)


def test_empty_strings_and_edge_numbers_convert_as_wasmtime_does(handles: tuple[Any, Any]) -> None:
    ctx = _record(agent="a", channels=["c"], now_ms=0, settings=[])
    inbox = [
        _record(
            id="act-1",
            conversation_id="",
            in_reply_to="",
            sender="m",
            channel="c",
            act="inform",
            payload="",
            hops=255,
        ),
        _record(
            id="act-2",
            conversation_id="c",
            in_reply_to=None,
            sender="m",
            channel="c",
            act="accept-proposal",
            payload="\x00 \U0001f600",
            hops=1,
        ),
    ]
    results = []
    for store, func in handles:
        results.append(func(store, ctx, b"", inbox))
        func.post_return(store)
    generic, resolved = results
    assert _plain(resolved.outbox) == _plain(generic.outbox)
    assert [getattr(m, "in-reply-to") for m in resolved.outbox] == ["act-1", "act-2"]
    assert resolved.outbox[1].payload == "a heard m: \x00 \U0001f600"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("hops", 256, "field 'hops': expected an integer of 1 bytes"),
        ("hops", -1, "field 'hops': expected an integer of 1 bytes"),
        ("payload", b"bytes", "field 'payload': expected a string"),
        ("in_reply_to", 7, "field 'in-reply-to': expected a string or None"),
        ("act", None, "field 'act': expected a string"),
    ],
)
def test_a_bad_message_field_is_refused_by_name(
    handles: tuple[Any, Any], field: str, value: Any, expected: str
) -> None:
    _, (store, func) = handles
    ctx = _record(agent="a", channels=["c"], now_ms=0, settings=[])
    good = _message(1, reply=None, payload="fine")
    bad = _message(2, reply=None, payload="x")
    setattr(bad, field.replace("_", "-"), value)
    with pytest.raises(TypeError, match=re.escape(expected)):
        func(store, ctx, b"", [good, bad])
    # the refused call wrote nothing half-way: the store still takes a good call
    outcome = func(store, ctx, b"", [good])
    func.post_return(store)
    assert [m.payload for m in outcome.outbox] == ["a heard maintainer: fine"]


def test_an_inbox_that_is_not_a_list_is_refused(handles: tuple[Any, Any]) -> None:
    _, (store, func) = handles
    ctx = _record(agent="a", channels=[], now_ms=0, settings=[])
    with pytest.raises(TypeError, match="expected a list"):
        func(store, ctx, b"", "not a list")
