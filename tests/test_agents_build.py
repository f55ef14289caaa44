"""Building agents with componentize-py: every shipped agent builds, and only once.

A build takes seconds, so these tests build into the real ``agents/build`` (where the
digest makes a repeat run free) and copy one small agent into a temporary folder for
the tests that must build again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agora.core.errors import AgoraError, ConfigError
from agora.host.builder import (
    BuildError,
    agent_statuses,
    build_agents,
    component_path,
    digest_path,
)

ROOT = Path(__file__).resolve().parent.parent
AGENTS = ROOT / "agents"
BUILD = AGENTS / "build"
WIT = ROOT / "wit"
SHIPPED = {"chatty", "coordinator", "summarizer", "voter"}
# A component (not a core module): "\0asm", then version 0x0d and layer 1.
COMPONENT_PREAMBLE = b"\x00asm\x0d\x00\x01\x00"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped() -> dict[str, Path]:
    return build_agents(AGENTS, BUILD, WIT)


@pytest.fixture
def small_agent(tmp_path: Path) -> Path:
    """A copy of chatty in a folder of its own, so changing it rebuilds no real agent."""
    source = tmp_path / "agents"
    shutil.copytree(AGENTS / "chatty", source / "chatty", ignore=shutil.ignore_patterns("__py*"))
    return source


def test_every_shipped_agent_builds_into_a_component(shipped: dict[str, Path]) -> None:
    assert set(shipped) == SHIPPED
    for name, wasm in shipped.items():
        assert wasm == component_path(BUILD, name)
        assert wasm.read_bytes()[: len(COMPONENT_PREAMBLE)] == COMPONENT_PREAMBLE


def test_unchanged_agents_are_not_built_again(shipped: dict[str, Path]) -> None:
    before = {name: wasm.stat().st_mtime_ns for name, wasm in shipped.items()}
    lines: list[str] = []

    build_agents(AGENTS, BUILD, WIT, log=lines.append)

    assert sorted(lines) == [f"{name} is up to date" for name in sorted(SHIPPED)]
    assert {name: wasm.stat().st_mtime_ns for name, wasm in shipped.items()} == before
    assert all(status.up_to_date for status in agent_statuses(AGENTS, BUILD, WIT))


def test_a_changed_source_is_built_again(small_agent: Path, tmp_path: Path) -> None:
    build = tmp_path / "build"
    wasm = build_agents(small_agent, build, WIT)["chatty"]
    first_digest = digest_path(wasm).read_text()
    app = small_agent / "chatty" / "app.py"
    app.write_text(app.read_text() + "\n# changed\n")
    lines: list[str] = []

    build_agents(small_agent, build, WIT, log=lines.append)

    assert len(lines) == 1
    assert lines[0].startswith("built chatty in ")
    assert digest_path(wasm).read_text() != first_digest
    assert sorted(path.name for path in build.iterdir()) == ["chatty.wasm", "chatty.wasm.digest"]


def test_a_broken_agent_fails_naming_it(tmp_path: Path) -> None:
    source = tmp_path / "agents"
    (source / "broken").mkdir(parents=True)
    (source / "broken" / "app.py").write_text("def handle(:\n")
    build = tmp_path / "build"

    with pytest.raises(BuildError) as caught:
        build_agents(source, build, WIT)

    assert isinstance(caught.value, AgoraError)
    assert "agent 'broken' failed to build" in str(caught.value)
    assert "SyntaxError" in str(caught.value)
    assert f'File "{source / "broken" / "app.py"}", line 1' in str(caught.value)
    assert '"/0/' not in str(caught.value)  # the tool's own name for the folder
    assert list(build.iterdir()) == []  # no component, no digest, no temporary file


def test_an_unknown_agent_is_refused_before_any_build(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no agent 'nobody'.*chatty"):
        build_agents(AGENTS, tmp_path / "build", WIT, ["nobody"])
    assert not (tmp_path / "build").exists()
