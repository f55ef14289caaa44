"""The host: agents in their sandboxes, the kill switch, and the recorder, on one spine.

:class:`Host` is what ``agora up`` runs and what the demo, the tests and the benchmarks
start in-process. It needs a NATS connection (an embedded server or a cluster), the
configuration, the key registry and the private keys of the identities it acts for.

Several host processes can share one NATS cluster: each runs a different set of agents
(an agent's record is compare-and-set, so running one agent twice is detected), and one
of them records the facts (``record=True``); nothing that must be global lives in a
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from wasmtime import component as wc

from agora.core.factlog import FactLog
from agora.core.ids import now_ms
from agora.core.keys import KeyRegistry, RetiredKey, SigningKey
from agora.core.spine import (
    AGENTS_BUCKET,
    FRESH_FOR_MS,
    STATUS_BUCKET,
    STREAM,
    WINDOW_MS,
    agent_consumer_config,
    agent_consumer_name,
    bucket_keys,
    ensure_consumer,
    ensure_spine,
)
from agora.host.agent_record import UntrustedRecord
from agora.host.config import AgentConfig, Config
from agora.host.killswitch import KillSwitch
from agora.host.record_store import RecordStore
from agora.host.recorder import Recorder
from agora.host.runner import AgentRunner, AgentSpec
from agora.host.sandbox import (
    EpochTicker,
    Sandbox,
    SandboxLimits,
    load_component,
    make_engine,
    make_linker,
)
from agora.host.signature_checks import signature_checks
from agora.host.tasks import finish
from agora.host.vouched import Vouched
from agora.host.watchdog import WatchedSandbox

log = logging.getLogger(__name__)

STATUS_EVERY_S: Final = 1.0
# A report older than this many intervals is the last word of a process that stopped.
STALE_AFTER_REPORTS: Final = 5
STALE_AFTER_S: Final = STALE_AFTER_REPORTS * STATUS_EVERY_S
MACHINE_NAME_CHARS: Final = 64
CLOCK_CHECK_EVERY: Final = 60  # reports: the clock is compared once a minute
CLOCK_WARN_MS: Final = 10_000
CLOCK_CHECK_TIMEOUT_S: Final = 1.0
HEADROOM: Final = 4096  # of the server's message size, for a key-value put's subject and headers
SETTLE_POLL_S: Final = 0.05


@contextlib.contextmanager
def startup_heap_frozen() -> Iterator[None]:
    """For a process serving a started host (``agora up``): collect once, then keep
    everything alive by now (modules, compiled components, configuration: some 56,000
    objects) out of the cyclic collector's full collections until the block ends, so
    they scan only what the host made since. A full collection otherwise walked all of
    it while every act in flight waited: 35 ms at 1,000 acts/s on two busy cores, where
    the goal for an act's whole way is 10 ms at p99."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def machine_name() -> str:
    """This machine's host name in the characters a status key may hold (no dots)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:MACHINE_NAME_CHARS]
    return name or "unknown"


def is_stale(report: Mapping[str, object], now_ms: int) -> bool:
    """Whether a status report is too old to be from a process still running."""
    time_ms = report.get("time_ms")
    return not isinstance(time_ms, int) or now_ms - time_ms > STALE_AFTER_S * 1000


@dataclass(frozen=True, slots=True)
class HostKeys:
    """The private keys the host acts with: its own, and each of its agents'."""

    host: SigningKey
    agents: Mapping[str, SigningKey]


