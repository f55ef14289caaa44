"""One agent's sandbox, without the rest of the host: what it lets a guest take."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from wasmtime import component as wc

from agora.core.acts import Performative
from agora.core.signing import MAX_ENVELOPE_BYTES
from agora.host.sandbox import (
    MAX_LOG_BYTES_PER_CALL,
    MAX_LOG_LINES_PER_CALL,
    MAX_STATE_BYTES,
    MAX_TABLE_ELEMENTS,
    AgentFault,
    EpochTicker,
    GuestContext,
    GuestLog,
    GuestMessage,
    Sandbox,
    SandboxLimits,
    load_component,
    make_engine,
    make_linker,
)

CHATTER_BYTES = 256 * 1024  # what the hostile agent's ``chatter`` mode prints per call


MESSAGE = GuestMessage("act-1", "conv-1", None, "someone", "c", "inform", "hi", 3)


@pytest.fixture
def chatterbox(components: dict[str, Path]) -> Iterator[Sandbox]:
    engine = make_engine()
    ticker = EpochTicker(engine)
    ticker.start()
    try:
        yield Sandbox(
            agent="chatterbox",
            engine=engine,
            ticker=ticker,
            linker=make_linker(engine),
            component=load_component(engine, components["hostile"]),
            limits=SandboxLimits(fuel=10**10, timeout_ms=2000, memory_bytes=64 << 20, outbox=100),
        )
    finally:
        ticker.stop()


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("flood", "10000 messages in one call; the limit is 100"),
        ("huge", f"a payload of 1000000 bytes in one call; the limit is {MAX_ENVELOPE_BYTES}"),
    ],
)
def test_an_outbox_past_its_limits_faults_before_it_is_copied(
    chatterbox: Sandbox, mode: str, said: str
) -> None:
    context = GuestContext("chatterbox", ("c",), 0, (("mode", mode),))
    with pytest.raises(AgentFault) as fault:
        chatterbox.call(context, b"", (MESSAGE,))
    assert (fault.value.kind, fault.value.detail) == ("flood", said)
    assert chatterbox.dead


def test_a_guest_log_keeps_a_bounded_number_of_lines_and_no_control_characters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 64 KiB of newlines would be 65,536 records; an escape sequence reaches no terminal
    logger = logging.getLogger("agora.agent.talker")
    caplog.set_level(logging.INFO, logger=logger.name)
    log = GuestLog(logger, logging.INFO)
    log.write(b"\x1b[2Jcleared?\tand a tab\n" + b"\n" * 70_000)
    log.drain()
    copied = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert len(copied) == MAX_LOG_LINES_PER_CALL + 1
    assert copied[0] == "\\x1b[2Jcleared?\tand a tab"
    kept = MAX_LOG_BYTES_PER_CALL - len("\x1b[2Jcleared?\tand a tab\n") + 1  # lines in 64 KiB
    assert copied[-1] == f"({kept - MAX_LOG_LINES_PER_CALL} more lines of this call dropped)"


@pytest.mark.parametrize(
    ("wat", "said"),
    [
        ("(component)", "exports no `handle` function"),
        (
            '(component (core module $m (func (export "f") (param i32) (result i32) '
            'local.get 0)) (core instance $i (instantiate $m)) (func (export "handle") '
            '(param "x" u32) (result u32) (canon lift (core func $i "f"))))',
            "its handle takes 1 parameters; the contract has 3",
        ),
    ],
)
def test_a_component_whose_handle_is_not_the_contracts_is_refused_as_it_loads(
    wat: str, said: str
) -> None:
    refused = _refused_as_it_loads(wat)
    assert refused.kind == "contract"
    assert said in refused.detail


FIPA_ACTS = " ".join(f'"{act.value}"' for act in Performative)
CONTRACT_TYPES = {
    "message": '(record (field "id" string) (field "conversation-id" string) '
    '(field "in-reply-to" (option string)) (field "sender" string) (field "channel" string) '
    '(field "act" $act) (field "payload" string) (field "hops" u8))',
    "state": "(list u8)",
    "wake": "(option u64)",
}


def _handle_of(**types: str) -> str:
    """A component whose ``handle`` has the contract's shape but for ``types`` (``message``,
    ``state``, ``wake``: WAT type expressions); its body is never run."""
    shape = {**CONTRACT_TYPES, **types}
    return f"""(component
  (type $act0 (enum {FIPA_ACTS}))
  (export $act "act" (type $act0))
  (type $message0 {shape["message"]})
  (export $message "message" (type $message0))
  (type $context0 (record (field "agent" string) (field "channels" (list string))
    (field "now-ms" u64) (field "settings" (list (tuple string string)))))
  (export $context "context" (type $context0))
  (type $outcome0 (record (field "outbox" (list $message)) (field "state" {shape["state"]})
    (field "wake-at-ms" {shape["wake"]})))
  (export $outcome "outcome" (type $outcome0))
  (core module $m
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 0)
    (func (export "handle") (param i32 i32 i32 i32 i64 i32 i32 i32 i32 i32 i32) (result i32)
      i32.const 0))
  (core instance $i (instantiate $m))
  (func (export "handle") (param "ctx" $context) (param "state" {shape["state"]})
    (param "inbox" (list $message)) (result $outcome)
    (canon lift (core func $i "handle") (memory (core memory $i "memory"))
      (realloc (core func $i "realloc")))))"""


@pytest.mark.parametrize(
    ("types", "said"),
    [
        (
            {"state": "string"},
            "its handle's parameter state is string; the contract has list<u8>",
        ),
        (
            {"wake": "(option f64)"},
            "its handle's outcome's wake-at-ms's value is f64; the contract has u64",
        ),
        (
            {"message": CONTRACT_TYPES["message"].replace('"hops" u8', '"hops" string')},
            "its handle's parameter inbox's element's hops is string; the contract has u8",
        ),
        (
            {
                "message": CONTRACT_TYPES["message"].replace(
                    '"payload" string', '"payload" (list u8)'
                )
            },
            "its handle's parameter inbox's element's payload is list<u8>; the contract has string",
        ),
    ],
)
def test_a_handle_with_a_field_of_another_type_is_refused_as_it_loads(
    types: dict[str, str], said: str
) -> None:
    # its shape and field names are the contract's: only a type differs, which the
    # host's readers would take for the contract's
    refused = _refused_as_it_loads(_handle_of(**types))
    assert (refused.kind, refused.detail) == ("contract", f"{said} (see wit/agent.wit)")


def test_a_handle_of_the_contracts_types_loads() -> None:
    engine = make_engine()
    Sandbox(
        agent="exact",
        engine=engine,
        ticker=EpochTicker(engine),
        linker=make_linker(engine),
        component=wc.Component(engine, _handle_of()),
        limits=SandboxLimits(fuel=10**9, timeout_ms=1000, memory_bytes=16 << 20),
    )


def _refused_as_it_loads(wat: str) -> AgentFault:
    """The fault a sandbox of the component ``wat`` raises as it is made."""
    engine = make_engine()
    with pytest.raises(AgentFault) as refused:
        Sandbox(
            agent="odd",
            engine=engine,
            ticker=EpochTicker(engine),  # never started: no call here runs long
            linker=make_linker(engine),
            component=wc.Component(engine, wat),
            limits=SandboxLimits(fuel=10**9, timeout_ms=1000, memory_bytes=16 << 20),
        )
    return refused.value


def test_what_an_agent_prints_reaches_the_host_log_up_to_a_cap_per_call(
    chatterbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agora.agent.chatterbox")
    context = GuestContext("chatterbox", ("c",), 0, (("mode", "chatter"),))
    message = GuestMessage("act-1", "conv-1", None, "someone", "c", "inform", "hi", 3)
    calls = 3
    for _ in range(calls):
        outcome = chatterbox.call(context, b"", (message,))
        assert len(outcome.outbox) == 1  # the agent was told its writes went through
    copied = [r.getMessage() for r in caplog.records if r.name == "agora.agent.chatterbox"]
    # Each call's first lines reach the host log, and no more than the cap of each.
    assert sum(line.startswith("0000x") for line in copied) == calls
    kept_lines = MAX_LOG_BYTES_PER_CALL // 1024
    assert len(copied) == calls * kept_lines < calls * CHATTER_BYTES // 1024
    assert copied[kept_lines - 1].startswith(f"{kept_lines - 1:04d}x")


@pytest.mark.parametrize(
    ("size", "kind", "named"),
    [
        # refused as it is read, before the C API's 32 bytes per byte are copied again
        (MAX_STATE_BYTES + 1, "state", f"its state is {MAX_STATE_BYTES + 1} bytes"),
        # past what wasmtime lets one call copy across at all
        (20_000_000, "flood", "more data in one call than may cross"),
    ],
)
def test_an_agent_returning_too_large_a_state_faults_and_stops(
    chatterbox: Sandbox, size: int, kind: str, named: str
) -> None:
    message = GuestMessage("act-1", "conv-1", None, "someone", "c", "inform", "hi", 3)
    largest = GuestContext("h", ("c",), 0, (("mode", "hoard"), ("state-bytes", "262144")))
    assert len(chatterbox.call(largest, b"", (message,)).state) == MAX_STATE_BYTES
    context = GuestContext("h", ("c",), 0, (("mode", "hoard"), ("state-bytes", str(size))))
    with pytest.raises(AgentFault) as fault:
        chatterbox.call(context, b"", (message,))
    assert fault.value.kind == kind
    assert named in fault.value.detail
    assert chatterbox.dead


@pytest.mark.parametrize(
    ("core_module", "named"),
    [
        ("(memory 1) (memory 1)", "memory count too high"),
        (f"(table {MAX_TABLE_ELEMENTS + 1} funcref)", "table minimum size"),
    ],
)
def test_a_component_past_the_store_limits_is_refused_with_the_limit_named(
    tmp_path: Path, core_module: str, named: str
) -> None:
    # A second memory would double what memory_mb allows; a huge table is memory too.
    wat = f"(component (core module $m {core_module}) (core instance (instantiate $m)))"
    refused = _refused_as_it_loads(wat)
    assert refused.kind == "limits"
    assert named in refused.detail
    assert "at most 1 memory" in refused.detail


COUNTDOWN_WAT = """
(module
  (func (export "count") (param $n i64)
    (loop $again
      (local.set $n (i64.sub (local.get $n) (i64.const 1)))
      (br_if $again (i64.gt_s (local.get $n) (i64.const 0))))))
"""


def test_the_epoch_advances_only_while_a_guest_runs() -> None:
    engine = make_engine()
    ticker = EpochTicker(engine)
    ticker.start()
    try:
        store = wasmtime.Store(engine)
        store.set_fuel(10**15)
        count = wasmtime.Instance(store, wasmtime.Module(engine, COUNTDOWN_WAT), []).exports(store)[
            "count"
        ]
        assert isinstance(count, wasmtime.Func)
        store.set_epoch_deadline(20)  # 100 ms of a guest's running
        time.sleep(0.3)  # idle: no tick, so the deadline is as far as it was
        with ticker.running():
            count(store, 1000)  # done well within the deadline
        started = time.monotonic()
        with ticker.running(), pytest.raises(wasmtime.Trap, match="interrupt"):
            count(store, 10**15)  # runs until the deadline
        assert time.monotonic() - started < 5
    finally:
        ticker.stop()
