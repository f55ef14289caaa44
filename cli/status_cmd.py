"""``agora status``: each host's last report and how old it is, the stream, the kills.

What is stopped is read from the control bucket itself, as every host reads it (only
values that verify count), with who stopped it, when, and the reason they gave.

Every host process writes its report to the status bucket once a second while it runs,
under a key of its own (several processes may run as one host, each with some of the
agents), and the reports are shown grouped by host. A report is only what was true when
it was written: one older than a few report intervals is from a process that stopped (or
cannot reach NATS), so that process is shown as not running, and so are its agents,
whatever they were doing when it last reported.

What a host reports (agent names, a recorder's failure) and what an operator said when
killing are shown made safe for a terminal (:mod:`agora.cli.terminal`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import Any, Final

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from agora.cli.control_cmds import switches_in_force
from agora.cli.session import Session, add_config_option, agora_connection, open_session
from agora.cli.terminal import show
from agora.core.envelope import EventKind
from agora.core.ids import now_ms
from agora.core.spine import CONTROL_BUCKET, DEAD_STREAM, STATUS_BUCKET, STREAM, bucket_values
from agora.host.controls import EmitVerdict, Verdict
from agora.host.service import CLOCK_WARN_MS, STALE_AFTER_S

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


def by_host(reports: dict[str, dict[str, Any]], now: int) -> dict[str, dict[str, Any]]:
    """The reports grouped by the host they name: for each, whether any of its processes
    runs, and each process's report with its liveness, by instance id."""
    instances: dict[str, dict[str, dict[str, Any]]] = {}
    for key, report in sorted(reports.items()):
        name = str(report.get("host") or key)
        instance = str(report.get("instance") or key)
        process = {**with_liveness(report, now), "instance": instance}
        instances.setdefault(name, {})[instance] = process
    return {
        name: {
            "running": any(process["running"] for process in processes.values()),
            "instances": processes,
        }
        for name, processes in sorted(instances.items())
    }


async def _reports(js: JetStreamContext) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Every report in the status bucket, by key, and what is wrong with each value that
    is not a report as a host writes it (whoever may write the bucket can put anything
    there): those are left out, and said."""
    reports: dict[str, dict[str, Any]] = {}
    malformed: dict[str, str] = {}
    for key, value in (await bucket_values(js, STATUS_BUCKET)).items():
        try:
            report = json.loads(value or b"{}")
        except (ValueError, RecursionError):
            malformed[key] = "not JSON"
            continue
        problem = report_problem(report)
        if problem is None:
            reports[key] = report
        else:
            malformed[key] = problem
    return reports, malformed


def report_problem(report: object) -> str | None:
    """What is wrong with a status report, or None if it has the shape a host writes."""
    if not isinstance(report, dict):
        return "not a JSON object"
    wrong = [
        name
        for name, expected in _REPORT_FIELDS.items()
        if name in report and not _is(report[name], expected)
    ]
    if wrong:
        return f"{', '.join(wrong)}: not what a host writes"
    for name, agent in (report.get("agents") or {}).items():
        if not isinstance(agent, dict) or not all(
            _is(agent.get(field), expected) for field, expected in _AGENT_FIELDS.items()
        ):
            return f"agents.{name}: expected channels, state and counters"
    recorder = report.get("recorder")
    if recorder is not None and not isinstance(recorder, dict):
        return "recorder: not what a host writes"
    if recorder is not None and not all(
        _is(recorder.get(field), expected) for field, expected in _RECORDER_FIELDS.items()
    ):
        return "recorder: expected recorded, refused and failure"
    return None


def _is(value: object, expected: str) -> bool:
    """Whether ``value`` is of the kind ``expected`` names (see :data:`_KINDS`)."""
    return _KINDS[expected](value)


def _whole(value: object) -> bool:
    """An integer a host could have written (a count, a time in ms, a pid)."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