class Host:
    def __init__(
        self,
        *,
        config: Config,
        registry: KeyRegistry,
        keys: HostKeys,
        components: Mapping[str, Path],
        record: bool = True,
    ) -> None:
        self.config = config
        self._registry = registry
        self._keys = keys
        self._components = components
        self._record = record
        self._checks = signature_checks()
        self.vouched = Vouched(registry, checks=self._checks)
        self.killswitch = KillSwitch(registry)
        self.runners: dict[str, AgentRunner] = {}
        self.recorder: Recorder | None = None
        # this machine's clock minus the NATS server's, once measured
        self.clock_offset_ms: int | None = None
        self._engine = make_engine()
        self._ticker = EpochTicker(self._engine)
        self._linker: wc.Linker | None = None
        self._loaded: dict[str, wc.Component] = {}
        self._status_task: asyncio.Task[None] | None = None
        # this process among every host process (several may share one host key): its
        # report is kept under a key of its own, "<host>.<machine>.<pid>-<random>"
        self.machine = machine_name()
        self.instance = f"{self.machine}.{os.getpid()}-{secrets.token_hex(2)}"
        self._stopping = asyncio.Event()
        self._js: JetStreamContext | None = None
        self.client: Client | None = None

    @property
    def name(self) -> str:
        return self._keys.host.name

    @property
    def status_key(self) -> str:
        """Where this process reports in the status bucket."""
        return f"{self.name}.{self.instance}"

    async def start(self, nc: Client) -> None:
        """Prepare the spine, load every agent, and start them all. If any of it fails,
        what was started is stopped again (the fact log checkpointed, the helper ended)
        before the failure is raised."""
        try:
            await self._start(nc)
        except BaseException:
            try:
                await self.stop(graceful=False)
            except Exception:
                log.exception("the host could not be stopped after it failed to start")
            raise

    async def _start(self, nc: Client) -> None:
        js = nc.jetstream()
        self._js = js
        self.client = nc
        await ensure_spine(js, replicas=self.config.nats.replicas)
        self._checks.start()
        self._ticker.start()
        self._linker = make_linker(self._engine)
        await self.killswitch.start(js)
        if self._record:
            factlog = FactLog.open(self.config.facts_dir, signer=self._keys.host)
            try:
                self.recorder = Recorder(
                    client=nc,
                    factlog=factlog,
                    host_key=self._keys.host,
                    vouched=self.vouched,
                    checkpoint_every=self.config.checkpoint_every,
                )
            except BaseException:
                factlog.release()  # the directory is not left locked by a recorder never made
                raise
            await self.recorder.start()
        agents_kv = await js.key_value(AGENTS_BUCKET)
        for agent in self.config.agents.values():
            records = RecordStore(
                js,
                agents_kv,
                agent.name,
                max_bytes=nc.max_payload - HEADROOM,
                key=self._keys.agents[agent.name],
                retired_keys=_retired_keys(self._registry, agent.name),
            )
            runner = await self._prepare(nc, agent, records)
            self.runners[agent.name] = runner
        for runner in self.runners.values():
            try:
                await runner.start()
            except UntrustedRecord as exc:  # that agent stays stopped; the others run
                await runner.distrust(exc)
        self._status_task = asyncio.create_task(self._report_status(js), name="agora-status")

    async def _prepare(
        self, client: Client, agent: AgentConfig, records: RecordStore
    ) -> AgentRunner:
        component = self._component(agent.component)
        limits = SandboxLimits(
            fuel=agent.limits.fuel,
            timeout_ms=agent.limits.timeout_ms,
            memory_bytes=agent.limits.memory_mb * 1024 * 1024,
            outbox=agent.limits.outbox,
        )
        linker = self._linker
        engine = self._engine
        ticker = self._ticker

        def new_sandbox() -> Sandbox:
            assert linker is not None  # noqa: S101 - set in start() before any runner exists
            return Sandbox(
                agent=agent.name,
                engine=engine,
                ticker=ticker,
                linker=linker,
                component=component,
                limits=limits,
            )

        consumer = agent_consumer_config(
            agent.name,
            agent.channels,
            ack_wait_s=self.config.consumer.ack_wait_s,
            max_deliver=self.config.consumer.max_deliver,
            batch=agent.limits.batch,
        )
        took = await ensure_consumer(client.jetstream(), consumer)
        takes = frozenset(consumer.filter_subjects or ())
        if took and took != takes:
            log.warning(
                "agent %s: its consumer took %s and now takes %s, as this host's "
                "configuration says, for every host running the agent: they must all give "
                "it the same channels (a host handed one it lacks leaves the agent to others)",
                agent.name,
                ", ".join(sorted(took)),
                ", ".join(sorted(takes)),
            )
        return AgentRunner(
            spec=AgentSpec(
                name=agent.name,
                channels=agent.channels,
                settings=agent.settings,
                batch=agent.limits.batch,
                outbox_limit=agent.limits.outbox,
                ack_wait_s=self.config.consumer.ack_wait_s,
                remembered=agent.limits.remembered,
                registered=self._registry.get(agent.name).channels,
            ),
            client=client,
            records=records,
            guest=WatchedSandbox(agent.name, new_sandbox, limits),
            agent_key=self._keys.agents[agent.name],
            host_key=self._keys.host,
            killswitch=self.killswitch,
            vouched=self.vouched,
        )

    def _component(self, name: str) -> wc.Component:
        loaded = self._loaded.get(name)
        if loaded is None:
            loaded = load_component(self._engine, self._components[name])
            self._loaded[name] = loaded
        return loaded

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop every agent and the recorder: between batches, or at once (a crash).
        Every part is stopped whatever another raised (which is raised after)."""
        async with contextlib.AsyncExitStack() as then:  # its steps run last to first
            then.push_async_callback(self._checks.close)
            then.callback(self._ticker.stop)
            then.push_async_callback(self.killswitch.stop)
            if self.recorder is not None:
                then.push_async_callback(self.recorder.stop, graceful=graceful)
            await finish(self._status_task, self._stopping, graceful=True)
            outcomes = await asyncio.gather(
                *(r.stop(graceful=graceful) for r in self.runners.values()),
                return_exceptions=True,
            )
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    log.warning("an agent stopped with an error: %s", outcome)

    # -- observing ----------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        stopped = self.killswitch.state.stopped
        agents: dict[str, object] = {}
        for name, runner in self.runners.items():
            reason = next(
                (
                    event.kind.value
                    for channel in runner.spec.channels
                    if (event := self.killswitch.state.stopped_by(name, channel)) is not None
                ),
                None,
            )
            agents[name] = {
                "channels": list(runner.spec.channels),
                "state": reason or "running",
                "counters": dict(sorted(runner.counters.items())),
            }
        recorder = self.recorder
        return {
            "host": self.name,
            "instance": self.instance,
            "machine": self.machine,
            "pid": os.getpid(),
            "time_ms": now_ms(),
            "clock_offset_ms": self.clock_offset_ms,
            "agents": agents,
            "recorder": None
            if recorder is None
            else {
                "recorded": recorder.counters.recorded,
                "repeated": recorder.counters.repeated,
                "refused": recorder.counters.refused,
                "failure": recorder.failure,
            },
            "stopped": {
                key: {
                    "kind": e.kind.value,
                    "by": e.actor,
                    "reason": e.reason,
                    "time_ms": e.time_ms,
                }
                for key, e in sorted(stopped.items())
            },
        }

    async def _report_status(self, js: JetStreamContext) -> None:
        reports = 0
        cleared = False
        while not self._stopping.is_set():
            try:
                kv = await js.key_value(STATUS_BUCKET)
                if not cleared:
                    await self._clear_earlier_runs(js, kv)
                    cleared = True
                sent_ms = now_ms()
                revision = await kv.put(self.status_key, json.dumps(self.status()).encode())
                answered_ms = now_ms()
            except (NatsError, TimeoutError) as exc:  # the server away: said in one line
                log.warning("could not publish host status: %s", exc or type(exc).__name__)
            except Exception:
                log.warning("could not publish host status", exc_info=True)
            else:
                if reports % CLOCK_CHECK_EVERY == 0:
                    await self._measure_clock(js, kv, revision, (sent_ms, answered_ms))
                reports += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_EVERY_S):
                    await self._stopping.wait()

    async def _clear_earlier_runs(self, js: JetStreamContext, kv: KeyValue) -> None:
        """Delete the stale reports of this host's earlier runs on this machine (and one
        under the host's bare name, as earlier versions wrote): this run supersedes
        them. Another machine's stay, shown as not running until it reports again."""
        keys = await bucket_keys(js, STATUS_BUCKET)
        own_runs = f"{self.name}.{self.machine}."
        for key in keys:
            if key == self.status_key or not (key == self.name or key.startswith(own_runs)):
                continue
            try:
                entry = await kv.get(key)
                report = json.loads(entry.value or b"{}")
            except (KeyNotFoundError, ValueError):
                continue
            if not isinstance(report, dict) or is_stale(report, now_ms()):
                await kv.delete(key)

    async def _measure_clock(
        self, js: JetStreamContext, kv: KeyValue, revision: int, put_ms: tuple[int, int]
    ) -> None:
        """Compare this machine's clock with the time the server stored a report at."""
        try:
            stream: str = kv._stream  # the bucket's stream, whatever a cluster names it
            async with asyncio.timeout(CLOCK_CHECK_TIMEOUT_S):
                stored = await js.get_msg(stream, revision)
        except Exception:
            log.debug("the clock could not be compared with the server's", exc_info=True)
            return
        if stored.time is not None:
            self._check_clock(*put_ms, stored.time.timestamp() * 1000)

    def _check_clock(self, sent_ms: int, answered_ms: int, stored_ms: float) -> None:
        """How far this machine's clock is from the NATS server's (which stamps what the
        stream stores), from a status report's round trip; a warning past
        :data:`CLOCK_WARN_MS`: every host judges an act by the two clocks together."""
        offset_ms = self.clock_offset_ms = round((sent_ms + answered_ms) / 2 - stored_ms)
        if abs(offset_ms) > CLOCK_WARN_MS:
            log.warning(
                "this machine's clock is %.1f s %s the NATS server's: every host refuses as "
                "stale an act signed more than %d s ahead of it or %d s behind it, so "
                "what the agents here send may reach no one; set the clock right",
                abs(offset_ms) / 1000,
                "ahead of" if offset_ms > 0 else "behind",
                (WINDOW_MS - FRESH_FOR_MS) // 1000,
                FRESH_FOR_MS // 1000,
            )

    async def settle(self, *, quiet_s: float = 0.3, timeout_s: float = 20.0) -> None:
        """Wait until every agent and the recorder have caught up and stayed idle."""
        js = self._js
        if js is None:
            raise RuntimeError("the host is not started")
        names = [agent_consumer_name(n) for n in self.runners]
        deadline = asyncio.get_running_loop().time() + timeout_s
        quiet_since: float | None = None
        while True:
            now = asyncio.get_running_loop().time()
            waiting = [n for n, r in self.runners.items() if r.busy]
            for name in names:
                info = await js.consumer_info(STREAM, name)
                if info.num_pending or info.num_ack_pending:
                    waiting.append(name)
            if self.recorder is not None:
                last = (await js.stream_info(STREAM)).state.last_seq
                if self.recorder.position < last:
                    waiting.append("recorder")
            if now > deadline:
                raise TimeoutError(
                    f"the host did not settle within {timeout_s} s: still busy: {waiting}"
                )
            if waiting:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= quiet_s:
                return
            await asyncio.sleep(SETTLE_POLL_S)


def _retired_keys(registry: KeyRegistry, name: str) -> tuple[RetiredKey, ...]:
    """The keys ``name`` had before its present one (none if it is unregistered, which
    the host refuses at its start anyway)."""
    return registry.get(name).retired if name in registry else ()
