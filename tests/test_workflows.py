"""The GitHub workflows pass actionlint, and the verify workflow's own steps work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agora.core.factlog import LOG_FILE
from agora.core.keys import KeyRegistry
from tests.conftest import FactsBuilder

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent


def test_workflows_pass_actionlint() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "verify-facts.yml"}
    result = subprocess.run(
        [BIN / "actionlint", *files], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_grant_only_read_access() -> None:
    for path in WORKFLOWS.glob("*.yml"):
        workflow = yaml.safe_load(path.read_text())
        assert workflow["permissions"] == {"contents": "read"}, path.name


def test_verify_workflow_runs_on_fact_changes() -> None:
    workflow = yaml.safe_load((WORKFLOWS / "verify-facts.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    for event in ("push", "pull_request"):
        assert "facts/**" in triggers[event]["paths"]


def _run_steps(repository: Path) -> subprocess.CompletedProcess[str]:
    """Run the verify workflow's `run:` steps in ``repository``, as Actions would.

    `agora` is installed from the checkout into a fresh virtual environment that sees
    this one's dependencies, so the install step runs for real without the network.
    """
    workflow = yaml.safe_load((WORKFLOWS / "verify-facts.yml").read_text())
    job = workflow["jobs"]["verify"]
    venv = repository.parent / "runner-venv"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        site = next((venv / "lib").glob("python*/site-packages"))
        ours = next(p for p in sys.path if p.endswith("site-packages"))
        (site / "agora-test-deps.pth").write_text(ours + "\n")
    environment = {
        **os.environ,
        **job.get("env", {}),
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "PIP_NO_BUILD_ISOLATION": "0",
        "PIP_NO_INDEX": "1",
    }
    result: subprocess.CompletedProcess[str] | None = None
    for step in job["steps"]:
        if "run" not in step:
            continue
        result = subprocess.run(
            ["bash", "-e", "-c", step["run"]],
            cwd=repository,
            env={**environment, **step.get("env", {})},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return result
    assert result is not None
    return result


@pytest.mark.slow
def test_verify_workflow_steps_pass_good_facts_and_fail_tampered_ones(
    tmp_path: Path, build_facts: FactsBuilder, registry: KeyRegistry
) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(
        ROOT,
        repository,
        ignore=shutil.ignore_patterns(".venv", ".git", ".lint", "*_cache", "build", "*.egg-info"),
    )
    shutil.copytree(build_facts(10), repository / "facts")
    registry.save(repository / "keys.yaml")

    good = _run_steps(repository)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "OK facts: 10 facts" in good.stdout
    # installed as a user installs it, agora carries the agents' contract with it
    installed = next((tmp_path / "runner-venv" / "lib").glob("python*/site-packages/agora"))
    assert (installed / "wit" / "agent.wit").read_bytes() == (
        ROOT / "wit" / "agent.wit"
    ).read_bytes()

    log = repository / "facts" / LOG_FILE
    data = bytearray(log.read_bytes())
    position = data.index(b'"payload":"', data.index(b'"index":4')) + len(b'"payload":"') + 10
    data[position] = ord("A") if data[position] != ord("A") else ord("B")
    log.write_bytes(bytes(data))
    bad = _run_steps(repository)
    assert bad.returncode == 1
    assert "FAIL facts: entry 4" in bad.stdout
