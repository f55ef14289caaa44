"""Host benchmarks: the whole path, on a real nats-server and real wasm agents.

Five parts, each on a fresh workspace and a fresh embedded nats-server. What the
outside world publishes comes from a process of its own (``bench_load.py``), as a
bridge's or another host's acts would, so its cost is not counted against the process
measured.

1. raw: nats-py JetStream alone on a plain stream (pipelined publish from the load
   process, pull fetch of an agent's default batch and ack here), 500-byte messages;
   the baseline the host is compared with, measured in the same run;
2. throughput: signed acts from ``maintainer`` through the whole host (verify, screen,
   the agent's call, stamp and sign its reply, publish, record and fsync), counted when
   the recorder has appended every reply, and again when the host has settled (the
   replies come back to the channel's agents, and each refusal of them is a fact too);
   with one agent, two agents, and one agent in a host process of its own beside a
   recording one ("split": ``agora up --agent NAME --no-record``, as a second machine
   would run it);
3. latency at a light load and at an offered load (one act every millisecond by
   default), in one process and split: publish to the reply's append (written to the
   fact log), to its fsync (durable: the recorder's group commit), and to the
   hand-over to the agent;
4. kill latency: with traffic flowing, how long after a kill of the channel anything
   is still delivered on it;
5. memory: resident set size of a process running the host with 1 and with 9 agents.

Nothing is asserted; goals are printed beside the figures.

    python bench/bench_host.py [--acts 5000] [--rate 1000] [--seconds 5] [--one-agent]
                               [--json] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import logging
import math
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from bench_load import READY, Message, write_messages
from bench_stats import finite, spread_ms
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import FetchTimeoutError, NotFoundError

from agora.cli.session import Session, connected, open_session
from agora.cli.up_cmd import SOURCE_WIT, prepare_host
from agora.cli.workspace import SOURCE_AGENTS, AgentPlan, create_workspace
from agora.core.acts import Performative
from agora.core.control import set_switch
from agora.core.envelope import Act, Event, EventKind, Fact
from agora.core.ids import new_id, now_ms
from agora.core.signing import sign_fact
from agora.core.spine import (
    STREAM,
    agent_consumer_name,
    channel_subject,
    event_subject,
    publish_envelope,
    publish_fact,
)
from agora.host.batch import Delivery
from agora.host.builder import build_agents
from agora.host.config import DEFAULT_BATCH, with_agents
from agora.host.killswitch import KillState
from agora.host.nats_server import EmbeddedNats
from agora.host.sandbox import load_component, make_engine
from agora.host.service import Host, startup_heap_frozen
from agora.host.signature_checks import HELPER_MODULE

CHANNEL: Final = "bench"
AGENT: Final = "echo-agent"
SECOND_AGENT: Final = "echo-agent-2"
COMPONENT: Final = "chatty"
LOAD_SCRIPT: Final = Path(__file__).resolve().parent / "bench_load.py"
AGORA: Final = Path(sys.executable).parent / "agora"  # the CLI, installed beside Python
PAYLOAD_CHARS: Final = 64  # an act's text; its signed envelope is about 650 bytes

RAW_MESSAGES: Final = 20_000
RAW_PAYLOAD_BYTES: Final = 500
RAW_STREAM: Final = "RAW"
RAW_SUBJECT: Final = "raw.bench"
PUBLISH_WINDOW: Final = 256  # publishes in flight at once, gathered like the host's outbox
FETCH_BATCH: Final = DEFAULT_BATCH  # as an agent's batch, by default
FETCH_WAIT_S: Final = 1.0

WARMUP_ACTS: Final = 200
REPLY_WAIT_S: Final = 30.0
SLOWEST_ACTS_PER_S: Final = 100  # a throughput run waits this long per act, beyond REPLY_WAIT_S
LATENCY_SECONDS: Final = 5.0
MAX_LATENCY_SECONDS: Final = 60.0
LIGHT_RATE: Final = 100.0  # acts/s: a load far below capacity, where the path itself shows
LIGHT_SECONDS: Final = 3.0
KILL_ROUNDS: Final = 20
KILL_FLOW_S: Final = 0.2  # traffic flows this long before each kill
KILL_HOLD_S: Final = 0.2  # a kill stays this long: any delivery in it is a late one
KILL_ROUND_S: Final = 1.0  # a round's flow and hold, its switches, and then some
KILL_SPARE_S: Final = 5.0
MEMORY_AGENTS: Final = (1, 9)
PROBE_TIMEOUT_S: Final = 120
STOP_WAIT_S: Final = 30.0  # a host that takes longer to stop is stuck: fail, showing where

GOAL_ACTS_PER_S: Final = 5000
GOAL_RAW_RATIO: Final = 1 / 6
GOAL_P99_MS: Final = 10.0
GOAL_KILL_P99_MS: Final = 50.0

KB_PER_MB: Final = 1024

Signed = tuple[Act, bytes]


# -- helpers ------------------------------------------------------------------------------


def rss_kb() -> int:
    """This process's resident set size (VmRSS), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no VmRSS line")


