"""``agora status``: each host's last report and how old it is, the stream, the kills.

What is stopped is read from the control bucket itself, as every host reads it (only
values that verify count), with who stopped it, when, and the reason they gave.

Every host writes its report to the status bucket once a second while it runs. A report
is only what was true when it was written: one older than a few report intervals is
from a host that stopped (or cannot reach NATS), so that host is shown as not running,
and so are its agents, whatever they were doing when it last reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any, Final

from nats.js.errors import NoKeysError, NotFoundError

from agora.cli.control_cmds import switches_in_force
from agora.cli.session import Session, add_config_option, connected, open_session, running_url
from agora.core.envelope import EventKind
from agora.core.ids import now_ms
from agora.core.spine import CONTROL_BUCKET, DEAD_STREAM, STATUS_BUCKET, STREAM
from agora.host.controls import EmitVerdict, Verdict
from agora.host.service import CLOCK_WARN_MS, STATUS_EVERY_S

# Every control's counter, in the order a message meets them: shown for every agent,
# zeros included, so that what is counted is plain; anything else a host counts follows.
CONTROL_COUNTERS: Final = (
    "delivered",
    "emitted",
    *(verdict.value for verdict in Verdict if verdict is not Verdict.DELIVER),
    "unverified",
    EventKind.KILLED.value,
    EventKind.QUARANTINED.value,
    "discarded-by-kill",
    *(verdict.value for verdict in EmitVerdict if verdict is not EmitVerdict.EMIT),
    "hops-lowered",
    "faults",
)
STALE_AFTER_REPORTS: Final = 5
STALE_AFTER_S: Final = STALE_AFTER_REPORTS * STATUS_EVERY_S
NOT_RUNNING: Final = "not running"


def register(commands: Any) -> None:
    status = commands.add_parser(
        "status", help="hosts and whether they run, agents, control counters, kills"
    )
    status.add_argument("--json", action="store_true", help="one JSON object")
    add_config_option(status)
    status.set_defaults(run=run_status)


def every_counter(counters: dict[str, int]) -> dict[str, int]:
    """``counters`` with every control's, zeros included, in :data:`CONTROL_COUNTERS`
    order, then the others the host reported, by name."""
    shown = {name: int(counters.get(name, 0)) for name in CONTROL_COUNTERS}
    return shown | {name: counters[name] for name in sorted(counters) if name not in shown}


def with_liveness(report: dict[str, Any], now: int) -> dict[str, Any]:
    """A host's report with its age, and whether the host still runs: a report older
    than :data:`STALE_AFTER_S` is the last word of a host that stopped, and its agents
    are not running either (``last_state`` keeps what they were doing)."""
    age_s = max(now - int(report.get("time_ms", 0)), 0) / 1000
    running = age_s <= STALE_AFTER_S
    agents = {
        name: {**info, "counters": every_counter(dict(info.get("counters", {})))}
        for name, info in dict(report.get("agents", {})).items()
    }
    if not running:
        agents = {
            name: {**info, "state": NOT_RUNNING, "last_state": info.get("state")}
            for name, info in agents.items()
        }
    return {**report, "agents": agents, "running": running, "report_age_s": round(age_s, 1)}


async def gather_status(session: Session) -> dict[str, Any]:
    async with connected(running_url(session.config)) as client:
        js = client.jetstream()
        reports: dict[str, Any] = {}
        status_kv = await js.key_value(STATUS_BUCKET)
        try:
            for key in await status_kv.keys():
                entry = await status_kv.get(key)
                reports[key] = json.loads(entry.value or b"{}")
        except NoKeysError:
            pass
        stream = await js.stream_info(STREAM)
        try:
            dead = (await js.stream_info(DEAD_STREAM)).state.messages
        except NotFoundError:
            dead = 0
        control = await js.key_value(CONTROL_BUCKET)
        try:
            control_keys = await control.keys()
        except NoKeysError:
            control_keys = []
        in_force = await switches_in_force(js, session.registry)
    now = now_ms()
    return {
        "hosts": {name: with_liveness(report, now) for name, report in reports.items()},
        "stopped": {
            key: {
                "kind": event.kind.value,
                "by": event.actor,
                "reason": event.reason,
                "detail": event.detail,
                "time_ms": event.time_ms,
            }
            for key, event in sorted(in_force.items())
        },
        "control_keys": sorted(control_keys),
        "stream": {"messages": stream.state.messages, "dead_letters": dead},
    }


def age(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min``, ``5 h``, ``2 days``: how long ago, roughly."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def run_status(arguments: argparse.Namespace) -> int:
    session = open_session(arguments.config)
    status = asyncio.run(gather_status(session))
    if arguments.json:
        print(json.dumps(status, sort_keys=True))
        return 0
    stream = status["stream"]
    print(f"stream: {stream['messages']} messages, {stream['dead_letters']} dead letters")
    for name, host in sorted(status["hosts"].items()):
        when = age(host["report_age_s"])
        if host["running"]:
            print(f"host {name}: running (reported {when} ago)")
        else:
            print(f"host {name}: {NOT_RUNNING} (last report {when} ago)")
        offset_s = (host.get("clock_offset_ms") or 0) / 1000
        if abs(offset_s) > CLOCK_WARN_MS / 1000:
            side = "ahead of" if offset_s > 0 else "behind"
            print(f"  clock {abs(offset_s):.1f} s {side} the NATS server's: set it right")
        recorder = host.get("recorder")
        if recorder:
            print(f"  recorder: {recorder['recorded']} recorded, {recorder['refused']} refused")
            if recorder.get("failure"):
                print(f"  recorder STOPPED: {recorder['failure']}")
        for agent, info in sorted(host.get("agents", {}).items()):
            counters = ", ".join(f"{k} {v}" for k, v in info["counters"].items())
            print(f"  {agent} [{info['state']}] on {', '.join(info['channels'])}: {counters}")
    if status["stopped"]:
        print("stopped:")
        for key, info in status["stopped"].items():
            when = age(max(now_ms() - info["time_ms"], 0) / 1000)
            said = info["detail"] or info["reason"]
            print(f"  {key}: {info['kind']} by {info['by']} {when} ago: {said}")
    else:
        print("nothing is killed")
    return 0
