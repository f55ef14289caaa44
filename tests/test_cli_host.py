"""The human window: ``agora up`` in one process, the other commands in others.

Real processes, as a user runs them: ``agora up`` starts the embedded JetStream and the
host; ``inject``, ``log``, ``watch``, ``status``, ``kill`` and ``resume`` find it through
the configuration alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from agora.bridge.standin import GitHubStandIn
from agora.cli.channel_cmds import _judged_fresh, _reply_conversation
from agora.cli.session import connected
from agora.cli.status_cmd import CONTROL_COUNTERS, STALE_AFTER_S
from agora.cli.workspace import AgentPlan, create_workspace
from agora.core.acts import Performative
from agora.core.envelope import Act
from agora.core.errors import ConfigError, InputError
from agora.core.factlog import FactLog
from agora.core.keys import Role, SigningKey
from agora.core.signing import sign_fact
from agora.core.spine import STATUS_BUCKET, ensure_spine
from agora.host.nats_server import EmbeddedNats
from agora.host.service import machine_name
from tests.factories import make_act

AGORA = Path(sys.executable).parent / "agora"
PAIR = {
    "synth-agent": AgentPlan("chatty", ("build-coord",)),
    "relay-agent": AgentPlan("chatty", ("build-coord",)),
}


def agora(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [AGORA, *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def eventually(probe: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.1)


@pytest.fixture
def workspace(tmp_path: Path, components: dict[str, Path]) -> Path:
    assert "chatty" in components  # built before `agora up` needs it
    return create_workspace(tmp_path, channels=("build-coord", "secret-ops"), agents=PAIR)


@pytest.fixture
def up(workspace: Path) -> Iterator[subprocess.Popen[str]]:
    log = (workspace.parent / "up.log").open("w")
    process = subprocess.Popen(
        [AGORA, "up", "-c", workspace], stdout=log, stderr=subprocess.STDOUT, text=True
    )
    try:
        eventually(lambda: _status(workspace) is not None)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        log.close()


def _status(config: Path) -> dict[str, Any] | None:
    result = agora("status", "--json", "-c", config, check=False)
    if result.returncode != 0:
        return None
    status: dict[str, Any] = json.loads(result.stdout)
    return status if status["hosts"] else None


def _processes(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Every host process's report in ``agora status --json``, whatever host it runs as,
    the running ones first (a stopped one may linger, not yet stale, after a restart)."""
    processes = [p for host in status["hosts"].values() for p in host["instances"].values()]
    return sorted(processes, key=lambda process: not process["running"])


def _acts(config: Path, channel: str) -> list[dict[str, Any]]:
    out = agora("log", channel, "--json", "-c", config).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_the_commands_drive_a_running_host(workspace: Path, up: subprocess.Popen[str]) -> None:
    status = eventually(lambda: _status(workspace))
    [host] = _processes(status)
    assert set(host["agents"]) == set(PAIR)
    assert host["agents"]["synth-agent"]["channels"] == ["build-coord"]

    seed = agora("inject", "build-coord", "request", "ship v0.1?", "--hops", 3, "-c", workspace)
    seed_id = seed.stdout.strip()
    acts = eventually(lambda: (a := _acts(workspace, "build-coord")) and len(a) == 7 and a)
    assert acts[0]["id"] == seed_id and acts[0]["sender"] == "maintainer"
    assert sorted(a["hops"] for a in acts[1:]) == [0, 0, 1, 1, 2, 2]
    readable = agora("log", "build-coord", "-c", workspace).stdout
    assert "maintainer request (hops 3" in readable and "ship v0.1?" in readable

    counters = eventually(
        lambda: (
            (s := _status(workspace))
            and (c := _processes(s)[0]["agents"]["synth-agent"]["counters"]).get("self-echo") == 3
            and c
        )
    )
    assert counters["emitted"] == 3

    agora("kill", "--channel", "build-coord", "--reason", "too chatty", "-c", workspace)
    stopped = eventually(lambda: (s := _status(workspace)) and s["stopped"])
    assert stopped["channel.build-coord"]["by"] == "maintainer"
    assert stopped["channel.build-coord"]["detail"] == "too chatty"
    shown = agora("status", "-c", workspace).stdout
    assert re.search(r"channel\.build-coord: killed by maintainer [0-9.]+ s ago: too chatty", shown)
    agora("inject", "build-coord", "inform", "hello?", "--hops", 2, "-c", workspace)
    eventually(
        lambda: (
            (s := _status(workspace))
            and _processes(s)[0]["agents"]["synth-agent"]["counters"].get("killed")
        )
    )
    agora("resume", "--channel", "build-coord", "-c", workspace)
    eventually(lambda: (s := _status(workspace)) and not s["stopped"])
    assert "nothing is killed" in agora("status", "-c", workspace).stdout

    up.send_signal(signal.SIGTERM)
    assert up.wait(timeout=30) == 0
    root = workspace.parent
    verified = agora("verify", root / "facts", "--keys", root / "keys.yaml", "--json")
    assert json.loads(verified.stdout)["ok"] is True