def helper_rss_kb() -> int:
    """The resident set size of this process's signature helper, if it has one, in KiB."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            cmdline = (status.parent / "cmdline").read_bytes()
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            continue  # a process that ended meanwhile
        if int(fields["PPid"]) == os.getpid() and HELPER_MODULE.encode() in cmdline:
            return int(fields.get("VmRSS", "0 kB").split()[0])
    return 0


def warm_components() -> float:
    """Build (if changed) and load the component once, so every host loads the .cwasm
    cache; the first compile ever takes seconds and is not what a host start costs.
    Returns how long a load from the cache takes, in ms."""
    components = build_agents(
        SOURCE_AGENTS, SOURCE_AGENTS / "build", SOURCE_WIT, [COMPONENT], log=lambda _: None
    )
    load_component(make_engine(), components[COMPONENT])  # compiles and caches, if needed
    start = time.perf_counter()
    load_component(make_engine(), components[COMPONENT])
    return (time.perf_counter() - start) * 1000


def new_session(root: Path, agents: Mapping[str, AgentPlan], channels: Sequence[str]) -> Session:
    return open_session(create_workspace(root, channels=channels, agents=agents))


@dataclass(frozen=True, slots=True)
class Running:
    """A started host, and a separate connection that plays the outside world."""

    session: Session
    host: Host
    js: JetStreamContext
    url: str


@asynccontextmanager
async def running_host(session: Session) -> AsyncIterator[Running]:
    host = prepare_host(session, log_line=lambda _: None)
    async with (
        EmbeddedNats(data_dir=session.config.nats.data_dir) as server,
        connected(server.url) as host_client,
        connected(server.url) as outside,
    ):
        await host.start(host_client)
        try:
            with startup_heap_frozen():  # as `agora up` serves
                yield Running(session, host, outside.jetstream(), server.url)
        finally:
            await stop_host(host)


async def stop_host(host: Host) -> None:
    """Stop the host; if it has not stopped within :data:`STOP_WAIT_S`, print where every
    task is and fail, rather than wait forever (closing NATS then ends the tasks)."""
    stopping = asyncio.create_task(host.stop(), name="bench-host-stop")
    done, _ = await asyncio.wait({stopping}, timeout=STOP_WAIT_S)
    if done:
        stopping.result()
        return
    print(f"Host.stop() has not returned after {STOP_WAIT_S:g} s; its tasks:", file=sys.stderr)
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            print(f"-- {task!r}", file=sys.stderr)
            task.print_stack(file=sys.stderr)
    raise RuntimeError(f"Host.stop() did not return within {STOP_WAIT_S:g} s")


@asynccontextmanager
async def split_hosts(root: Path, agents: Mapping[str, AgentPlan]) -> AsyncIterator[Running]:
    """Two host processes on one nats-server, as two machines would run them: this one
    records (a host with no agents), and ``agora up --agent NAME --no-record`` runs the
    agents in another."""
    async with EmbeddedNats(data_dir=root / "nats") as server:
        path = create_workspace(
            root / "workspace",
            channels=[CHANNEL],
            agents=agents,
            extra={"nats": {"url": server.url}},
        )
        session = open_session(path)
        recording = replace(session, config=with_agents(session.config, []))
        host = prepare_host(recording, log_line=lambda _: None)
        chosen = [argument for name in agents for argument in ("--agent", name)]
        async with connected(server.url) as host_client, connected(server.url) as outside:
            await host.start(host_client)
            with (root / "agents-host.log").open("w") as output:
                process = await asyncio.create_subprocess_exec(
                    str(AGORA),
                    "up",
                    "-c",
                    str(path),
                    *chosen,
                    "--no-record",
                    stdout=output,
                    stderr=output,
                )
                try:
                    js = outside.jetstream()
                    await wait_for_consumers(js, agents, process, root / "agents-host.log")
                    with startup_heap_frozen():
                        yield Running(session, host, js, server.url)
                finally:
                    process.terminate()
                    await process.wait()
                    await stop_host(host)


async def wait_for_consumers(
    js: JetStreamContext,
    agents: Iterable[str],
    process: asyncio.subprocess.Process,
    log_path: Path,
) -> None:
    """Wait until the other process has created every agent's consumer (an act
    published before it exists would never reach the agent)."""
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    for agent in agents:
        while True:
            if process.returncode is not None:
                output = await asyncio.to_thread(log_path.read_text)
                raise SystemExit(f"the agents' host exited:\n{output}")
            try:
                await js.consumer_info(STREAM, agent_consumer_name(agent))
                break
            except NotFoundError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"no consumer for {agent} after {PROBE_TIMEOUT_S} s") from None
                await asyncio.sleep(0.1)


def signed_acts(session: Session, *, channel: str = CHANNEL, hops: int = 1) -> Iterator[Signed]:
    """An endless supply of acts from the operator, each opening its own conversation."""
    speaker = session.config.operator
    key = session.key(speaker)
    text = ("status: the build is green on every target; " * 8)[:PAYLOAD_CHARS]
    while True:
        ident = new_id("act")
        act = Act(
            id=ident,
            conversation=ident,
            sender=speaker,
            channel=channel,
            act=Performative.INFORM,
            payload=text,
            hops=hops,
            time_ms=now_ms(),
        )
        yield act, sign_fact(act, key)


def take(supply: Iterator[Signed], count: int) -> list[Signed]:
    return [next(supply) for _ in range(count)]


async def publish_all(js: JetStreamContext, acts: Sequence[Signed]) -> None:
    """Publish as fast as JetStream acknowledges, :data:`PUBLISH_WINDOW` at a time."""
    for first in range(0, len(acts), PUBLISH_WINDOW):
        await asyncio.gather(
            *(
                publish_envelope(js, channel=act.channel, msg_id=act.id, envelope=envelope)
                for act, envelope in acts[first : first + PUBLISH_WINDOW]
            )
        )


class Load:
    """The outside world in a process of its own (``bench_load.py``): publishes prepared
    messages, paced or as fast as JetStream takes them, so that what publishing costs is
    not counted against the process measured. Its times are ``perf_counter_ns``, which on
    Linux is the system-wide ``CLOCK_MONOTONIC`` and so compares with this process's."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    @asynccontextmanager
    async def started(
        cls, url: str, messages: Sequence[Message], *, rate: float | None = None
    ) -> AsyncIterator[Load]:
        """Start publishing; the block runs once the publisher is connected."""
        with tempfile.TemporaryDirectory(prefix="agora-bench-load-") as tmp:
            path = Path(tmp) / "messages"
            write_messages(path, messages)
            pace = [] if rate is None else ["--rate", str(rate)]
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(LOAD_SCRIPT),
                "--url",
                url,
                "--file",
                str(path),
                *pace,
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                assert process.stdout is not None
                first = await process.stdout.readline()
                if first.decode().strip() != READY:
                    raise SystemExit(f"the load process did not start: {first!r}")
                yield cls(process)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()

    async def result(self) -> dict[str, Any]:
        """Wait until everything was published and acknowledged; the publisher's report."""
        out, _ = await self._process.communicate()
        if self._process.returncode != 0:
            raise SystemExit(f"the load process failed with exit code {self._process.returncode}")
        report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return report

    async def stop(self) -> dict[str, Any]:
        """Stop publishing now; the publisher's report of what it sent."""
        self._process.send_signal(signal.SIGTERM)
        return await self.result()


