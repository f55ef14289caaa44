"""Bridge benchmarks: GitHub's webhooks in, on a real nats-server and the real receiver.

Two parts, each on a fresh workspace and a fresh embedded nats-server:

1. intake: signed ``issue_comment`` deliveries POSTed to ``WebhookReceiver`` (signature
   check, dedup lookup, durable JetStream publish, then 202) by an aiohttp client with
   keep-alive connections, each with a fresh ``X-GitHub-Delivery``. The body is the one
   the GitHub stand-in sends for a comment. Measured beside three baselines taken in the
   same run: the same client against an aiohttp handler that answers 202 and does
   nothing (raw HTTP), and nats-py JetStream alone doing the receiver's NATS calls
   (publish; lookup + publish; bucket + lookup + publish). The client runs twice: on the
   server's own event loop, and in a separate process. Either way it shares this
   machine's cores with the server and nats-server, so every rate here is a floor;
2. comment to agent: the stand-in, the bridge and a host with one ``chatty`` agent on
   the linked channel, in one process, as the tests run them. One comment at a time,
   timed from just before the stand-in creates it (and queues its webhook) to the host
   handing the act to the agent (taken when the agent's call returns), with the stops
   between: the delivery stored in
   ``AGORA_WEBHOOKS`` and the act published on the channel (both seen by a plain NATS
   subscriber on another connection).

Nothing is asserted; goals are printed beside the figures.

    python bench/bench_bridge.py [--seconds 5] [--concurrency 32] [--comments 50]
                                 [--json] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import logging
import os
import pstats
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web
from bench_stats import NS_PER_S, finite, spread_ms
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from agora.bridge.config import DEFAULT_MAX_BODY, Secret, bridge_config
from agora.bridge.inbound import act_id_for_comment
from agora.bridge.service import Bridge
from agora.bridge.standin import GitHubStandIn
from agora.bridge.streams import (
    DELIVERIES_BUCKET,
    WEBHOOK_STREAM,
    WEBHOOK_SUBJECT_PREFIX,
    ensure_bridge_streams,
)
from agora.bridge.webhook import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WebhookReceiver,
    signature_of,
)
from agora.cli.session import connected, open_session
from agora.cli.up_cmd import prepare_host
from agora.cli.workspace import AgentPlan, create_workspace
from agora.core.keys import Role
from agora.core.received import MSG_ID_HEADER
from agora.core.spine import channel_subject, ensure_spine
from agora.host.batch import Delivery
from agora.host.nats_server import EmbeddedNats

CORES: Final = os.cpu_count() or 1
SECRET: Final = "webhook-secret-for-the-benchmark"  # noqa: S105 - a fixture, not a credential
REPO: Final = "octo/repo"
HUMAN: Final = "mona"
BOT: Final = "agora-bridge[bot]"
CHANNEL: Final = "build-coord"
AGENT: Final = "synth-agent"
COMPONENT: Final = "chatty"
COMMENT_TEXT: Final = "/agora request ship v0.3?"
EVENT: Final = "issue_comment"
RAW_SUBJECT: Final = WEBHOOK_SUBJECT_PREFIX + "bench_raw"  # in AGORA_WEBHOOKS, like a delivery

SECONDS: Final = 5.0
CONCURRENCY: Final = 32
COMMENTS: Final = 50
WARMUP_S: Final = 0.5  # every load starts with this much unmeasured traffic
RAW_NATS_SECONDS: Final = 2.0
WARMUP_COMMENTS: Final = 5
COMMENT_GAP_S: Final = 0.02  # between one comment's delivery and the next comment
COMMENT_WAIT_S: Final = 10.0  # a comment not handed to the agent by then is missing
PROBE_TIMEOUT_S: Final = 120
PROFILE_TOP: Final = 25

GOAL_ACCEPTED_PER_S: Final = 1500
GOAL_P99_MS: Final = 25.0
ACCEPTED: Final = 202
CLIENT_ERROR: Final = 0  # the status recorded when the request failed in the client


# -- helpers ------------------------------------------------------------------------------


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on a free loopback port for as long as the block runs; its base URL."""
    sock = socket.socket(socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def trivial_app() -> web.Application:
    """The raw HTTP baseline: 202 at once, the body left to aiohttp to discard."""

    async def accept(_: web.Request) -> web.Response:
        return web.Response(status=ACCEPTED)

    app = web.Application(client_max_size=DEFAULT_MAX_BODY)
    app.router.add_post("/webhook", accept)
    return app


def new_standin_world(github: GitHubStandIn) -> int:
    """The people, the repository and the linked issue; the issue's number."""
    github.add_user(HUMAN, association="MEMBER")
    github.add_user(BOT, type="Bot", association="COLLABORATOR")
    github.create_repo(REPO)
    return github.create_issue(REPO, "Coordination", "agents talk here", by=HUMAN)


async def captured_delivery() -> tuple[bytes, dict[str, str]]:
    """The body and headers the GitHub stand-in sends for one new comment."""
    bodies: list[tuple[bytes, dict[str, str]]] = []

    async def record(request: web.Request) -> web.Response:
        if request.headers.get(EVENT_HEADER) == EVENT:
            bodies.append((await request.read(), dict(request.headers)))
        return web.Response(status=ACCEPTED)

    app = web.Application()
    app.router.add_post("/webhook", record)
    async with serving(app) as url, GitHubStandIn() as github:
        issue = new_standin_world(github)
        github.set_webhook(url + "/webhook", SECRET)
        github.comment(REPO, issue, COMMENT_TEXT, by=HUMAN)
        await github.drain()
    [(body, received)] = bodies
    dropped = {"host", "content-length", "accept-encoding"}
    headers = {name: value for name, value in received.items() if name.lower() not in dropped}
    headers[SIGNATURE_HEADER] = signature_of(SECRET, body)
    return body, headers


# -- 1. intake: the load --------------------------------------------------------------------


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    concurrency: int,
    seconds: float,
) -> dict[str, Any]:
    """``concurrency`` workers POST ``body`` back to back for ``seconds``, each with a
    fresh delivery id; every request is timed from just before the POST to its read
    response."""
    latencies: list[int] = []
    statuses: Counter[int] = Counter()
    deadline = time.perf_counter_ns() + int(seconds * NS_PER_S)

    async def worker() -> None:
        while time.perf_counter_ns() < deadline:
            sent = {**headers, DELIVERY_HEADER: str(uuid.uuid4())}
            start = time.perf_counter_ns()
            try:
                async with session.post(url, data=body, headers=sent) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError:
                status = CLIENT_ERROR
            latencies.append(time.perf_counter_ns() - start)
            statuses[status] += 1

    start = time.perf_counter_ns()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    elapsed_s = (time.perf_counter_ns() - start) / NS_PER_S
    return {
        "requests": len(latencies),
        "accepted": statuses[ACCEPTED],
        "accepted_per_s": statuses[ACCEPTED] / elapsed_s,
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "seconds": elapsed_s,
        "latency": spread_ms(latencies),
    }


