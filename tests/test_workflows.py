"""The GitHub workflows pass actionlint, and the verify workflow's own steps work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from agora.core.factlog import CHECKPOINT_DIR, LOG_FILE, VIEW_FILE, FactLog, checkpoint_name
from agora.core.keys import KeyRegistry, SigningKey
from agora.core.signing import sign_fact
from tests.conftest import FactsBuilder
from tests.factories import make_act

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


def _run_steps(repository: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the verify workflow's `run:` steps in ``repository``, as Actions would: with
    the job's environment (``env`` over it, for what Actions works out, such as
    ``BASE_SHA``), a fresh ``RUNNER_TEMP``, and what a step adds to ``GITHUB_ENV``
    passed on to the steps after it.

    `agora` is installed into a fresh virtual environment that sees this one's
    dependencies, so the install step runs for real without the network.
    """
    workflow = yaml.safe_load((WORKFLOWS / "verify-facts.yml").read_text())
    job = workflow["jobs"]["verify"]
    runner = Path(tempfile.mkdtemp(prefix="runner-", dir=repository.parent))
    venv = runner / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    ours = next(p for p in sys.path if p.endswith("site-packages"))
    (site / "agora-test-deps.pth").write_text(ours + "\n")
    github_env = runner / "github-env"
    github_env.touch()
    (runner / "temp").mkdir()
    environment = {
        **os.environ,
        **job.get("env", {}),
        "BASE_SHA": "",
        **env,
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "PIP_NO_BUILD_ISOLATION": "0",
        "PIP_NO_INDEX": "1",
        "RUNNER_TEMP": str(runner / "temp"),
        "GITHUB_ENV": str(github_env),
    }
    result: subprocess.CompletedProcess[str] | None = None
    for step in job["steps"]:
        if "run" not in step:
            continue
        added = dict(line.split("=", 1) for line in github_env.read_text().splitlines())
        result = subprocess.run(
            ["bash", "-e", "-c", step["run"]],
            cwd=repository,
            env={**environment, **added, **step.get("env", {})},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return result
    assert result is not None
    return result


def _project_copy(repository: Path) -> None:
    shutil.copytree(
        ROOT,
        repository,
        ignore=shutil.ignore_patterns(".venv", ".git", ".lint", "*_cache", "build", "*.egg-info"),
    )


def _git(repository: Path, *arguments: str) -> str:
    command = ["git", "-C", str(repository), "-c", "user.name=t", "-c", "user.email=t@t"]
    done = subprocess.run([*command, *arguments], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.slow
def test_verify_workflow_steps_pass_good_facts_and_fail_tampered_ones(
    tmp_path: Path, build_facts: FactsBuilder, registry: KeyRegistry
) -> None:
    repository = tmp_path / "repository"
    _project_copy(repository)
    shutil.copytree(build_facts(10), repository / "facts")
    registry.save(repository / "keys.yaml")

    good = _run_steps(repository)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "OK facts: 10 facts" in good.stdout
    # installed as a user installs it, agora carries the agents' contract with it
    installed = next(tmp_path.glob("runner-*/venv/lib/python*/site-packages/agora"))
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


@pytest.mark.slow
def test_verify_workflow_steps_hold_a_change_to_the_base_commits_newest_checkpoint(
    tmp_path: Path, build_facts: FactsBuilder, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    # A change that cuts the log back to an earlier checkpoint passes every check of
    # the directory's own; the checkpoint the base commit held shows it. A change that
    # extends the log passes.
    repository = tmp_path / "repository"
    _project_copy(repository)
    facts = repository / "facts"
    shutil.copytree(build_facts(10, every=5), facts)
    registry.save(repository / "keys.yaml")
    _git(repository, "init", "--quiet")
    _git(repository, "add", "--all")
    _git(repository, "commit", "--quiet", "-m", "base")
    base = _git(repository, "rev-parse", "HEAD")

    with FactLog.open(facts, signer=keys["host"]) as log:
        act = make_act(payload="later")
        log.append(sign_fact(act, keys["synth-agent"]), act)
        log.checkpoint()
    _git(repository, "add", "--all")
    _git(repository, "commit", "--quiet", "-m", "one fact more")
    grown = _run_steps(repository, BASE_SHA=base)
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert "OK facts: 11 facts" in grown.stdout

    _git(repository, "reset", "--quiet", "--hard", base)
    lines = (facts / LOG_FILE).read_bytes().splitlines(keepends=True)
    (facts / LOG_FILE).write_bytes(b"".join(lines[:5]))
    (facts / CHECKPOINT_DIR / checkpoint_name(10)).unlink()
    (facts / VIEW_FILE).unlink()
    FactLog.open(facts, signer=keys["host"]).close()  # writes the view of what is left
    _git(repository, "add", "--all")
    _git(repository, "commit", "--quiet", "-m", "the last five facts gone")
    alone = _run_steps(repository)  # no base: the directory's own checks
    assert alone.returncode == 0, alone.stdout + alone.stderr
    cut = _run_steps(repository, BASE_SHA=base)
    assert cut.returncode == 1
    assert "covers 10 entries but the log holds 5: the log was cut back" in cut.stdout

    # The same change on a new branch (no commit before it): held to the default branch
    _git(repository, "branch", "--quiet", "trunk", base)
    new_branch = _run_steps(repository, BASE_SHA="0" * 40, DEFAULT_BRANCH="trunk")
    assert new_branch.returncode == 1
    assert "the log was cut back" in new_branch.stdout
    # A base that is not there (gone with a force push) is no reason to skip the check
    gone = _run_steps(repository, BASE_SHA="1" * 40)
    assert gone.returncode == 1
    assert "is not in the repository (a force push?)" in gone.stdout

    # A change that brings a package named pip: the install does not import it
    fake = repository / "pip"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(
        "import os, pathlib, stat, sys\n"
        "bin = pathlib.Path(sys.executable).parent / 'agora'\n"
        "bin.write_text('#!/bin/sh\\necho OK facts: all good\\n')\n"
        "bin.chmod(0o755)\n"
    )
    _git(repository, "add", "--all")
    _git(repository, "commit", "--quiet", "-m", "and a pip of its own")
    shadowed = _run_steps(repository, BASE_SHA=base)
    assert shadowed.returncode == 1
    assert "the log was cut back" in shadowed.stdout