def messages_of(acts: Iterable[Signed]) -> list[Message]:
    return [(channel_subject(act.channel), act.id, envelope) for act, envelope in acts]


class Replies:
    """Counts, from the recorder, the agents' replies to a set of acts (``per_act`` to
    each, by default one from every agent), when the first to each was appended, and
    every fact appended meanwhile."""

    def __init__(self, agents: Iterable[str], *, per_act: int | None = None) -> None:
        self._agents = frozenset(agents)
        self._per_act = len(self._agents) if per_act is None else per_act
        self._expected: dict[str, int] = {}
        self._wanted = 0
        self.recorded_ns: dict[str, int] = {}
        self.durable_ns: dict[str, int] = {}  # when the first reply to each was fsynced
        self.count = 0
        self.facts = 0  # every fact appended since expect(), replies or not
        self.last_fact_ns = 0
        self.done = asyncio.Event()

    def expect(self, ids: Iterable[str]) -> None:
        """Count replies to ``ids`` from now on, and only those."""
        self._expected = dict.fromkeys(ids, self._per_act)
        self._wanted = len(self._expected) * self._per_act
        self.recorded_ns = {}
        self.durable_ns = {}
        self.count = 0
        self.facts = 0
        self.done.clear()

    def __call__(self, fact: Fact) -> None:
        now_ns = time.perf_counter_ns()
        self.facts += 1
        self.last_fact_ns = now_ns
        if not isinstance(fact, Act) or fact.sender not in self._agents:
            return
        parent = fact.in_reply_to
        if parent is None or parent not in self._expected:
            return
        self.recorded_ns.setdefault(parent, now_ns)
        self.count += 1
        if self.count >= self._wanted:
            self.done.set()

    def durable(self, fact: Fact) -> None:
        """A recorder's durable observer: the reply's fsync."""
        if isinstance(fact, Act) and fact.sender in self._agents:
            parent = fact.in_reply_to
            if parent is not None and parent in self._expected:
                self.durable_ns.setdefault(parent, time.perf_counter_ns())

    async def wait(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self.done.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


def watch(host: Host, agents: Iterable[str], *, per_act: int | None = None) -> Replies:
    replies = Replies(agents, per_act=per_act)
    assert host.recorder is not None, "the benchmark's host records"
    host.recorder.observers.append(replies)
    host.recorder.durable_observers.append(replies.durable)
    return replies


async def warm_up(run: Running, replies: Replies, supply: Iterator[Signed]) -> None:
    """A first burst through the host, not measured: the first calls are the slowest."""
    acts = take(supply, WARMUP_ACTS)
    replies.expect(act.id for act, _ in acts)
    await publish_all(run.js, acts)
    if not await replies.wait(REPLY_WAIT_S):
        raise SystemExit(f"warm-up: only {replies.count} of {len(acts)} replies were recorded")


def counters(host: Host) -> dict[str, dict[str, int]]:
    return {
        name: {str(key): value for key, value in sorted(runner.counters.items())}
        for name, runner in sorted(host.runners.items())
    }


# -- 1. raw JetStream ---------------------------------------------------------------------


async def measure_raw(root: Path, count: int) -> dict[str, float]:
    """JetStream alone: ``count`` messages published from another process (as the host's
    acts are) while a pull consumer in this one fetches and acknowledges them."""
    payload = bytes(RAW_PAYLOAD_BYTES)
    async with EmbeddedNats(data_dir=root / "nats") as server, connected(server.url) as nc:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name=RAW_STREAM, subjects=[RAW_SUBJECT], storage=StorageType.FILE)
        )
        await js.add_consumer(
            RAW_STREAM,
            ConsumerConfig(
                durable_name="raw", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=FETCH_BATCH * 4
            ),
        )
        subscription = await js.pull_subscribe_bind("raw", stream=RAW_STREAM)
        messages = [(RAW_SUBJECT, "", payload)] * count
        received = 0
        async with Load.started(server.url, messages) as load:
            while received < count:
                try:
                    fetched = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
                except (FetchTimeoutError, TimeoutError):
                    continue
                for message in fetched:
                    await message.ack()
                received += len(fetched)
            acked_ns = time.perf_counter_ns()
            report = await load.result()
    return {
        "raw_msgs_per_s": count / ((acked_ns - report["start_ns"]) / 1e9),
        "raw_publish_per_s": count / ((report["end_ns"] - report["start_ns"]) / 1e9),
        "raw_messages": count,
    }