async def generate_load(
    url: str, body: bytes, headers: Mapping[str, str], *, concurrency: int, seconds: float
) -> dict[str, Any]:
    """A warm-up, then the measured load, over ``concurrency`` keep-alive connections."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await drive(session, url, body, headers, concurrency=concurrency, seconds=WARMUP_S)
        return await drive(session, url, body, headers, concurrency=concurrency, seconds=seconds)


async def load_from_process(
    workdir: Path,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    concurrency: int,
    seconds: float,
) -> dict[str, Any]:
    """:func:`generate_load` in a fresh process (this script), while this loop serves."""
    body_path = workdir / "body.json"
    body_path.write_bytes(body)
    spec = workdir / "load.json"
    spec.write_text(
        json.dumps(
            {
                "url": url,
                "body": str(body_path),
                "headers": dict(headers),
                "concurrency": concurrency,
                "seconds": seconds,
            }
        )
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--load-probe",
        str(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), PROBE_TIMEOUT_S)
    if process.returncode != 0:
        raise SystemExit(f"the load process failed:\n{err.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def load_probe(spec_path: Path) -> dict[str, Any]:
    spec = json.loads(spec_path.read_text())
    return asyncio.run(
        generate_load(
            spec["url"],
            Path(spec["body"]).read_bytes(),
            spec["headers"],
            concurrency=spec["concurrency"],
            seconds=spec["seconds"],
        )
    )


# -- 1. intake: raw JetStream ---------------------------------------------------------------


async def nats_rate(
    operation: Callable[[], Awaitable[object]], *, concurrency: int, seconds: float
) -> dict[str, Any]:
    """``operation`` awaited back to back by ``concurrency`` workers for ``seconds``."""
    latencies: list[int] = []
    deadline = time.perf_counter_ns() + int(seconds * NS_PER_S)

    async def worker() -> None:
        while time.perf_counter_ns() < deadline:
            start = time.perf_counter_ns()
            await operation()
            latencies.append(time.perf_counter_ns() - start)

    start = time.perf_counter_ns()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    elapsed_s = (time.perf_counter_ns() - start) / NS_PER_S
    return {"per_s": len(latencies) / elapsed_s, "latency": spread_ms(latencies)}


async def measure_raw_nats(
    js: JetStreamContext, body: bytes, *, concurrency: int, seconds: float
) -> dict[str, Any]:
    """The receiver's NATS calls for one delivery, alone: the publish; the dedup lookup
    and the publish; and, as the receiver makes them, the bucket, the lookup and the
    publish."""
    kv = await js.key_value(DELIVERIES_BUCKET)

    async def publish() -> None:
        delivery = str(uuid.uuid4())
        await js.publish(
            RAW_SUBJECT,
            body,
            headers={MSG_ID_HEADER: delivery, EVENT_HEADER: EVENT, DELIVERY_HEADER: delivery},
        )

    async def lookup_and_publish() -> None:
        with suppress(KeyNotFoundError):
            await kv.get(str(uuid.uuid4()))
        await publish()

    async def bucket_lookup_and_publish() -> None:
        bucket = await js.key_value(DELIVERIES_BUCKET)
        with suppress(KeyNotFoundError):
            await bucket.get(str(uuid.uuid4()))
        await publish()

    results: dict[str, Any] = {}
    for name, operation in (
        ("publish", publish),
        ("lookup_publish", lookup_and_publish),
        ("bucket_lookup_publish", bucket_lookup_and_publish),
    ):
        await nats_rate(operation, concurrency=concurrency, seconds=WARMUP_S)
        results[name] = await nats_rate(operation, concurrency=concurrency, seconds=seconds)
        await purge(js)
    return results


async def purge(js: JetStreamContext) -> int:
    """Empty ``AGORA_WEBHOOKS`` (the load fills the disk otherwise); how many it held."""
    held = (await js.stream_info(WEBHOOK_STREAM)).state.messages
    await js.purge_stream(WEBHOOK_STREAM)
    return held


# -- 1. intake: the runs ---------------------------------------------------------------------


def profile_report(profile: cProfile.Profile) -> str:
    out = io.StringIO()
    for order in ("tottime", "cumulative"):
        print(f"--- the server process, top {PROFILE_TOP} by {order} ---", file=out)
        stats = pstats.Stats(profile, stream=out).strip_dirs().sort_stats(order)
        stats.print_stats(PROFILE_TOP)
    return out.getvalue()


async def measure_intake(
    workdir: Path,
    body: bytes,
    headers: Mapping[str, str],
    *,
    concurrency: int,
    seconds: float,
    profile: bool,
) -> dict[str, Any]:
    results: dict[str, Any] = {"body_bytes": len(body), "concurrency": concurrency}
    async with (
        EmbeddedNats(data_dir=workdir / "nats") as server,
        connected(server.url) as nc,
    ):
        js = nc.jetstream()
        await ensure_spine(js)
        await ensure_bridge_streams(js)
        results["raw_nats"] = await measure_raw_nats(
            js, body, concurrency=concurrency, seconds=min(seconds, RAW_NATS_SECONDS)
        )
        receiver = WebhookReceiver(
            nc=nc, secret=Secret(SECRET, "the benchmark"), max_body_bytes=DEFAULT_MAX_BODY
        )
        stored = 0  # the receiver's deliveries found in the stream, warm-ups included
        async with (
            serving(trivial_app()) as trivial_url,
            serving(receiver.application()) as receiver_url,
        ):
            for name, url in (("raw_http", trivial_url), ("receiver", receiver_url)):
                target = url + "/webhook"
                results[f"{name}_same_loop"] = await generate_load(
                    target, body, headers, concurrency=concurrency, seconds=seconds
                )
                stored += await purge(js)
                results[f"{name}_own_process"] = await load_from_process(
                    workdir, target, body, headers, concurrency=concurrency, seconds=seconds
                )
                stored += await purge(js)
            if profile:
                profiler = cProfile.Profile()
                profiler.enable()
                profiled = await load_from_process(
                    workdir,
                    receiver_url + "/webhook",
                    body,
                    headers,
                    concurrency=concurrency,
                    seconds=seconds,
                )
                profiler.disable()
                stored += await purge(js)
                results["receiver_own_process_profiled"] = profiled
                results["profile"] = profile_report(profiler)
        results["receiver_counters"] = {
            "accepted": receiver.accepted,
            "stored": stored,
            "duplicates": receiver.duplicates,
            "refused": receiver.refused,
        }
    return results


# -- 2. comment to agent --------------------------------------------------------------------


class Stops:
    """When each comment's delivery was stored, its act published, the act handed over."""

    def __init__(self) -> None:
        self.stored_ns: dict[int, int] = {}  # by comment id
        self.published_ns: dict[str, int] = {}  # by act id
        self.delivered_ns: dict[str, int] = {}  # by act id
        self.arrived = asyncio.Event()

    async def on_stored(self, msg: Msg) -> None:
        at_ns = time.perf_counter_ns()
        comment = json.loads(msg.data).get("comment")
        if isinstance(comment, dict) and isinstance(comment.get("id"), int):
            self.stored_ns.setdefault(comment["id"], at_ns)

    async def on_published(self, msg: Msg) -> None:
        at_ns = time.perf_counter_ns()
        ident = (msg.headers or {}).get(MSG_ID_HEADER)
        if ident is not None:
            self.published_ns.setdefault(ident, at_ns)

    def on_delivery(self, delivery: Delivery) -> None:
        self.delivered_ns.setdefault(delivery.act.id, delivery.at_ns)
        self.arrived.set()