def test_ctrl_c_stops_agora_up_in_order_and_quietly(workspace: Path) -> None:
    output = workspace.parent / "up-interrupted.log"
    with output.open("w") as log:
        # its own process group, as a terminal runs a foreground job
        process = subprocess.Popen(
            [AGORA, "up", "-c", workspace],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            eventually(lambda: _status(workspace) is not None)
            lock = workspace.parent / ".agora" / "nats" / "lock"
            _, server = map(int, lock.read_text().split())
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = output.read_text()
    assert "stopping" in text
    assert "Traceback" not in text and "error" not in text.lower(), text
    assert lock.read_text() == ""  # agora stopped its server itself, after the host
    assert not Path(f"/proc/{server}").exists()


def _set_agent_key(config: Path, agent: str, key: str) -> None:
    document = yaml.safe_load(config.read_text())
    document["agents"][agent]["key"] = key
    config.write_text(yaml.safe_dump(document))


def test_an_agent_signs_with_the_key_file_its_config_names(workspace: Path) -> None:
    root = workspace.parent
    (root / "secrets").mkdir()
    (root / ".agora" / "keys" / "relay-agent.key").rename(root / "secrets" / "relay.pem")
    _set_agent_key(workspace, "relay-agent", "secrets/relay.pem")
    log = (root / "up.log").open("w")
    process = subprocess.Popen([AGORA, "up", "-c", workspace], stdout=log, stderr=log, text=True)
    try:
        eventually(lambda: _status(workspace) is not None)
        agora("inject", "build-coord", "inform", "hello", "--hops", 1, "-c", workspace)
        eventually(
            lambda: any(a["sender"] == "relay-agent" for a in _acts(workspace, "build-coord"))
        )
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        log.close()
    verified = agora("verify", root / "facts", "--keys", root / "keys.yaml", "--json")
    assert json.loads(verified.stdout)["ok"] is True


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (".agora/keys/synth-agent.key", "expected the private key of 'relay-agent' registered in"),
        ("secrets/none.pem", "expected its private key file (PKCS#8 PEM, mode 0600): private key"),
    ],
)
def test_an_agent_key_file_that_is_not_its_key_is_refused_before_anything_starts(
    workspace: Path, key: str, message: str
) -> None:
    _set_agent_key(workspace, "relay-agent", key)
    result = agora("up", "-c", workspace, check=False)
    assert result.returncode == 1
    assert f"{workspace}: agents.relay-agent.key: {message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workspace.parent / ".agora" / "nats").exists()  # no server started


def test_resume_all_lifts_every_kill_in_force_and_says_which(
    workspace: Path, up: subprocess.Popen[str]
) -> None:
    nothing = agora("resume", "--all", "-c", workspace)
    assert nothing.stdout.strip() == "nothing is killed or quarantined: nothing to resume"
    agora("kill", "--agent", "synth-agent", "-c", workspace)
    agora("kill", "--channel", "build-coord", "--reason", "too chatty", "-c", workspace)
    agora("kill", "--all", "-c", workspace)
    eventually(lambda: (s := _status(workspace)) and len(s["stopped"]) == 3)

    lifted = agora("resume", "--all", "-c", workspace).stdout.splitlines()
    assert [line.split(",")[0] for line in lifted] == [
        "resumed: agent.synth-agent",
        "resumed: channel.build-coord",
        "resumed: all",
    ]
    assert "killed by maintainer: too chatty" in lifted[1]
    status = eventually(
        lambda: (
            (s := _status(workspace))
            and not s["stopped"]
            and {a["state"] for a in _processes(s)[0]["agents"].values()} == {"running"}
            and s
        )
    )
    assert not status["stopped"]