def hosts(
    root: Path, agents: Mapping[str, AgentPlan], *, split: bool
) -> AbstractAsyncContextManager[Running]:
    if split:
        return split_hosts(root, agents)
    return running_host(new_session(root, agents, [CHANNEL]))


# -- 2. throughput ------------------------------------------------------------------------


async def measure_throughput(
    root: Path,
    count: int,
    *,
    agents: Sequence[str],
    split: bool = False,
    profile: cProfile.Profile | None = None,
) -> dict[str, Any]:
    """Publish ``count`` acts as fast as possible; measured until every agent's reply to
    each is in the fact log, and again until the host has settled (the replies come back
    to the agents too, and each refusal of them is a fact). ``split``: the agents run in
    a host process of their own (see :func:`split_hosts`)."""
    plans = {name: AgentPlan(COMPONENT, (CHANNEL,)) for name in agents}
    async with hosts(root, plans, split=split) as run:
        session = run.session
        replies = watch(run.host, agents)
        supply = signed_acts(session)
        await warm_up(run, replies, supply)
        await run.host.settle()
        acts = take(supply, count)
        replies.expect(act.id for act, _ in acts)
        if profile is not None:
            profile.enable()
        patience_s = REPLY_WAIT_S + count / SLOWEST_ACTS_PER_S
        async with Load.started(run.url, messages_of(acts)) as load:
            complete = await replies.wait(patience_s)
            replied_ns = time.perf_counter_ns()
            report = await load.result()
        start_ns, published_ns = report["start_ns"], report["end_ns"]
        if profile is not None:
            profile.disable()
        await run.host.settle(timeout_s=patience_s)
        seen = counters(run.host)
    seconds = (replied_ns - start_ns) / 1e9
    settled_s = (replies.last_fact_ns - start_ns) / 1e9
    return {
        "acts": count,
        "replies": replies.count,
        "complete": complete,
        "acts_per_s": count / seconds,
        "replies_per_s": replies.count / seconds,
        "publish_per_s": count / ((published_ns - start_ns) / 1e9),
        "seconds": seconds,
        "settled_acts_per_s": count / settled_s,
        "settled_seconds": settled_s,
        "facts_per_act": replies.facts / count,
        "envelope_bytes": len(acts[0][1]),
        "counters": seen,
    }