async def comment_once(github: GitHubStandIn, issue: int, stops: Stops) -> tuple[int, int]:
    """Create one comment and wait until its act reaches the agent (or a time-out); the
    comment's id and the perf_counter_ns just before it was created."""
    stops.arrived.clear()
    created_ns = time.perf_counter_ns()
    comment = github.comment(REPO, issue, COMMENT_TEXT, by=HUMAN)
    act = act_id_for_comment(comment)
    deadline = time.monotonic() + COMMENT_WAIT_S
    while act not in stops.delivered_ns and time.monotonic() < deadline:
        stops.arrived.clear()
        try:
            await asyncio.wait_for(stops.arrived.wait(), deadline - time.monotonic())
        except TimeoutError:
            break
    await github.drain()
    await asyncio.sleep(COMMENT_GAP_S)
    return comment, created_ns


async def measure_comments(root: Path, count: int) -> dict[str, Any]:
    github = GitHubStandIn()
    base_url = await github.start()
    try:
        issue = new_standin_world(github)
        token = github.issue_token(BOT)
        section: dict[str, Any] = {
            "webhook_secret": {"env": "HOOK_SECRET"},
            "listen": {"port": 0},
            "github": {"api_url": base_url, "token": {"env": "GH_TOKEN"}, "login": BOT},
            "links": {CHANNEL: f"{REPO}#{issue}"},
            "mirror": [CHANNEL],
        }
        session = open_session(
            create_workspace(
                root,
                channels=[CHANNEL],
                agents={AGENT: AgentPlan(COMPONENT, (CHANNEL,))},
                extra={"bridge": section},
                others={"bridge": (Role.BRIDGE, [CHANNEL])},
            )
        )
        config = bridge_config(session.config, environ={"HOOK_SECRET": SECRET, "GH_TOKEN": token})
        assert config is not None, "the workspace has a bridge section"
        host = prepare_host(session, log_line=lambda _: None)
        stops = Stops()
        async with (
            EmbeddedNats(data_dir=session.config.nats.data_dir) as server,
            connected(server.url) as client,
            connected(server.url) as watcher,
        ):
            await host.start(client)
            bridge = Bridge(
                config=config,
                channels=set(session.config.channels),
                key=session.key(config.identity),
                registry=session.registry,
                facts=host.recorder,
            )
            try:
                await bridge.start(client)
                await watcher.subscribe(WEBHOOK_SUBJECT_PREFIX + EVENT, cb=stops.on_stored)
                await watcher.subscribe(channel_subject(CHANNEL), cb=stops.on_published)
                await watcher.flush()
                host.runners[AGENT].observers.append(stops.on_delivery)
                github.set_webhook(bridge.url + "/webhook", SECRET)
                for _ in range(WARMUP_COMMENTS):
                    await comment_once(github, issue, stops)
                timed = [await comment_once(github, issue, stops) for _ in range(count)]
            finally:
                await bridge.stop()
                await host.stop()
    finally:
        await github.stop()
    return comment_figures(timed, stops)