_KINDS: Final[dict[str, Callable[[object], bool]]] = {
    "int": _whole,
    "int?": lambda v: v is None or _whole(v),
    "text": lambda v: isinstance(v, str),
    "text?": lambda v: v is None or isinstance(v, str),
    "texts": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "counts": lambda v: isinstance(v, dict) and all(_whole(x) for x in v.values()),
    "object": lambda v: isinstance(v, dict),
}

_REPORT_FIELDS: Final = {
    "host": "text",
    "instance": "text",
    "machine": "text",
    "pid": "int",
    "time_ms": "int",
    "clock_offset_ms": "int?",
    "agents": "object",
}
_AGENT_FIELDS: Final = {"channels": "texts", "state": "text", "counters": "counts"}
_RECORDER_FIELDS: Final = {"recorded": "int", "refused": "int", "failure": "text?"}


async def gather_status(session: Session) -> dict[str, Any]:
    async with agora_connection(session.config) as client:
        js = client.jetstream()
        reports, malformed = await _reports(js)
        stream = await js.stream_info(STREAM)
        try:
            dead = (await js.stream_info(DEAD_STREAM)).state.messages
        except NotFoundError:
            dead = 0
        control_keys = list(await bucket_values(js, CONTROL_BUCKET))
        in_force = await switches_in_force(js, session.registry)
    return {
        "hosts": by_host(reports, now_ms()),
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
        "malformed_reports": dict(sorted(malformed.items())),
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
    for name, host in status["hosts"].items():
        processes = host["instances"]
        show(f"host {name}: {_how_many_run(processes)}")
        for process in processes.values():
            _show_process(process)
    for key, problem in status["malformed_reports"].items():
        show(f"status report {key} left out: {problem}")
    _show_stopped(status["stopped"])
    return 0


def _how_many_run(processes: dict[str, dict[str, Any]]) -> str:
    """``running``, ``not running``, ``running (2 processes)`` or ``1 of 2 processes
    running``."""
    running = sum(1 for process in processes.values() if process["running"])
    total = len(processes)
    if running == 0:
        return NOT_RUNNING
    if running < total:
        return f"{running} of {total} processes running"
    return "running" if total == 1 else f"running ({total} processes)"


def _process_label(process: dict[str, Any]) -> str:
    """``box (pid 4242)``: where a host process runs; an older report's key otherwise."""
    if process.get("machine") and process.get("pid"):
        return f"{process['machine']} (pid {process['pid']})"
    return f"process {process['instance']}"


def _show_process(process: dict[str, Any]) -> None:
    when = age(process["report_age_s"])
    label = _process_label(process)
    if process["running"]:
        show(f"  {label}: running (reported {when} ago)")
    else:
        show(f"  {label}: {NOT_RUNNING} (last report {when} ago)")
    offset_s = (process.get("clock_offset_ms") or 0) / 1000
    if abs(offset_s) > CLOCK_WARN_MS / 1000:
        side = "ahead of" if offset_s > 0 else "behind"
        print(f"    clock {abs(offset_s):.1f} s {side} the NATS server's: set it right")
    recorder = process.get("recorder")
    if recorder:
        show(f"    recorder: {recorder['recorded']} recorded, {recorder['refused']} refused")
        if recorder.get("failure"):
            show(f"    recorder STOPPED: {recorder['failure']}")
    for agent, info in sorted(process.get("agents", {}).items()):
        counters = ", ".join(f"{k} {v}" for k, v in info["counters"].items())
        show(f"    {agent} [{info['state']}] on {', '.join(info['channels'])}: {counters}")


def _show_stopped(stopped: dict[str, dict[str, Any]]) -> None:
    if not stopped:
        print("nothing is killed")
        return
    print("stopped:")
    for key, info in stopped.items():
        when = age(max(now_ms() - info["time_ms"], 0) / 1000)
        said = info["detail"] or info["reason"]
        show(f"  {key}: {info['kind']} by {info['by']} {when} ago: {said}")