# -- 3. latency ---------------------------------------------------------------------------


async def paced_latency(
    run: Running, replies: Replies, supply: Iterator[Signed], *, rate: float, seconds: float
) -> dict[str, Any]:
    """Offer ``rate`` acts/s for ``seconds``; time each from just before its publish to
    the append of its reply, and to its hand-over to the agent."""
    delivered_ns: dict[str, int] = {}

    def on_delivery(delivery: Delivery) -> None:
        delivered_ns[delivery.act.id] = delivery.at_ns

    runner = run.host.runners.get(AGENT)  # in another process when the hosts are split
    observers = runner.observers if runner is not None else []
    observers.append(on_delivery)
    acts = take(supply, round(rate * seconds))
    replies.expect(act.id for act, _ in acts)
    async with Load.started(run.url, messages_of(acts), rate=rate) as load:
        report = await load.result()
    sent_ns: dict[str, int] = report["sent_ns"]
    offered = report["offered_per_s"]
    await replies.wait(REPLY_WAIT_S)
    await run.host.settle()
    observers.remove(on_delivery)
    end_to_end = [
        replies.recorded_ns[i] - t for i, t in sent_ns.items() if i in replies.recorded_ns
    ]
    to_agent = [delivered_ns[i] - t for i, t in sent_ns.items() if i in delivered_ns]
    durable = [replies.durable_ns[i] - t for i, t in sent_ns.items() if i in replies.durable_ns]
    return {
        "offered_per_s": offered,
        "acts": len(acts),
        "replies": len(end_to_end),
        "reply": spread_ms(end_to_end),
        "durable": spread_ms(durable),
        "delivery": spread_ms(to_agent),
    }


async def measure_latency(
    root: Path, *, rate: float, seconds: float, split: bool = False
) -> dict[str, Any]:
    """Latency at a light load first (where the path itself shows), then at ``rate``."""
    async with hosts(root, {AGENT: AgentPlan(COMPONENT, (CHANNEL,))}, split=split) as run:
        session = run.session
        replies = watch(run.host, [AGENT])
        supply = signed_acts(session)
        await warm_up(run, replies, supply)
        await run.host.settle()
        light = await paced_latency(run, replies, supply, rate=LIGHT_RATE, seconds=LIGHT_SECONDS)
        loaded = await paced_latency(run, replies, supply, rate=rate, seconds=seconds)
    return {"light": light, "loaded": loaded}


# -- 4. kill latency ----------------------------------------------------------------------


def switch_event(session: Session, kind: EventKind) -> tuple[Event, bytes]:
    operator = session.config.operator
    event = Event(
        id=new_id("ev"),
        kind=kind,
        actor=operator,
        time_ms=now_ms(),
        reason="kill" if kind is EventKind.KILLED else "resume",
        detail=f"the host benchmark: {kind.value} #{CHANNEL}",
        channel=CHANNEL,
    )
    return event, sign_fact(event, session.key(operator))


async def switch(run: Running, kind: EventKind) -> tuple[int, int]:
    """Write a kill or a resume of the channel as ``agora kill`` does; return the
    perf_counter_ns just before the write and just after it returned."""
    event, envelope = switch_event(run.session, kind)
    before = time.perf_counter_ns()
    await set_switch(run.js, event, envelope)
    after = time.perf_counter_ns()
    await publish_fact(
        run.js, subject=event_subject(event.actor), msg_id=event.id, envelope=envelope
    )
    return before, after


