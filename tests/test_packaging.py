"""One distribution, one `agora` import name, one `agora` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("generic", ["host", "bridge", "core", "cli", "agents", "wit"])
def test_no_generic_top_level_name_is_importable(tmp_path: Path, generic: str) -> None:
    probe = (
        f"import importlib.util, sys; sys.exit(importlib.util.find_spec({generic!r}) is not None)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=False)
    assert result.returncode == 0, f"a top-level module named {generic!r} is installed"


@pytest.mark.parametrize("module", ["agora.core", "agora.cli", "agora.host", "agora.bridge"])
def test_every_part_imports_under_agora(tmp_path: Path, module: str) -> None:
    probe = f"import {module}"
    subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True)


def test_agora_command_lists_its_commands() -> None:
    result = subprocess.run([BIN / "agora", "--help"], capture_output=True, text=True, check=True)
    for command in ("keys", "verify", "demo"):
        assert command in result.stdout