async def test_status_shows_a_stopped_host_as_not_running(
    tmp_path: Path, components: dict[str, Path], nats_server: EmbeddedNats
) -> None:
    assert "chatty" in components
    config = create_workspace(
        tmp_path, channels=("build-coord",), agents=PAIR, extra={"nats": {"url": nats_server.url}}
    )
    log = (tmp_path / "up.log").open("w")
    process = await asyncio.create_subprocess_exec(
        AGORA, "up", "-c", str(config), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        [host] = _processes(await _eventually_async(lambda: _status(config)))
        assert host["running"] is True
        assert host["report_age_s"] < STALE_AFTER_S
        assert {a["state"] for a in host["agents"].values()} == {"running"}
        text = (await asyncio.to_thread(agora, "status", "-c", config)).stdout
        assert "host host: running\n" in text
        assert re.search(r"\n  \S+ \(pid [0-9]+\): running \(reported ", text), text
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        log.close()

    def stale() -> dict[str, Any] | None:
        status = _status(config)
        return status and _processes(status)[0]["running"] is False and status

    status = await _eventually_async(stale, timeout_s=STALE_AFTER_S + 10)
    [host] = _processes(status)
    assert host["report_age_s"] >= STALE_AFTER_S  # (shown to a tenth of a second)
    assert {a["state"] for a in host["agents"].values()} == {"not running"}
    assert {a["last_state"] for a in host["agents"].values()} == {"running"}
    text = (await asyncio.to_thread(agora, "status", "-c", config)).stdout
    assert "host host: not running\n" in text
    assert re.search(r"\n  \S+ \(pid [0-9]+\): not running \(last report ", text), text
    assert "[running]" not in text and "[not running]" in text


def _piped(command: str, config: Path) -> subprocess.Popen[str]:
    """``agora COMMAND | head -1`` in bash with pipefail: the pipeline's status is agora's,
    its stderr goes to the file ``agora.err`` beside the config."""
    errors = config.parent / "agora.err"
    return subprocess.Popen(
        ["bash", "-c", f"set -o pipefail; {AGORA} {command} -c {config} 2>{errors} | head -1"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own, to be ended whole if a test fails
    )


def _end(pipeline: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pipeline.pid, signal.SIGKILL)
    pipeline.communicate()


def test_a_reader_that_goes_away_ends_log_and_watch_quietly(
    workspace: Path, up: subprocess.Popen[str]
) -> None:
    assert up.poll() is None
    big = "x" * 60_000  # three of them are more than a pipe holds: agora is still writing
    for _ in range(3):
        agora("inject", "build-coord", "inform", big, "--hops", 1, "-c", workspace)
    eventually(lambda: len(_acts(workspace, "build-coord")) >= 3)
    errors = workspace.parent / "agora.err"

    log = _piped("log build-coord --json", workspace)
    try:
        out, _ = log.communicate(timeout=30)
    finally:
        _end(log)
    assert json.loads(out)["payload"] == big
    assert log.returncode == 141
    assert errors.read_text() == ""

    watch = _piped("watch build-coord", workspace)
    try:
        assert watch.stdout is not None
        assert watch.stdout.readline().startswith("watching #build-coord")  # head is gone
        agora("inject", "build-coord", "inform", "anyone?", "--hops", 1, "-c", workspace)
        assert watch.wait(timeout=30) == 141
    finally:
        _end(watch)
    assert errors.read_text() == ""


def test_status_shows_every_control_counter_zeros_included(
    workspace: Path, up: subprocess.Popen[str]
) -> None:
    [host] = _processes(eventually(lambda: _status(workspace)))
    counters = host["agents"]["synth-agent"]["counters"]
    assert {counters[name] for name in CONTROL_COUNTERS} == {0}  # every one, zeros included
    assert {"self-echo", "scope-blocked", "killed", "hops-spent", "faults"} <= set(counters)
    text = agora("status", "-c", workspace).stdout
    assert "synth-agent [running] on build-coord: delivered 0, emitted 0, scope-blocked 0" in text
    assert "hops-spent 0" in text


def test_a_second_up_on_the_same_folder_stops_at_once_and_leaves_the_first_alone(
    workspace: Path, up: subprocess.Popen[str]
) -> None:
    second = agora("up", "-c", workspace, check=False)
    assert second.returncode == 1
    assert "another agora is already running" in second.stderr
    assert up.poll() is None
    assert _status(workspace) is not None  # the first one's server is still reachable


def test_watch_streams_acts_as_they_happen(workspace: Path, up: subprocess.Popen[str]) -> None:
    assert up.poll() is None
    watcher = subprocess.Popen(
        [AGORA, "watch", "build-coord", "-c", workspace], stdout=subprocess.PIPE, text=True
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().startswith("watching #build-coord")
        agora("inject", "build-coord", "query-if", "is main green?", "--hops", 1, "-c", workspace)
        line = watcher.stdout.readline()
        assert "#build-coord maintainer query-if (hops 1" in line
        assert line.rstrip().endswith("is main green?")
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)


def test_a_config_mistake_is_reported_before_anything_starts(tmp_path: Path) -> None:
    config = tmp_path / "agora.yaml"
    config.write_text(
        "channels: {build-coord: {}}\n"
        "agents:\n"
        "  synth-agent:\n"
        "    component: chatty\n"
        "    channels: [build-coord]\n"
        "    limits: {memory_mb: 8}\n"
    )
    result = agora("up", "-c", config, check=False)
    assert result.returncode == 1
    assert "agora.yaml: agents.synth-agent.limits.memory_mb: expected" in result.stderr
    assert "got 8" in result.stderr
    assert not (tmp_path / ".agora").exists()  # no server started, nothing written


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            ("agents_dir",),
            "nowhere",
            "agents_dir: expected the folder of the agents' sources, one folder with app.py "
            "per component (default: agents), got '{root}/nowhere', which is not a folder",
        ),
        (
            ("agents", "synth-agent", "component"),
            "chaty",
            "agents.synth-agent.component: expected a component in {agents} (a folder "
            "holding app.py): one of chatty, coordinator, summarizer, voter (did you mean "
            "'chatty'?), got 'chaty'",
        ),
    ],
)
def test_a_missing_agent_source_is_a_config_error_naming_the_key(
    workspace: Path, key: tuple[str, ...], value: str, message: str
) -> None:
    document = yaml.safe_load(workspace.read_text())
    place = document
    for step in key[:-1]:
        place = place[step]
    place[key[-1]] = value
    workspace.write_text(yaml.safe_dump(document))
    result = agora("up", "-c", workspace, check=False)
    assert result.returncode == 1
    expected = message.format(root=workspace.parent, agents=document["agents_dir"])
    assert result.stderr == f"agora: {workspace}: {expected}\n"
    assert not (workspace.parent / ".agora" / "nats").exists()  # nothing started