def blocked(state: KillState) -> bool:
    return state.blocks(AGENT, CHANNEL)


class KillWatch:
    """When the agent was last handed an act on the channel, and when the host's
    switch flipped to killed."""

    def __init__(self) -> None:
        self.deliveries_ns: list[int] = []
        self.flipped_ns: list[int] = []

    def on_delivery(self, delivery: Delivery) -> None:
        if delivery.act.channel == CHANNEL:
            self.deliveries_ns.append(delivery.at_ns)

    def on_switch(self, key: str, event: Event) -> None:
        if key == f"channel.{CHANNEL}" and event.kind is EventKind.KILLED:
            self.flipped_ns.append(time.perf_counter_ns())


async def measure_kill(root: Path, *, rate: float, rounds: int) -> dict[str, Any]:
    """With ``rate`` acts/s flowing, kill the channel ``rounds`` times; after each kill,
    anything still handed to the agent is late."""
    session = new_session(root, {AGENT: AgentPlan(COMPONENT, (CHANNEL,))}, [CHANNEL])
    async with running_host(session) as run:
        host = run.host
        replies = watch(host, [AGENT])
        supply = signed_acts(session)
        await warm_up(run, replies, supply)
        watched = KillWatch()
        host.runners[AGENT].observers.append(watched.on_delivery)
        host.killswitch.listeners.append(watched.on_switch)
        late_ns: list[int] = []
        propagation_ns: list[int] = []
        after_kill: list[int] = []
        flowing: list[int] = []
        # more acts than the rounds can take at ``rate``; the load is stopped after them
        traffic = take(supply, round(rate * (rounds * KILL_ROUND_S + KILL_SPARE_S)))
        async with Load.started(run.url, messages_of(traffic), rate=rate) as load:
            for _ in range(rounds):
                watched.deliveries_ns.clear()
                await asyncio.sleep(KILL_FLOW_S)
                flowing.append(len(watched.deliveries_ns))
                written_ns, kill_ns = await switch(run, EventKind.KILLED)
                await host.killswitch.wait_for(blocked)
                await asyncio.sleep(KILL_HOLD_S)
                delivered = list(watched.deliveries_ns)
                late_ns.append(max(0, max(delivered, default=0) - kill_ns))
                after_kill.append(sum(1 for at_ns in delivered if at_ns > kill_ns))
                propagation_ns.append(watched.flipped_ns[-1] - written_ns)
                await switch(run, EventKind.RESUMED)
                await host.killswitch.wait_for(lambda state: not blocked(state))
            report = await load.stop()
        seen = counters(host)
    return {
        "rounds": rounds,
        "offered_per_s": report["offered_per_s"],
        "delivered_before_kill_min": min(flowing, default=0),
        "kill_to_last_delivery": spread_ms(late_ns),
        "switch_propagation": spread_ms(propagation_ns),
        "deliveries_after_kill": sum(after_kill),
        "rounds_with_late_delivery": sum(1 for n in after_kill if n),
        "killed_refusals": seen[AGENT].get("killed", 0),
        "discarded_by_kill": seen[AGENT].get("discarded-by-kill", 0),
    }


# -- 5. memory ----------------------------------------------------------------------------


async def probe_memory(agents: int) -> dict[str, int]:
    """Run in a fresh process: RSS before a host with ``agents`` agents starts, and after
    each agent has been called once."""
    with tempfile.TemporaryDirectory(prefix="agora-bench-memory-") as tmp:
        plans = {f"mem-agent-{i}": AgentPlan(COMPONENT, (f"mem-{i}",)) for i in range(agents)}
        session = new_session(Path(tmp), plans, [f"mem-{i}" for i in range(agents)])
        before = rss_kb()
        async with running_host(session) as run:
            replies = watch(run.host, plans, per_act=1)
            acts = [next(signed_acts(session, channel=f"mem-{i}")) for i in range(agents)]
            replies.expect(act.id for act, _ in acts)
            await publish_all(run.js, acts)
            if not await replies.wait(REPLY_WAIT_S):
                raise SystemExit(f"memory probe: {replies.count} of {agents} agents answered")
            after = rss_kb()
            helper = helper_rss_kb()
    return {"agents": agents, "rss_before_kb": before, "rss_after_kb": after, "helper_kb": helper}