def comment_figures(timed: Sequence[tuple[int, int]], stops: Stops) -> dict[str, Any]:
    to_agent: list[int] = []
    to_stored: list[int] = []
    stored_to_published: list[int] = []
    published_to_agent: list[int] = []
    for comment, created_ns in timed:
        act = act_id_for_comment(comment)
        stored = stops.stored_ns.get(comment)
        published = stops.published_ns.get(act)
        delivered = stops.delivered_ns.get(act)
        if delivered is not None:
            to_agent.append(delivered - created_ns)
        if stored is not None:
            to_stored.append(stored - created_ns)
            if published is not None:
                stored_to_published.append(published - stored)
        if published is not None and delivered is not None:
            published_to_agent.append(delivered - published)
    return {
        "comments": len(timed),
        "delivered": len(to_agent),
        "comment_to_agent": spread_ms(to_agent),
        "comment_to_stored": spread_ms(to_stored),
        "stored_to_published": spread_ms(stored_to_published),
        "published_to_agent": spread_ms(published_to_agent),
    }


# -- the run ------------------------------------------------------------------------------


def line(name: str, value: str, note: str = "") -> None:
    print(f"{name:<52}{value:>16}   {note}".rstrip())


def show_load(name: str, load: dict[str, Any], *, goal: bool) -> None:
    latency = load["latency"]
    others = {s: n for s, n in load["statuses"].items() if int(s) != ACCEPTED}
    note = f"p50 {latency['p50_ms']:.1f} / p99 {latency['p99_ms']:.1f} / max "
    note += f"{latency['max_ms']:.1f} ms"
    if goal:
        rate_ok = load["accepted_per_s"] >= GOAL_ACCEPTED_PER_S
        p99_ok = latency["p99_ms"] < GOAL_P99_MS
        note += (
            f"; goal {GOAL_ACCEPTED_PER_S:,}/s {'met' if rate_ok else 'MISSED'}, "
            f"p99 < {GOAL_P99_MS:g} ms {'met' if p99_ok else 'MISSED'}"
        )
    if others:
        note += f"; not 202: {others}"
    line(name, f"{load['accepted_per_s']:,.0f} /s", note)


