"""The README's key commands work exactly as written."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from agora.cli.workspace import AgentPlan
from agora.core.acts import Performative
from agora.core.keys import KeyRegistry
from agora.host.builder import component_path
from tests.harness import running_host

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _shell_blocks(section: str) -> list[str]:
    text = README.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", body, flags=re.DOTALL)


def test_readme_key_commands_run_as_written(tmp_path: Path) -> None:
    (script,) = _shell_blocks("Keys")
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    registry = KeyRegistry.load(tmp_path / "keys.yaml")
    assert registry.names == ["agora-host", "alice", "synth-agent"]
    assert "synth-agent" in result.stdout


async def test_readme_example_agent_builds_and_answers(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    text = README.read_text()
    section = text.split("### Write an agent\n", 1)[1].split("\n## ", 1)[0]
    (source,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    agent_dir = tmp_path / "agents" / "oracle"
    agent_dir.mkdir(parents=True)
    (agent_dir / "app.py").write_text(textwrap.dedent(source))
    # step 2 as written, outside the source checkout: no wit/ here, agora's own is used
    step = re.search(r"`(agora agents build oracle)`", section)
    assert step is not None
    build = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "agora",
        *step.group(1).split()[1:],
        cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )
    _, errors = await build.communicate()
    assert build.returncode == 0, errors.decode()
    built = {"oracle": component_path(tmp_path / "agents" / "build", "oracle")}
    plan = AgentPlan("oracle", ("build-coord",), {"facts": "ci is green, main is frozen"})
    async with running_host(tmp_path / "ws", {**components, **built}, agents={"oracle": plan}) as h:
        yes = await h.inject("build-coord", "CI is green", act=Performative.QUERY_IF, hops=2)
        no = await h.inject("build-coord", "it is friday", act=Performative.QUERY_IF, hops=2)
        await h.inject("build-coord", "ci is green", act=Performative.INFORM, hops=2)
        await h.settle()
        answers = {a.in_reply_to: (a.act, a.payload) for a in h.acts_by("oracle")}
    assert answers == {
        yes.id: (Performative.INFORM_IF, "yes"),
        no.id: (Performative.INFORM_IF, "no"),
    }