def measure_memory() -> dict[str, float]:
    probes: dict[int, dict[str, int]] = {}
    for agents in MEMORY_AGENTS:
        finished = subprocess.run(  # noqa: S603 - this very script, with a number
            [sys.executable, __file__, "--memory-probe", str(agents)],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
        if finished.returncode != 0:
            raise SystemExit(f"memory probe with {agents} agents failed:\n{finished.stderr}")
        probes[agents] = json.loads(finished.stdout.strip().splitlines()[-1])
    few, many = MEMORY_AGENTS
    per_agent_kb = (probes[many]["rss_after_kb"] - probes[few]["rss_after_kb"]) / (many - few)
    return {
        "memory_per_agent_mb": per_agent_kb / KB_PER_MB,
        "host_rss_1_agent_mb": probes[few]["rss_after_kb"] / KB_PER_MB,
        "host_growth_1_agent_mb": (probes[few]["rss_after_kb"] - probes[few]["rss_before_kb"])
        / KB_PER_MB,
        f"host_rss_{many}_agents_mb": probes[many]["rss_after_kb"] / KB_PER_MB,
        "rss_before_host_mb": probes[few]["rss_before_kb"] / KB_PER_MB,
        "signature_helper_rss_mb": probes[few]["helper_kb"] / KB_PER_MB,
    }


# -- the run ------------------------------------------------------------------------------


def print_profile(profile: cProfile.Profile, *, top: int = 15) -> None:
    """The event loop's profile of the 1-agent throughput run, on stderr. The agents'
    calls run in worker threads, which cProfile does not see; and the profiler slows
    the loop, so that run's figures are not comparable with an unprofiled run's."""
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).strip_dirs().sort_stats(order).print_stats(top)
        print(f"--- throughput (profiled), event loop, top {top} by {order} ---", file=sys.stderr)
        print(out.getvalue(), file=sys.stderr)


def line(name: str, value: str, note: str = "") -> None:
    print(f"{name:<48}{value:>16}   {note}".rstrip())


def ms(value: float) -> str:
    return f"{value:,.2f} ms"


def show_throughput(results: dict[str, Any]) -> None:
    raw = results["raw_msgs_per_s"]
    line("raw JetStream publish alone (pipelined)", f"{results['raw_publish_per_s']:,.0f} /s")
    line(
        f"raw JetStream publish + fetch {FETCH_BATCH} + ack",
        f"{raw:,.0f} /s",
        f"(the baseline; {RAW_PAYLOAD_BYTES}-byte messages)",
    )
    for label, key in (
        ("1 agent", "throughput"),
        ("2 agents", "throughput_2_agents"),
        ("1 agent, split", "throughput_split"),
    ):
        part = results.get(key)
        if part is None:
            continue
        missing = "" if part["complete"] else f"; INCOMPLETE: {part['replies']:,} replies"
        faults = sum(seen.get("faults", 0) for seen in part["counters"].values())
        if faults:
            missing += f"; {faults} agent fault(s): see the log above"
        if part.get("profiled"):
            missing += "; slowed by cProfile"
        line(
            f"host, {label}, {part['acts']:,} acts: replies in log",
            f"{part['acts_per_s']:,.0f} acts/s",
            f"{part['acts_per_s'] / raw:.1%} of raw; goal {GOAL_ACTS_PER_S:,} /s and "
            f"{GOAL_RAW_RATIO:.1%}{missing}",
        )
        line(
            f"host, {label}: until settled",
            f"{part['settled_acts_per_s']:,.0f} acts/s",
            f"{part['settled_acts_per_s'] / raw:.1%} of raw; "
            f"{part['facts_per_act']:.1f} facts recorded per act",
        )


def show_latency(results: dict[str, Any]) -> None:
    for part, point in (
        ("latency", "light"),
        ("latency", "loaded"),
        ("latency_split", "light"),
        ("latency_split", "loaded"),
    ):
        latency = results[part][point]
        split = ", split" if part == "latency_split" else ""
        offered = f"at {latency['offered_per_s']:,.0f} acts/s{split}"
        for label, key, goal in (
            ("publish -> reply appended", "reply", f"; goal p99 < {GOAL_P99_MS:g} ms"),
            ("publish -> reply fsynced", "durable", "; the recorder's group commit"),
            ("publish -> handed to agent", "delivery", "; taken when the call begins"),
        ):
            spread = latency[key]
            if math.isnan(spread["p50_ms"]):
                continue  # hand-overs happen in the other process when the hosts are split
            line(
                f"{label} {offered}",
                f"{spread['p50_ms']:.1f} / {spread['p99_ms']:.1f} ms",
                f"p50 / p99; p95 {spread['p95_ms']:.1f}, max {spread['max_ms']:.1f} ms{goal}",
            )
        if latency["replies"] < latency["acts"]:
            line("  replies missing", f"{latency['acts'] - latency['replies']:,}")