def test_commands_say_when_no_host_is_running(workspace: Path) -> None:
    result = agora("inject", "build-coord", "inform", "hi", "-c", workspace, check=False)
    assert result.returncode == 1
    assert "start one with `agora up`" in result.stderr
    refused = agora("inject", "build-coord", "shout", "hi", "-c", workspace, check=False)
    assert refused.returncode == 1
    assert "shout" in refused.stderr


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (("--agent", "synth_agent"), "no agent 'synth_agent' in the key registry: the agents are"),
        (("--channel", "nope"), "no channel 'nope' in "),
        (("--all", "--as", "synth-agent"), "every host would ignore this killed event"),
    ],
)
def test_a_kill_that_would_stop_nothing_is_refused(
    workspace: Path, target: tuple[str, ...], message: str
) -> None:
    # Refused before anything is sent: no host needs to be running.
    result = agora("kill", *target, "-c", workspace, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert "start one with `agora up`" not in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("log", "build_coord"),
        ("watch", "build-coord", "build_coord"),
        ("inject", "build_coord", "inform", "hi"),
    ],
)
def test_a_channel_the_config_does_not_declare_is_refused_before_connecting(
    workspace: Path, command: tuple[str, ...]
) -> None:
    result = agora(*command, "-c", workspace, check=False)
    assert result.returncode == 1
    assert result.stderr == (
        f"agora: no channel 'build_coord' in {workspace}: the channels are "
        "build-coord, secret-ops\n"
    )
    assert result.stdout == ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_agora_up_runs_the_bridge_when_configured(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    assert "chatty" in components
    github = GitHubStandIn()
    url = await github.start()
    try:
        github.add_user("mona", association="MEMBER")
        github.add_user("agora-bridge[bot]", type="Bot", association="COLLABORATOR")
        github.create_repo("octo/repo")
        issue = github.create_issue("octo/repo", "Coordination", "", by="mona")
        port = _free_port()
        config = create_workspace(
            tmp_path,
            channels=("build-coord",),
            agents={"synth-agent": PAIR["synth-agent"]},
            extra={
                "bridge": {
                    "webhook_secret": {"env": "HOOK_SECRET"},
                    "listen": {"port": port},
                    "github": {"api_url": url, "token": {"env": "GH_TOKEN"}},
                    "links": {"build-coord": f"octo/repo#{issue}"},
                }
            },
            others={"bridge": (Role.BRIDGE, ["build-coord"])},
        )
        environment = {
            **os.environ,
            "HOOK_SECRET": "cli-secret",
            "GH_TOKEN": github.issue_token("agora-bridge[bot]"),
        }
        log = (tmp_path / "up.log").open("w")
        process = await asyncio.create_subprocess_exec(
            AGORA, "up", "-c", str(config), stdout=log, stderr=subprocess.STDOUT, env=environment
        )
        try:
            await _until_ready(f"http://127.0.0.1:{port}/readyz")
            github.set_webhook(f"http://127.0.0.1:{port}/webhook", "cli-secret")
            github.comment("octo/repo", issue, "/agora query-if is main green?", by="mona")
            await github.drain()
            acts = await _eventually_async(
                lambda: [a for a in _acts(config, "build-coord") if a["sender"] == "synth-agent"]
            )
            assert (
                acts[0]["in_reply_to"]
                == f"act-gh-comment-{github.comments('octo/repo', issue)[0].id}"
            )
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), timeout=30)
            log.close()
        assert "cli-secret" not in (tmp_path / "up.log").read_text()
        assert environment["GH_TOKEN"] not in (tmp_path / "up.log").read_text()
    finally:
        await github.stop()


