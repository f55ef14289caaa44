"""`agora demo` runs end to end on a real JetStream and ends with a JSON summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agora.cli.demo_cmd import DEMO_MARKER, prepare_workspace
from agora.core.errors import ConfigError

AGORA = Path(sys.executable).parent / "agora"


def test_demo_json_summary(tmp_path: Path) -> None:
    result = subprocess.run(
        [AGORA, "demo", "--json", "--facts-dir", tmp_path / "demo" / "facts"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["reference"] == {
        "scope_blocked": 8,
        "echo_dropped": 12,
        "converged_round": 3,
        "accepted": 6,
    }
    assert summary["live"] == {
        "accepted": 6,
        "echo_dropped": 6,
        "secret_delivered": 0,
        "converged": True,
    }
    decision = summary["decision"]
    assert decision["outcome"] == "accepted"
    assert decision["votes"] == {
        "alice-voter": "accept",
        "bob-voter": "accept",
        "carol-voter": "reject",
    }
    assert "accepted, 2 accept to 1 reject" in summary["summary"]
    assert summary["kill"] == {"stop_message_delivered": 2, "deliveries_after_kill": 0}
    github = summary["github"]
    assert github["injected"] == 2  # the request, and the one after the kill
    assert github["deliveries_after_kill"] == 0
    assert github["killed"] == 1
    assert github["comments_posted"] == 4  # two decisions and two summaries on #release
    assert github["refused"] >= 1  # the drive-by comment (and the bridge's own, coming back)
    assert github["commits"] == 1
    assert github["committed_facts_verified"] is True  # a JSON boolean, not 1
    assert summary["facts"]["verified"] is True
    assert summary["facts"]["entries"] > 40
    assert summary["tamper_detected"] is True
    again = subprocess.run(
        [AGORA, "verify", tmp_path / "demo" / "facts", "--keys", tmp_path / "demo" / "keys.yaml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 0, again.stdout


def test_demo_refuses_to_clear_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = subprocess.run(
        [AGORA, "demo", "--facts-dir", tmp_path / "facts"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "did not make" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_a_demo_folder_the_user_added_to_is_left_alone(tmp_path: Path) -> None:
    facts = tmp_path / "facts"
    prepare_workspace(facts)  # the folder was empty: the demo takes it
    facts.mkdir()
    (tmp_path / "agora.yaml").write_text("made by the demo")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"did not make \(notes.txt\)"):
        prepare_workspace(facts)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "agora.yaml").exists() and facts.is_dir()
    (tmp_path / "notes.txt").unlink()
    prepare_workspace(facts)  # only what the demo made: cleared for the next run
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEMO_MARKER]


def test_ctrl_c_during_the_demo_stops_the_host_quietly(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [AGORA, "demo", "--facts-dir", tmp_path / "demo" / "facts"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own, as a terminal's foreground job
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # the agents are busy with the vote from here on
            if line.startswith("2. An agreement"):
                os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
                break
        _, errors = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130  # 128 + SIGINT
    assert "Traceback" not in errors, errors
    assert "connection closed" not in errors, errors
