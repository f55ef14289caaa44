"""Agents in wasmtime: one store per agent, no ambient authority, bounded CPU and memory.

Each agent is a WebAssembly component built against ``wit/agent.wit``. The host gives
it nothing but WASI's bare minimum: no preopened directory (no filesystem), no
environment variables, no arguments, no network (WASI 0.2 refuses every connect and
name lookup without a grant, and none is given), and stdout/stderr kept in memory (a
bounded part of each call's) and copied into the host log.

Every call runs under two budgets: fuel (a count of executed instructions) and an epoch
deadline (wall-clock, ticked by one thread per engine). The store's linear memory is
capped. A call that runs out of either budget, exceeds the memory cap or traps raises
:class:`AgentFault`; the store is dead after that and the host quarantines the agent.
Neither budget reaches a guest blocked in a WASI call (a sleep): :mod:`watchdog`
contains that case.

Compiling a component takes seconds; the compiled form is cached beside the build
(``<name>-<digest>.cwasm``), keyed by the component's bytes, the wasmtime version and
the engine settings, so a host restart loads each agent in milliseconds. Only files this
module wrote are ever deserialized.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import wasmtime
from wasmtime import component as wc

from agora.core.errors import AgoraError, shown
from agora.core.signing import MAX_ENVELOPE_BYTES
from agora.host.config import MAX_MESSAGES_PER_CALL
from agora.host.contract import MESSAGE_FIELDS, contract_problem
from agora.host.guest_records import ReturnedTooMuch, ReturnLimits
from agora.host.guest_types import ListTooLong, resolve_types

log = logging.getLogger(__name__)

EPOCH_TICK_S: Final = 0.005
INSTANTIATE_TICKS: Final = 2_000  # 10 s: starting the guest interpreter is not a call
INSTANTIATE_FUEL: Final = 10_000_000_000
# What a componentize-py agent needs is 14 instances, 2 tables of at most 5,670 elements
# and one memory; one memory makes `memory_mb` the agent's whole linear memory.
MAX_INSTANCES: Final = 64
MAX_TABLES: Final = 8
MAX_TABLE_ELEMENTS: Final = 100_000
MAX_MEMORIES: Final = 1
MAX_STATE_BYTES: Final = 256 * 1024
# what one call's outbox may hold, refused before it is copied: no string longer than an
# envelope can be (nothing longer could ever be published), and all of them together no
# more than an agent's record can keep of an outbox (8 parts of at most 1 MiB, in base64)
MAX_RETURNED_TEXT_BYTES: Final = 6 * 1024 * 1024
MAX_LOG_BYTES_PER_CALL: Final = 64 * 1024  # of stdout, and of stderr; the rest is dropped
MAX_LOG_LINE_CHARS: Final = 1000
MAX_LOG_LINES_PER_CALL: Final = 100  # of stdout, and of stderr: a line each is a record
_UNPRINTABLE: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # a tab stays


class AgentFault(AgoraError):
    """An agent stopped abnormally: out of fuel or time, out of memory, or a trap."""

    def __init__(self, agent: str, kind: str, detail: str) -> None:
        super().__init__(f"agent {agent!r} faulted ({kind}): {detail}")
        self.agent = agent
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    fuel: int
    timeout_ms: int
    memory_bytes: int
    outbox: int = MAX_MESSAGES_PER_CALL  # most messages one call may return


@dataclass(frozen=True, slots=True)
class GuestMessage:
    """A message as the WIT ``message`` record carries it."""

    id: str
    conversation_id: str
    in_reply_to: str | None
    sender: str
    channel: str
    act: str
    payload: str
    hops: int


@dataclass(frozen=True, slots=True)
class GuestContext:
    agent: str
    channels: tuple[str, ...]
    now_ms: int
    settings: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class GuestOutcome:
    outbox: tuple[GuestMessage, ...]
    state: bytes
    wake_at_ms: int | None


def make_engine() -> wasmtime.Engine:
    """The one engine every agent store of this process shares (fuel and epochs on)."""
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    return wasmtime.Engine(config)


class EpochTicker:
    """Advances an engine's epoch every :data:`EPOCH_TICK_S` while a guest of it runs (see
    :meth:`running`), for wall-clock deadlines. It sleeps while none does: a thread that
    woke 200 times a second for nothing took some 3% of a core from an idle host, and
    the GIL from its event loop each time. A deadline counts the ticks since it was set,
    all of them while its own guest ran, so it is kept to as if the epoch never stopped."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._guests = 0  # running now
        self._busy = threading.Event()  # set while a guest runs
        self._thread = threading.Thread(target=self._run, name="agora-epoch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._busy.set()  # a sleeping ticker wakes to see the stop
        if self._thread.ident is not None:  # started (a host that failed to start may not be)
            self._thread.join()

    @contextmanager
    def running(self) -> Iterator[None]:
        """The body runs a guest: the epoch advances until it and every other end."""
        with self._lock:
            self._guests += 1
            self._busy.set()
        try:
            yield
        finally:
            with self._lock:
                self._guests -= 1
                if not self._guests:
                    self._busy.clear()

    def _run(self) -> None:
        while self._busy.wait() and not self._stop.wait(EPOCH_TICK_S):
            self._engine.increment_epoch()


def ticks_for(timeout_ms: int) -> int:
    return max(1, math.ceil(timeout_ms / 1000 / EPOCH_TICK_S))


def _engine_fingerprint() -> str:
    version = metadata.version("wasmtime")
    return f"wasmtime-{version};fuel;epoch"


def compiled_cache_path(wasm: Path, wasm_bytes: bytes) -> Path:
    digest = hashlib.sha256(_engine_fingerprint().encode() + b"\0" + wasm_bytes).hexdigest()
    return wasm.with_name(f"{wasm.stem}-{digest[:24]}.cwasm")


def load_component(engine: wasmtime.Engine, wasm: Path) -> wc.Component:
    """Load a component, compiling it once and reusing the compiled form after that."""
    try:
        wasm_bytes = wasm.read_bytes()
    except OSError as exc:
        raise AgoraError(
            f"component {str(wasm)!r} cannot be read ({exc.strerror}); "
            "run `agora agents build` first"
        ) from exc
    cached = compiled_cache_path(wasm, wasm_bytes)
    if cached.exists():
        try:
            return wc.Component.deserialize_file(engine, str(cached))
        except wasmtime.WasmtimeError:
            log.warning("compiled cache %s is unusable; compiling again", cached.name)
    try:
        component = wc.Component(engine, wasm_bytes)
    except wasmtime.WasmtimeError as exc:
        raise AgoraError(f"component {str(wasm)!r} is not a valid component: {exc}") from exc
    for stale in wasm.parent.glob(f"{wasm.stem}-*.cwasm"):
        stale.unlink(missing_ok=True)
    _write_atomically(cached, bytes(component.serialize()))
    return component


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class GuestLog:
    """An agent's stdout or stderr, copied into the host log after each call.

    The guest's writes land in memory, never on disk: the first
    :data:`MAX_LOG_BYTES_PER_CALL` of a call are kept, the rest is dropped (the guest is
    told it was written), so an agent that prints without end costs neither disk nor
    memory.
    """

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self._logger = logger
        self._level = level
        self._kept = bytearray()
        self.last_lines: list[str] = []

    def write(self, data: bytes) -> None:
        """WASI's callback for each write (on the thread running the call)."""
        room = MAX_LOG_BYTES_PER_CALL - len(self._kept)
        if room > 0:
            self._kept += data[:room]

    def drain(self) -> None:
        """Copy what the guest wrote since the last drain into the host log: its first
        :data:`MAX_LOG_LINES_PER_CALL` lines, each cut and with its control characters
        escaped (an agent cannot clear an operator's terminal). The last lines are kept
        for a fault's report (what a guest says before it dies comes last)."""
        if not self._kept:
            return
        lines = self._kept.decode("utf-8", errors="replace").splitlines()
        self._kept.clear()
        self.last_lines = lines[-MAX_LOG_LINES_PER_CALL:]
        for line in lines[:MAX_LOG_LINES_PER_CALL]:
            self._logger.log(self._level, "%s", _printable(line[:MAX_LOG_LINE_CHARS]))
        if len(lines) > MAX_LOG_LINES_PER_CALL:
            dropped = len(lines) - MAX_LOG_LINES_PER_CALL
            self._logger.log(self._level, "(%d more lines of this call dropped)", dropped)


def _printable(line: str) -> str:
    return _UNPRINTABLE.sub(lambda found: f"\\x{ord(found.group()):02x}", line)


def _record(fields: dict[str, Any]) -> wc.Record:
    record = wc.Record()
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def _message_record(message: GuestMessage) -> wc.Record:
    return _record(
        {
            "id": message.id,
            "conversation-id": message.conversation_id,
            "in-reply-to": message.in_reply_to,
            "sender": message.sender,
            "channel": message.channel,
            "act": message.act,
            "payload": message.payload,
            "hops": message.hops,
        }
    )


def _guest_message(record: Any) -> GuestMessage:
    values = [getattr(record, name) for name in MESSAGE_FIELDS]
    ident, conversation, reply, sender, channel, act, payload, hops = values
    return GuestMessage(
        id=ident,
        conversation_id=conversation,
        in_reply_to=reply,
        sender=sender,
        channel=channel,
        act=act,
        payload=payload,
        hops=hops,
    )


class Sandbox:
    """One agent's store and instance. Dead after a fault; make a new one to restart."""

    def __init__(
        self,
        *,
        agent: str,
        engine: wasmtime.Engine,
        ticker: EpochTicker,
        linker: wc.Linker,
        component: wc.Component,
        limits: SandboxLimits,
    ) -> None:
        self.agent = agent
        self._limits = limits
        self._ticker = ticker
        logger = logging.getLogger(f"agora.agent.{agent}")
        self._stdout = GuestLog(logger, logging.INFO)
        self._stderr = GuestLog(logger, logging.WARNING)
        wasi = wasmtime.WasiConfig()
        wasi.stdout_custom = self._stdout.write
        wasi.stderr_custom = self._stderr.write
        self._store = wasmtime.Store(engine)
        self._store.set_wasi(wasi)
        self._store.set_limits(
            memory_size=limits.memory_bytes,
            table_elements=MAX_TABLE_ELEMENTS,
            instances=MAX_INSTANCES,
            tables=MAX_TABLES,
            memories=MAX_MEMORIES,
        )
        self._store.set_fuel(INSTANTIATE_FUEL)
        self._store.set_epoch_deadline(INSTANTIATE_TICKS)
        self.dead = False
        try:
            with ticker.running():
                instance = linker.instantiate(self._store, component)
        except wasmtime.WasmtimeError as exc:
            raise self._fault(exc) from exc
        handle = instance.get_func(self._store, "handle")
        problem = (
            "its component exports no `handle` function"
            if handle is None
            else contract_problem(handle.type(self._store))
        )
        if handle is None or problem is not None:
            self.dead = True
            raise AgentFault(agent, "contract", f"{problem} (see wit/agent.wit)")
        returns = ReturnLimits(
            items=limits.outbox, text=MAX_ENVELOPE_BYTES, total=MAX_RETURNED_TEXT_BYTES
        )
        resolve_types(handle, self._store, max_bytes=MAX_STATE_BYTES, returns=returns)
        self._handle = handle

    def call(
        self, context: GuestContext, state: bytes, inbox: tuple[GuestMessage, ...]
    ) -> GuestOutcome:
        """Run one batch. Raises :class:`AgentFault` and marks the sandbox dead on a fault."""
        if self.dead:
            raise AgoraError(f"agent {self.agent!r}: its sandbox faulted and cannot run")
        self._store.set_fuel(self._limits.fuel)
        self._store.set_epoch_deadline(ticks_for(self._limits.timeout_ms))
        self._stderr.last_lines = []  # a fault quotes this call's words, no other's
        ctx = _record(
            {
                "agent": context.agent,
                "channels": list(context.channels),
                "now-ms": context.now_ms,
                "settings": [tuple(pair) for pair in context.settings],
            }
        )
        try:
            with self._ticker.running():
                result = self._handle(self._store, ctx, state, [_message_record(m) for m in inbox])
                self._handle.post_return(self._store)
        except wasmtime.WasmtimeError as exc:
            raise self._fault(exc) from exc
        except ListTooLong as exc:  # the only list<u8> it returns is its state
            self.dead = True
            raise AgentFault(
                self.agent, "state", f"its state is {exc.length} bytes; the limit is {exc.limit}"
            ) from exc
        except ReturnedTooMuch as exc:  # its outbox: nothing of it was copied
            self.dead = True
            raise AgentFault(self.agent, "flood", str(exc)) from exc
        except (AgoraError, TypeError, ValueError) as exc:  # not the shape the WIT gives
            self.dead = True
            raise AgentFault(self.agent, "contract", f"its call could not be read: {exc}") from exc
        finally:
            self._stdout.drain()
            self._stderr.drain()
        # the types were checked as the agent loaded (host/contract.py): these are
        # strings, bytes, a u8 and a u64 as the WIT says
        outbox = tuple(_guest_message(m) for m in result.outbox)
        wake = getattr(result, "wake-at-ms")
        return GuestOutcome(outbox=outbox, state=bytes(result.state), wake_at_ms=wake)

    def _fault(self, exc: wasmtime.WasmtimeError) -> AgentFault:
        self.dead = True
        self._stderr.drain()
        said = self._stderr.last_lines
        kind = classify_fault(str(exc), "\n".join(said))
        guest_said = " | ".join(_python_error_lines(said)[-2:])
        detail = self._explain(kind, str(exc))
        if guest_said:  # the guest's words, cut: the host's own are kept whole
            detail = f"{detail}; the agent said: {shown(guest_said)[1:-1]}"
        return AgentFault(self.agent, kind, detail)

    def _explain(self, kind: str, message: str) -> str:
        limits = self._limits
        return {
            "fuel": f"used up its fuel ({limits.fuel} units) in one call",
            "timeout": f"ran past its {limits.timeout_ms} ms budget for one call",
            "memory": f"ran out of memory (limit {limits.memory_bytes // (1024 * 1024)} MiB)",
            "limits": f"goes past the sandbox's limits ({message.splitlines()[0]}); "
            f"at most {MAX_MEMORIES} memory, {MAX_TABLES} tables of "
            f"{MAX_TABLE_ELEMENTS} elements and {MAX_INSTANCES} instances",
            "flood": "handed the host more data in one call than may cross from a guest "
            f"({message.splitlines()[0]})",
        }.get(kind, f"trapped ({_first_line(_cause(message))})")


FIRST_LINE_CHARS: Final = 200  # of wasmtime's words for a trap, in its fault fact
_RUNTIME_NOISE: Final = ("thread '", "note: ", "Python function threw", "stack backtrace")


def _python_error_lines(lines: list[str]) -> list[str]:
    """The guest's own words in a fault's stderr, without the runtime's panic report."""
    kept: list[str] = []
    for line in lines:
        text = line.strip()
        if text.lower().startswith("stack backtrace"):
            break
        if text and not text.startswith(_RUNTIME_NOISE):
            kept.append(text)
    return kept


def classify_fault(message: str, guest_stderr: str) -> str:
    """Name a fault: ``fuel``, ``timeout``, ``limits``, ``flood``, ``memory`` or ``trap``,
    from wasmtime's words for it (not the backtrace, whose frames the guest names)."""
    message = _cause(message)
    if "all fuel consumed" in message:
        return "fuel"
    if "interrupt" in message:
        return "timeout"
    if "resource limit exceeded" in message or "exceeds table limits" in message:
        return "limits"
    if "too much data is being copied between the host and the guest" in message:
        return "flood"  # wasmtime's cap on what one call may copy across
    # a pointer or a length it returned "out of bounds of memory" is no lack of memory
    lacked_memory = "MemoryError" in guest_stderr or "memory" in message.lower()
    return "memory" if lacked_memory and "out of bounds" not in message else "trap"


def _first_line(message: str) -> str:
    lines = message.strip().splitlines()
    return lines[0][:FIRST_LINE_CHARS] if lines else "no reason given"


def _cause(message: str) -> str:
    """A wasmtime error without its backtrace: what follows the last "Caused by:" (the
    guest may name a function so, but the real one comes after every frame)."""
    if "wasm backtrace:" not in message:
        return message
    _, caused, cause = message.rpartition("Caused by:")
    return cause if caused else message.split("\n", 1)[0]


def make_linker(engine: wasmtime.Engine) -> wc.Linker:
    """WASI 0.2 imports, configured per store to grant nothing (see :class:`Sandbox`)."""
    linker = wc.Linker(engine)
    linker.add_wasip2()
    return linker
