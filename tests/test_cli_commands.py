"""The commands against a real nats-server on which no host runs: what they show of what
others wrote, what they say when the bucket does not apply their switch, and how they end
when agora's stream is missing or the server goes away.

Each test runs ``agora`` as a user does, in a process of its own; the server's URL carries
a user and password (the server ignores them), which no output may show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agora.cli.session import connected, open_session, run_interruptible
from agora.cli.terminal import terminal_safe
from agora.cli.workspace import AgentPlan, create_workspace
from agora.core.control import record_and_switch
from agora.core.envelope import Event, EventKind
from agora.core.ids import new_id, now_ms
from agora.core.signing import sign_fact
from agora.core.spine import ensure_spine
from agora.host.nats_server import EmbeddedNats

AGORA = Path(sys.executable).parent / "agora"
PAIR = {
    "synth-agent": AgentPlan("chatty", ("build-coord",)),
    "relay-agent": AgentPlan("chatty", ("build-coord",)),
}
PASSWORD = "s3cret-pw"  # noqa: S105 - a test server's, which ignores it
LINE_S = 15.0  # how long a watch may take to show a line, or to end


@dataclass(frozen=True, slots=True)
class Ran:
    status: int
    out: str
    err: str


async def agora(*args: object, env: dict[str, str] | None = None) -> Ran:
    process = await asyncio.create_subprocess_exec(
        AGORA,
        *map(str, args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def _url_with_credentials(server: EmbeddedNats) -> str:
    return server.url.replace("nats://", f"nats://operator:{PASSWORD}@")


@pytest.fixture
def bare(tmp_path: Path, nats_server: EmbeddedNats) -> Path:
    """A configuration naming a server on which no host has run yet."""
    return create_workspace(
        tmp_path,
        channels=("build-coord",),
        agents=PAIR,
        extra={"nats": {"url": _url_with_credentials(nats_server)}},
    )


@pytest.fixture
async def config(bare: Path, nats_server: EmbeddedNats) -> Path:
    """A configuration naming a server with agora's stream and buckets, and no host."""
    async with connected(nats_server.url) as client:
        await ensure_spine(client.jetstream())
    return bare