@pytest.mark.parametrize(
    ("bridge", "others", "message"),
    [
        ("relay", {"relay": (Role.AGENT, ["build-coord"])}, "has role agent, expected bridge"),
        ("bridge", {"bridge": (Role.BRIDGE, ["other"])}, "is not granted build-coord, which"),
        ("nobody", {}, "'nobody' is not registered in"),
        ("bridge", {"bridge": (Role.BRIDGE, ["build-coord"])}, "bridge.key does not exist"),
    ],
)
def test_agora_up_checks_the_bridges_key_before_anything_starts(
    tmp_path: Path, bridge: str, others: dict[str, tuple[Role, list[str]]], message: str
) -> None:
    config = create_workspace(
        tmp_path,
        channels=("build-coord", "other"),
        agents={},
        extra={
            "bridge": {
                "identity": bridge,
                "webhook_secret": {"env": "HOOK_SECRET"},
                "github": {"api_url": "http://127.0.0.1:9", "token": {"env": "GH_TOKEN"}},
                "links": {"build-coord": "octo/repo#1"},
            }
        },
        others=others,
    )
    if message.startswith("bridge.key"):
        (tmp_path / ".agora" / "keys" / "bridge.key").unlink()
    environment = {**os.environ, "HOOK_SECRET": "s", "GH_TOKEN": "t"}
    result = subprocess.run(
        [AGORA, "up", "-c", config],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=120,  # a bridge that started would serve until stopped
    )
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "facts").exists()  # nothing started
    assert not (tmp_path / ".agora" / "nats").exists()


async def _until_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "agora up did not become ready"
            await asyncio.sleep(0.1)


async def _eventually_async(probe: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await asyncio.to_thread(probe)
        if value:
            return value
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.2)


def test_inject_refuses_a_reply_to_no_recorded_fact(workspace: Path) -> None:
    (workspace.parent / "facts").mkdir()
    (workspace.parent / "facts" / "log.jsonl").write_text("")
    result = agora(
        "inject",
        "build-coord",
        "inform",
        "re",
        "--reply-to",
        "act-nothing",
        "-c",
        workspace,
        check=False,
    )
    assert result.returncode == 1
    assert "--reply-to 'act-nothing' is no fact" in result.stderr


