"""The README's key commands work exactly as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from agora.core.keys import KeyRegistry

README = Path(__file__).resolve().parent.parent / "README.md"


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