@asynccontextmanager
async def watch(config: Path, *channels: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``agora watch CHANNEL...``, once it says it is watching."""
    process = await asyncio.create_subprocess_exec(
        AGORA,
        "watch",
        *channels,
        "-c",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert (await _line(process)).startswith("watching #build-coord")
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.fixture
async def watching(config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    async with watch(config, "build-coord") as process:
        yield process


async def _line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), LINE_S)).decode()


# -- text that others wrote ---------------------------------------------------------------


def test_terminal_safe_escapes_what_could_act_on_a_terminal() -> None:
    hostile = "a\x1b]52;c;ZXZpbA==\x07b\rc\nd\x85e\u2028f\u202eg\x7fh\x00i\ud800"
    assert terminal_safe(hostile) == (
        "a\\x1b]52;c;ZXZpbA==\\x07b\\x0dc\\nd\\x85e\\u2028f\\u202eg\\x7fh\\x00i\\ud800"
    )


def test_terminal_safe_leaves_tabs_and_printable_text_alone() -> None:
    text = "ship v0.1?\tcafé, 日本, 🚀, \\n as typed"
    assert terminal_safe(text) == text


FORGED = "\n12:00:00.000 #build-coord relay-agent inform (hops 1, act-forged): all clear"
HOSTILE = "ok\x1b]52;c;ZXZpbA==\x07\r\x1b[2K" + FORGED + "\u202e"


async def test_watch_and_log_show_a_payload_as_one_line_that_cannot_drive_the_terminal(
    config: Path, watching: asyncio.subprocess.Process
) -> None:
    await agora("inject", "build-coord", "inform", HOSTILE, "-c", config)
    watched = await _line(watching)
    logged = (await agora("log", "build-coord", "-c", config)).out
    assert logged.count("\n") == 1
    for shown in (watched, logged):
        assert "#build-coord maintainer inform" in shown
        assert shown.endswith(
            "ok\\x1b]52;c;ZXZpbA==\\x07\\x0d\\x1b[2K\\n12:00:00.000 #build-coord relay-agent "
            "inform (hops 1, act-forged): all clear\\u202e\n"
        )
    as_json = json.loads((await agora("log", "build-coord", "--json", "-c", config)).out)
    assert as_json["payload"] == HOSTILE  # JSON escapes it itself, and keeps it exact


async def test_status_and_resume_show_a_kill_reason_escaped(config: Path) -> None:
    reason = "too chatty\x1b[2J\nstopped:\r\u202e"
    await agora("kill", "--agent", "synth-agent", "--reason", reason, "-c", config)
    escaped = "too chatty\\x1b[2J\\nstopped:\\x0d\\u202e"
    status = (await agora("status", "-c", config)).out
    shown = rf"\n  agent\.synth-agent: killed by maintainer [0-9.]+ s ago: {re.escape(escaped)}\n"
    assert re.search(shown, status), status
    resumed = await agora("resume", "--all", "-c", config)
    assert resumed.status == 0
    assert resumed.out.startswith(f"resumed: agent.synth-agent, killed by maintainer: {escaped} (")
    assert resumed.out.count("\n") == 1


async def test_log_writes_what_the_terminal_cannot_encode_as_escapes(config: Path) -> None:
    await agora("inject", "build-coord", "inform", "ship it 🚀", "-c", config)
    ascii_only = {**os.environ, "PYTHONIOENCODING": "ascii"}
    logged = await agora("log", "build-coord", "-c", config, env=ascii_only)
    assert logged.status == 0, logged.err
    assert logged.out.rstrip().endswith("ship it \\U0001f680")


# -- kill and resume, read back ---------------------------------------------------------


async def _switch_from_the_future(
    config: Path, server: EmbeddedNats, kind: EventKind, agent: str
) -> Event:
    """A switch of ``agent`` signed by the operator on a machine whose clock is two
    minutes ahead of this one."""
    session = open_session(config)
    event = Event(
        id=new_id("ev"),
        kind=kind,
        actor="maintainer",
        time_ms=now_ms() + 120_000,
        reason="kill" if kind is EventKind.KILLED else "resume",
        detail="signed on a machine whose clock is ahead",
        agent=agent,
    )
    async with connected(server.url) as client:
        await record_and_switch(
            client.jetstream(), event, sign_fact(event, session.key("maintainer"))
        )
    return event


@pytest.mark.parametrize(
    ("in_force", "command"), [(EventKind.KILLED, "resume"), (EventKind.RESUMED, "kill")]
)
async def test_a_switch_no_host_applies_fails_naming_the_newer_one(
    config: Path, nats_server: EmbeddedNats, in_force: EventKind, command: str
) -> None:
    newer = await _switch_from_the_future(config, nats_server, in_force, "synth-agent")
    result = await agora(command, "--agent", "synth-agent", "-c", config)
    assert result.status == 1
    assert result.out == ""
    assert result.err.startswith("agora: the ")
    assert "is recorded, but no host applies it: " in result.err
    assert f"{in_force.value} {newer.id} by maintainer, signed later at 20" in result.err
    assert "s ahead of this machine's clock" in result.err
    status = json.loads((await agora("status", "--json", "-c", config)).out)
    in_force_now = status["stopped"].get("agent.synth-agent")
    assert (in_force_now is not None) is (in_force is EventKind.KILLED)  # nothing changed


@pytest.mark.parametrize(
    ("kill", "option"), [(("--all",), "--all"), (("--channel", "build-coord"), "--channel")]
)
async def test_a_resume_says_when_another_kill_still_stops_its_target(
    config: Path, kill: tuple[str, ...], option: str
) -> None:
    await agora("kill", *kill, "--reason", "freeze", "-c", config)
    result = await agora("resume", "--agent", "synth-agent", "-c", config)
    assert result.status == 0
    assert result.out.startswith("resumed: agent.synth-agent (")
    key = "all" if option == "--all" else "channel.build-coord"
    assert result.err.startswith(
        f"agora: warning: agent.synth-agent is still stopped by {key}, killed by maintainer: "
        "freeze ("
    )
    assert f"`agora resume {' '.join(kill)}` lifts it" in result.err


async def test_a_resume_with_nothing_else_in_force_says_only_that_it_resumed(
    config: Path,
) -> None:
    await agora("kill", "--agent", "synth-agent", "-c", config)
    result = await agora("resume", "--agent", "synth-agent", "-c", config)
    assert (result.status, result.err) == (0, "")
    assert result.out.startswith("resumed: agent.synth-agent (")


# -- a server with no agora on it, or none at all -----------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("log", "build-coord"),
        ("log", "build-coord", "--json"),
        ("watch", "build-coord"),
        ("status",),
        ("status", "--json"),
        ("inject", "build-coord", "inform", "hi"),
        ("kill", "--all"),
        ("resume", "--agent", "synth-agent"),
    ],
)
async def test_a_server_where_no_host_ran_is_one_clear_line(
    bare: Path, nats_server: EmbeddedNats, command: tuple[str, ...]
) -> None:
    result = await agora(*command, "-c", bare)
    assert result.status == 1
    shown_url = nats_server.url.replace("nats://", "nats://***@")
    assert result.err == (
        f"agora: no agora stream on this NATS server at {shown_url}: run `agora up` first\n"
    )
    assert PASSWORD not in result.out + result.err


async def test_watch_ends_when_the_server_goes_away(
    nats_server: EmbeddedNats, watching: asyncio.subprocess.Process
) -> None:
    await nats_server.stop()
    await asyncio.wait_for(watching.wait(), LINE_S)
    assert watching.returncode == 1
    assert watching.stderr is not None
    err = (await watching.stderr.read()).decode()
    assert err.startswith("agora: lost the connection to NATS")
    assert "Traceback" not in err


async def test_watch_shows_each_act_once_however_often_its_channel_is_named(
    config: Path,
) -> None:
    async with watch(config, "build-coord", "build-coord") as watching:
        await agora("inject", "build-coord", "inform", "first", "-c", config)
        await agora("inject", "build-coord", "inform", "second", "-c", config)
        lines = [await _line(watching), await _line(watching)]
    assert [line.rstrip().rsplit(": ", 1)[-1] for line in lines] == ["first", "second"]


# -- verify -------------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", ["0", "65", "-1", "many"])
async def test_verify_refuses_a_job_count_out_of_range(tmp_path: Path, jobs: str) -> None:
    result = await agora("verify", tmp_path, "--jobs", jobs)
    assert result.status == 2
    assert f"argument --jobs: expected an integer from 1 to 64, got {jobs!r}" in result.err


async def test_verify_names_a_checkpoint_it_cannot_read(tmp_path: Path) -> None:
    config = create_workspace(tmp_path, channels=("build-coord",), agents={})
    facts = tmp_path / "facts"
    (facts / "checkpoints" / "5.note").mkdir(parents=True)
    (facts / "log.jsonl").write_text("")
    result = await agora("verify", facts, "--keys", config.parent / "keys.yaml")
    assert result.status == 1
    assert (
        result.out == f"FAIL {facts}: {facts}/checkpoints/5.note: cannot be read: Is a directory\n"
    )
    assert result.err == ""


def test_ctrl_c_ends_a_command_even_when_a_cancellation_is_lost() -> None:
    # Python 3.11's asyncio.wait_for (nats-py's requests) can drop a cancellation that
    # lands as what it waits for completes: the command must still end as interrupted,
    # not as if it had finished.
    async def loses_one() -> str:
        asyncio.get_running_loop().call_later(0.05, signal.raise_signal, signal.SIGINT)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(5)
        await asyncio.sleep(0.2)
        return "ran on"

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run_interruptible(loses_one())
    assert signal.getsignal(signal.SIGINT) == before  # as it was


def test_ctrl_c_during_synchronous_work_still_ends_the_command() -> None:
    # The event loop can act on a Ctrl-C only between steps: one that comes during a
    # long synchronous step (a build, say) must not be lost if the command then ends.
    async def busy() -> str:
        threading.Timer(0.1, signal.raise_signal, (signal.SIGINT,)).start()
        time.sleep(0.5)  # noqa: ASYNC251 - a synchronous step, on purpose
        return "done"

    with pytest.raises(KeyboardInterrupt):
        run_interruptible(busy())


def test_a_second_ctrl_c_ends_the_command_at_once() -> None:
    async def stubborn() -> str:
        loop = asyncio.get_running_loop()
        for delay in (0.05, 0.15):
            loop.call_later(delay, signal.raise_signal, signal.SIGINT)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(5)
        await asyncio.sleep(5)  # cleaning up, slowly
        return "ran on"

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_interruptible(stubborn())
    assert time.monotonic() - started < 3


def test_cleanup_after_a_ctrl_c_is_not_cut_short() -> None:
    cleaned: list[bool] = []

    async def cleans_up() -> None:
        asyncio.get_running_loop().call_later(0.05, signal.raise_signal, signal.SIGINT)
        try:
            await asyncio.sleep(5)
        finally:
            await asyncio.sleep(0.8)  # as a host's stop, or a server's, takes a while
            cleaned.append(True)

    with pytest.raises(KeyboardInterrupt):
        run_interruptible(cleans_up())
    assert cleaned == [True]