def test_up_runs_only_the_agents_it_is_given(workspace: Path) -> None:
    refused = agora("up", "-c", workspace, "--agent", "nobody", check=False)
    assert refused.returncode != 0
    assert "there is no agent 'nobody' under agents" in refused.stderr
    assert "synth-agent, relay-agent" in refused.stderr

    log = (workspace.parent / "up-one.log").open("w")
    process = subprocess.Popen(
        [AGORA, "up", "-c", workspace, "--agent", "relay-agent"],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        status = eventually(lambda: _status(workspace))
        [host] = _processes(status)
        assert list(host["agents"]) == ["relay-agent"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


@pytest.mark.parametrize("reconnect", [False, True])
async def test_a_nats_server_that_is_not_there_is_an_error_not_a_wait(reconnect: bool) -> None:
    with socket.socket() as taken:  # bound, never listening: every connect is refused
        taken.bind(("127.0.0.1", 0))
        url = f"nats://127.0.0.1:{taken.getsockname()[1]}"
        async with asyncio.timeout(10):
            with pytest.raises(ConfigError, match=f"cannot reach NATS at {url}"):
                async with connected(url, reconnect=reconnect):
                    pass


@pytest.mark.parametrize(
    ("off_s", "status", "said"),
    [(0, 0, ""), (-60, 0, ""), (45, 1, "45 s ahead of"), (-100, 1, "100 s behind")],
)
def test_inject_says_when_every_host_will_refuse_its_act_as_stale(
    off_s: int, status: int, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    stored_ms = 1_800_000_000_000
    act = Act(
        id="act-1",
        conversation="act-1",
        sender="maintainer",
        channel="build-coord",
        act=Performative.INFORM,
        payload="hi",
        hops=1,
        time_ms=stored_ms + off_s * 1000,
    )
    assert _judged_fresh(act, stored_ms) == status
    err = capsys.readouterr().err
    assert (said in err and "refuses it as stale" in err) if said else err == ""


def _stale_report(host: str, instance: str, machine: str) -> bytes:
    report = {"host": host, "instance": instance, "machine": machine, "pid": 7, "time_ms": 1000}
    return json.dumps({**report, "agents": {}}).encode()


async def _seed_stale_reports(url: str) -> None:
    """Reports of processes gone long ago: an earlier run on this machine, one an earlier
    version wrote under the host's bare name, and one from another machine."""
    async with connected(url) as client:
        js = client.jetstream()
        await ensure_spine(js)
        kv = await js.key_value(STATUS_BUCKET)
        here = machine_name()
        await kv.put(f"host.{here}.7-dead", _stale_report("host", f"{here}.7-dead", here))
        await kv.put("host", json.dumps({"host": "host", "time_ms": 1000}).encode())
        await kv.put(
            "host.elsewhere.7-beef", _stale_report("host", "elsewhere.7-beef", "elsewhere")
        )


async def test_status_shows_every_process_of_a_host_grouped(
    tmp_path: Path, components: dict[str, Path], nats_server: EmbeddedNats
) -> None:
    assert "chatty" in components
    config = create_workspace(
        tmp_path, channels=("build-coord",), agents=PAIR, extra={"nats": {"url": nats_server.url}}
    )
    await _seed_stale_reports(nats_server.url)
    log = (tmp_path / "up.log").open("w")
    processes = [
        await asyncio.create_subprocess_exec(
            AGORA, "up", "-c", str(config), *options, stdout=log, stderr=subprocess.STDOUT
        )
        for options in (
            ("--agent", "synth-agent"),
            ("--agent", "relay-agent", "--no-record"),
        )
    ]
    try:

        def both_running() -> dict[str, Any] | None:
            status = _status(config)
            running = status and [p for p in _processes(status) if p["running"]]
            return status if running and len(running) == 2 else None

        status = await _eventually_async(both_running)
        text = (await asyncio.to_thread(agora, "status", "-c", config)).stdout
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        log.close()
    [host] = status["hosts"].values()
    assert host["running"] is True
    here = machine_name()
    by_agents = {tuple(p["agents"]): p for p in host["instances"].values()}
    assert set(by_agents) == {("synth-agent",), ("relay-agent",), ()}
    assert {p["machine"] for p in by_agents.values()} == {here, "elsewhere"}
    assert by_agents[()]["running"] is False  # the other machine's stays, not running
    assert f"{here}.7-dead" not in host["instances"]  # this machine's earlier run: cleared
    assert "host" not in host["instances"]  # and the report under the bare name
    assert "host host: 2 of 3 processes running\n" in text
    assert re.search(r"\n  elsewhere \(pid 7\): not running \(last report ", text), text
    assert text.count("): running (reported ") == 2


async def test_status_leaves_out_what_is_not_a_report_and_says_so(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    # Whoever may write the status bucket can put anything there: one bad value may
    # not stop the operator from seeing the others.
    config = create_workspace(
        tmp_path, channels=("build-coord",), agents={}, extra={"nats": {"url": nats_server.url}}
    )
    await _seed_stale_reports(nats_server.url)
    bad = {
        "x.time": b'{"time_ms": "soon"}',
        "x.agent": b'{"time_ms": 1, "agents": {"x": {}}}',
        "x.agents": b'{"agents": [1]}',
        "x.recorder": b'{"time_ms": 1, "recorder": {"recorded": "many"}}',
        "x.json": b"[[[",
        "x.recorder-text": b'{"time_ms": 1, "recorder": "x"}',
        "x.huge": b'{"time_ms": -1' + b"0" * 400 + b"}",
        "x.offset": b'{"time_ms": 1, "clock_offset_ms": 1' + b"0" * 400 + b"}",
    }
    async with connected(nats_server.url) as client:
        kv = await client.jetstream().key_value(STATUS_BUCKET)
        for key, value in bad.items():
            await kv.put(key, value)
    status = _status(config)
    assert status is not None
    assert status["malformed_reports"] == {
        "x.agent": "agents.x: expected channels, state and counters",
        "x.agents": "agents: not what a host writes",
        "x.json": "not JSON",
        "x.recorder": "recorder: expected recorded, refused and failure",
        "x.time": "time_ms: not what a host writes",
        "x.recorder-text": "recorder: not what a host writes",
        "x.huge": "time_ms: not what a host writes",
        "x.offset": "clock_offset_ms: not what a host writes",
    }
    assert set(status["hosts"]) == {"host"}  # the good reports are all there
    text = (await asyncio.to_thread(agora, "status", "-c", config)).stdout
    assert "status report x.time left out: time_ms: not what a host writes\n" in text
    assert "host host: not running\n" in text


def test_a_registered_name_whose_private_key_is_gone_is_told_what_helps(
    workspace: Path,
) -> None:
    # `agora keys new` would refuse the name, which is registered already
    (workspace.parent / ".agora" / "keys" / "maintainer.key").unlink()
    result = agora("inject", "build-coord", "inform", "hi", "-c", workspace, check=False)
    assert result.returncode == 1
    assert "maintainer.key does not exist: put back the private key that keys.yaml" in (
        result.stderr
    )
    assert "`agora keys rotate maintainer`" in result.stderr
    assert "keys new" not in result.stderr


def test_a_kill_reason_too_long_is_refused_naming_the_option(workspace: Path) -> None:
    result = agora(
        "kill", "--channel", "build-coord", "--reason", "a" * 1025, "-c", workspace, check=False
    )
    assert result.returncode == 2
    assert "argument --reason: at most 1024 characters, got 1025" in result.stderr


def test_a_reply_goes_in_the_conversation_of_the_act_it_answers(
    tmp_path: Path, keys: dict[str, SigningKey]
) -> None:
    facts = tmp_path / "facts"
    asked = make_act(payload="vote?")
    with FactLog.open(facts, signer=keys["host"]) as log:
        log.append(sign_fact(asked, keys["synth-agent"]), asked)
    assert _reply_conversation(asked.id, None, facts) == asked.conversation
    assert _reply_conversation(asked.id, "conv-chosen", facts) == "conv-chosen"
    with pytest.raises(InputError, match="is no fact in"):
        _reply_conversation("act-nothing", None, facts)
    with pytest.raises(InputError, match="give it with --conversation"):
        _reply_conversation(asked.id, None, tmp_path / "elsewhere")
    assert _reply_conversation(asked.id, "conv-x", tmp_path / "elsewhere") == "conv-x"


async def test_agora_up_stops_cleanly_when_its_nats_server_is_gone(tmp_path: Path) -> None:
    server = EmbeddedNats(data_dir=tmp_path / "nats")
    url = await server.start()
    config = create_workspace(
        tmp_path, channels=("build-coord",), agents={}, extra={"nats": {"url": url}}
    )
    log = (tmp_path / "up.log").open("w")
    process = await asyncio.create_subprocess_exec(
        AGORA, "up", "-c", str(config), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        await _eventually_async(lambda: _status(config))
        await server.stop()  # with the host's status reports, and more, still to send
        await asyncio.sleep(1.5)  # it tries to reconnect meanwhile
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), timeout=60) == 0
    finally:
        if process.returncode is None:
            process.kill()
        log.close()
        await server.stop()
    output = (tmp_path / "up.log").read_text()
    assert "Traceback" not in output, output
    assert output.count("(reconnecting; said once a minute)") <= 3  # one line each kind
