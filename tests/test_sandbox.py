"""One agent's sandbox, without the rest of the host: what it lets a guest take."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from wasmtime import component as wc

from agora.host.sandbox import (
    MAX_LOG_FILE_BYTES,
    MAX_TABLE_ELEMENTS,
    AgentFault,
    EpochTicker,
    GuestContext,
    GuestMessage,
    Sandbox,
    SandboxLimits,
    load_component,
    make_engine,
    make_linker,
)

CHATTER_BYTES = 256 * 1024  # what the hostile agent's ``chatter`` mode prints per call


@pytest.fixture
def chatterbox(components: dict[str, Path], tmp_path: Path) -> Iterator[Sandbox]:
    engine = make_engine()
    ticker = EpochTicker(engine)
    ticker.start()
    try:
        yield Sandbox(
            agent="chatterbox",
            engine=engine,
            linker=make_linker(engine),
            component=load_component(engine, components["hostile"]),
            limits=SandboxLimits(fuel=10**10, timeout_ms=2000, memory_bytes=64 << 20),
            log_dir=tmp_path,
        )
    finally:
        ticker.stop()


def test_an_agent_that_prints_without_end_cannot_fill_the_disk(
    chatterbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agora.agent.chatterbox")
    context = GuestContext("chatterbox", ("c",), 0, (("mode", "chatter"),))
    message = GuestMessage("act-1", "conv-1", None, "someone", "c", "inform", "hi", 3)
    calls = 3 * MAX_LOG_FILE_BYTES // CHATTER_BYTES
    stdout = tmp_path / "chatterbox.stdout.log"
    for _ in range(calls):
        outcome = chatterbox.call(context, b"", (message,))
        assert len(outcome.outbox) == 1
        assert stdout.stat().st_blocks * 512 <= MAX_LOG_FILE_BYTES + CHATTER_BYTES
    copied = [r.getMessage() for r in caplog.records if r.name == "agora.agent.chatterbox"]
    # Each call's first lines reach the host log, the last call's too: none is lost to
    # the emptying, and the per-call cap holds.
    assert sum(line.startswith("0000x") for line in copied) == calls
    assert len(copied) <= calls * 64


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
    engine = make_engine()
    wat = f"(component (core module $m {core_module}) (core instance (instantiate $m)))"
    with pytest.raises(AgentFault) as refused:
        Sandbox(
            agent="greedy",
            engine=engine,
            linker=make_linker(engine),
            component=wc.Component(engine, wat),
            limits=SandboxLimits(fuel=10**9, timeout_ms=1000, memory_bytes=16 << 20),
            log_dir=tmp_path,
        )
    assert refused.value.kind == "limits"
    assert named in refused.value.detail
    assert "at most 1 memory" in refused.value.detail