def show_intake(intake: dict[str, Any]) -> None:
    print(
        f"1. intake: {intake['body_bytes']:,}-byte issue_comment deliveries, "
        f"{intake['concurrency']} in flight, on {CORES} cores shared by the client, the "
        "server and nats-server"
    )
    raw = intake["raw_nats"]
    for key, label in (
        ("publish", "raw JetStream publish (acked)"),
        ("lookup_publish", "raw JetStream kv get (miss) + publish"),
        ("bucket_lookup_publish", "raw key_value() + kv get + publish"),
    ):
        part = raw[key]
        latency = part["latency"]
        line(
            label,
            f"{part['per_s']:,.0f} /s",
            f"p50 {latency['p50_ms']:.1f} / p99 {latency['p99_ms']:.1f} ms",
        )
    for where, label in (
        ("same_loop", "client on the server's event loop"),
        ("own_process", "client in its own process"),
    ):
        show_load(f"raw HTTP 202, {label}", intake[f"raw_http_{where}"], goal=False)
        show_load(f"receiver, {label}", intake[f"receiver_{where}"], goal=True)
    counters = intake["receiver_counters"]
    line(
        "receiver: answered 202 / found in AGORA_WEBHOOKS",
        f"{counters['accepted']:,} / {counters['stored']:,}",
        "(warm-ups included; the raw HTTP runs stored nothing)",
    )
    profiled = intake.get("receiver_own_process_profiled")
    if profiled is not None:
        show_load("receiver, own process, under cProfile", profiled, goal=False)