def show_kill(results: dict[str, Any]) -> None:
    kill = results["kill"]
    late = kill["kill_to_last_delivery"]
    line(
        f"kill -> last delivery ({kill['rounds']} kills)",
        f"{late['p50_ms']:.1f} / {late['p99_ms']:.1f} ms",
        f"p50 / p99; max {late['max_ms']:.1f} ms; goal p99 < {GOAL_KILL_P99_MS:g} ms; "
        f"traffic {kill['offered_per_s']:,.0f} acts/s",
    )
    line("kill written -> host switch flipped, p50", ms(kill["switch_propagation"]["p50_ms"]))
    line(
        "deliveries after a kill",
        f"{kill['deliveries_after_kill']:,}",
        f"in {kill['rounds_with_late_delivery']} of {kill['rounds']} kills (calls under way; "
        f"{kill['discarded_by_kill']:,} outputs discarded); "
        f"{kill['killed_refusals']:,} acts refused as killed",
    )


def show_memory(results: dict[str, Any]) -> None:
    line("component load from the .cwasm cache", ms(results["component_load_ms"]))
    line("memory per extra agent (9 vs 1)", f"{results['memory_per_agent_mb']:,.1f} MB")
    line(
        "host process RSS, 1 agent",
        f"{results['host_rss_1_agent_mb']:,.1f} MB",
        f"{results['host_growth_1_agent_mb']:,.1f} MB of it from starting the host, "
        f"{results['rss_before_host_mb']:,.1f} MB before (Python and imports)",
    )
    line(
        "signature helper process RSS",
        f"{results['signature_helper_rss_mb']:,.1f} MB",
        "beside the host process (none on one core)",
    )


def show(results: dict[str, Any]) -> None:
    show_throughput(results)
    show_latency(results)
    show_kill(results)
    show_memory(results)


async def run_all(arguments: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    results.update(await measure_raw(workdir / "raw", RAW_MESSAGES))
    profile = cProfile.Profile() if arguments.profile else None
    results["throughput"] = await measure_throughput(
        workdir / "throughput", arguments.acts, agents=[AGENT], profile=profile
    )
    if profile is not None:
        results["throughput"]["profiled"] = True
        print_profile(profile)
    if not arguments.one_agent:
        results["throughput_2_agents"] = await measure_throughput(
            workdir / "throughput-2", arguments.acts // 2, agents=[AGENT, SECOND_AGENT]
        )
    results["throughput_split"] = await measure_throughput(
        workdir / "throughput-split", arguments.acts, agents=[AGENT], split=True
    )
    results["latency"] = await measure_latency(
        workdir / "latency", rate=arguments.rate, seconds=arguments.seconds
    )
    results["latency_split"] = await measure_latency(
        workdir / "latency-split", rate=arguments.rate, seconds=arguments.seconds, split=True
    )
    results["kill"] = await measure_kill(workdir / "kill", rate=arguments.rate, rounds=KILL_ROUNDS)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--acts", type=int, default=5000, help="acts for the throughput run")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered acts/s for latency")
    parser.add_argument("--seconds", type=float, default=LATENCY_SECONDS)
    parser.add_argument("--one-agent", action="store_true", help="skip the 2-agent throughput")
    parser.add_argument("--profile", action="store_true", help="cProfile the throughput run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if not 0 < arguments.seconds <= MAX_LATENCY_SECONDS:
        # the acts are signed before they are sent: later than the host's freshness
        # window after that, they would be refused as stale copies
        parser.error(
            f"--seconds: expected more than 0 and at most {MAX_LATENCY_SECONDS}, "
            f"got {arguments.seconds}"
        )
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")

    if arguments.memory_probe is not None:
        print(json.dumps(asyncio.run(probe_memory(arguments.memory_probe))))
        return
    results: dict[str, Any] = {"component_load_ms": warm_components()}
    with tempfile.TemporaryDirectory(prefix="agora-bench-host-") as tmp:
        results.update(asyncio.run(run_all(arguments, Path(tmp))))
    results.update(measure_memory())
    raw = results["raw_msgs_per_s"]
    for key in ("throughput", "throughput_2_agents", "throughput_split"):
        if key in results:
            results[key]["vs_raw_ratio"] = results[key]["acts_per_s"] / raw
            results[key]["settled_vs_raw_ratio"] = results[key]["settled_acts_per_s"] / raw
    if arguments.json:
        print(json.dumps(finite(results), sort_keys=True, allow_nan=False))
        return
    show(results)


if __name__ == "__main__":
    main()