def show_comments(comments: dict[str, Any]) -> None:
    print(
        f"2. comment -> agent: {comments['delivered']} of {comments['comments']} comments, "
        "one at a time (the hand-over is taken when the agent's call begins)"
    )
    for key, label in (
        ("comment_to_agent", "comment created -> act handed to the agent"),
        ("comment_to_stored", "  comment created -> delivery stored"),
        ("stored_to_published", "  delivery stored -> act published"),
        ("published_to_agent", "  act published -> handed to the agent"),
    ):
        spread = comments[key]
        line(
            label,
            f"{spread['p50_ms']:.1f} / {spread['p99_ms']:.1f} ms",
            f"p50 / p99; max {spread['max_ms']:.1f} ms",
        )


async def run_all(arguments: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    body, headers = await captured_delivery()
    intake_dir = workdir / "intake"
    intake_dir.mkdir()
    results: dict[str, Any] = {"cores": CORES}
    results["intake"] = await measure_intake(
        intake_dir,
        body,
        headers,
        concurrency=arguments.concurrency,
        seconds=arguments.seconds,
        profile=arguments.profile,
    )
    results["comments"] = await measure_comments(workdir / "comments", arguments.comments)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=SECONDS, help="length of each load")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--comments", type=int, default=COMMENTS)
    parser.add_argument("--profile", action="store_true", help="cProfile the receiver's process")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--load-probe", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")

    if arguments.load_probe is not None:
        print(json.dumps(finite(load_probe(arguments.load_probe))))
        return
    with tempfile.TemporaryDirectory(prefix="agora-bench-bridge-") as tmp:
        results = asyncio.run(run_all(arguments, Path(tmp)))
    profile = results["intake"].pop("profile", None)
    if profile is not None:
        print(profile, file=sys.stderr)
    if arguments.json:
        print(json.dumps(finite(results), sort_keys=True, allow_nan=False))
        return
    show_intake(results["intake"])
    show_comments(results["comments"])


if __name__ == "__main__":
    main()
