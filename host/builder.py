"""Build the agents into WebAssembly components with componentize-py, only when they changed.

An agent is a folder under the agents' source folder holding ``app.py``; its folder name
is the component's name. Building one runs::

    componentize-py -d WIT_DIR -w agent componentize app -o BUILD_DIR/NAME.wasm

inside the agent's folder, which takes seconds, so each build leaves a digest beside the
component (``NAME.wasm.digest``): SHA-256 over the agent's Python files, every file of
the WIT contract and the componentize-py version. A component whose digest still matches
is not built again. Components are written under a temporary name and moved into place,
so a reader never sees half a file; independent agents build side by side, two at a time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

from agora.core.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

COMPONENTIZE_PY: Final = "componentize-py"
WORLD: Final = "agent"
ENTRY_MODULE: Final = "app"
SKIPPED_FOLDERS: Final = frozenset({"build"})
MAX_PARALLEL_BUILDS: Final = 2
BUILD_TIMEOUT_S: Final = 600
VERSION_TIMEOUT_S: Final = 30
STDERR_TAIL_LINES: Final = 15
RUST_BACKTRACE_HEADER: Final = "Stack backtrace:"
DIGEST_SUFFIX: Final = ".digest"
GUEST_SOURCE: Final = "/0"  # where componentize-py shows the first folder of its Python path
OUTPUT_MODE: Final = 0o644  # mkstemp makes 0600; components are not secret

Log = Callable[[str], None]


class BuildError(InputError):
    """An agent componentize-py could not build. Names the agent; shows what went wrong."""


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """One agent's source folder and the state of its component."""

    name: str
    built: bool  # a component exists
    up_to_date: bool  # ... and was built from the sources as they are now


@dataclass(frozen=True, slots=True)
class _Job:
    name: str
    source: Path
    wasm: Path
    digest: str


def _log_line(line: str) -> None:
    logger.info("%s", line)


def component_path(build_dir: Path, name: str) -> Path:
    """Where the component of agent ``name`` is built."""
    return build_dir / f"{name}.wasm"


def find_agents(source_dir: Path) -> list[str]:
    """The agents under ``source_dir``: every folder holding ``app.py``, but ``build``."""
    if not source_dir.is_dir():
        raise ConfigError(f"agents folder {str(source_dir)!r} does not exist")
    return sorted(
        entry.name
        for entry in source_dir.iterdir()
        if entry.name not in SKIPPED_FOLDERS and (entry / f"{ENTRY_MODULE}.py").is_file()
    )


def build_agents(
    source_dir: Path,
    build_dir: Path,
    wit_dir: Path,
    names: Sequence[str] | None = None,
    *,
    log: Log = _log_line,
) -> dict[str, Path]:
    """Build the named agents (all of them when ``names`` is None) that changed.

    Returns each agent's component path, built now or already up to date. Raises
    :class:`BuildError` naming the agents that failed, once every build has finished.
    """
    chosen = _choose(source_dir, names)
    _check_contract(wit_dir)
    tool = find_componentize_py()
    version = componentize_py_version(tool)
    build_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        _Job(
            name=name,
            source=source_dir / name,
            wasm=component_path(build_dir, name),
            digest=source_digest(source_dir / name, wit_dir, version),
        )
        for name in chosen
    ]
    stale = [job for job in jobs if not _is_current(job.wasm, job.digest)]
    for job in jobs:
        if job not in stale:
            log(f"{job.name} is up to date")
    failures = _run_all(stale, tool, wit_dir, log)
    if failures:
        raise BuildError("\n\n".join(str(failure) for failure in failures))
    return {job.name: job.wasm for job in jobs}


def agent_statuses(source_dir: Path, build_dir: Path, wit_dir: Path) -> list[AgentStatus]:
    """Every agent under ``source_dir`` and whether its component is built and current."""
    _check_contract(wit_dir)
    version = componentize_py_version(find_componentize_py())
    statuses = []
    for name in find_agents(source_dir):
        wasm = component_path(build_dir, name)
        digest = source_digest(source_dir / name, wit_dir, version)
        statuses.append(AgentStatus(name, wasm.is_file(), _is_current(wasm, digest)))
    return statuses


def _choose(source_dir: Path, names: Sequence[str] | None) -> list[str]:
    known = find_agents(source_dir)
    if names is None:
        return known
    unknown = [name for name in names if name not in known]
    if unknown:
        listed = ", ".join(known) or "none"
        raise ConfigError(
            f"no agent {unknown[0]!r} in {str(source_dir)!r} (a folder holding "
            f"{ENTRY_MODULE}.py); agents there: {listed}"
        )
    return list(dict.fromkeys(names))


def _check_contract(wit_dir: Path) -> None:
    if not any(wit_dir.glob("*.wit")):
        raise ConfigError(f"WIT folder {str(wit_dir)!r} holds no .wit file")


def find_componentize_py() -> Path:
    """componentize-py beside this Python (its virtual environment) or else on PATH."""
    beside = Path(sys.executable).parent / COMPONENTIZE_PY
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(COMPONENTIZE_PY)
    if found is None:
        raise ConfigError(
            f"{COMPONENTIZE_PY} is not installed: not beside {sys.executable} nor on PATH "
            f"(pip install {COMPONENTIZE_PY})"
        )
    return Path(found)


@cache
def componentize_py_version(tool: Path) -> str:
    """What ``componentize-py --version`` prints, e.g. ``componentize-py 0.25.1``."""
    result = subprocess.run(  # noqa: S603 - our own tool, list argv, no shell
        [str(tool), "--version"],
        capture_output=True,
        text=True,
        timeout=VERSION_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise ConfigError(f"{tool} --version failed: {_tail(result.stderr)}")
    return result.stdout.strip()


def source_digest(agent_dir: Path, wit_dir: Path, tool_version: str) -> str:
    """SHA-256 over the agent's ``*.py`` files, the WIT files and the tool's version."""
    digest = hashlib.sha256()
    digest.update(_framed(tool_version.encode()))
    sources = sorted(path for path in agent_dir.rglob("*.py") if path.is_file())
    contract = sorted(path for path in wit_dir.rglob("*") if path.is_file())
    for label, root, paths in (("agent", agent_dir, sources), ("wit", wit_dir, contract)):
        for path in paths:
            relative = path.relative_to(root).as_posix()
            digest.update(_framed(f"{label}/{relative}".encode()))
            digest.update(_framed(path.read_bytes()))
    return digest.hexdigest()


def _framed(data: bytes) -> bytes:
    """Length-prefixed, so that no two different inputs hash the same."""
    return len(data).to_bytes(8, "big") + data


def digest_path(wasm: Path) -> Path:
    return wasm.with_name(wasm.name + DIGEST_SUFFIX)


def _is_current(wasm: Path, digest: str) -> bool:
    stored = digest_path(wasm)
    if not (wasm.is_file() and stored.is_file()):
        return False
    return stored.read_text(encoding="ascii").strip() == digest


def _run_all(jobs: Iterable[_Job], tool: Path, wit_dir: Path, log: Log) -> list[BuildError]:
    with ThreadPoolExecutor(max_workers=MAX_PARALLEL_BUILDS) as pool:
        futures = [pool.submit(_build_one, job, tool, wit_dir, log) for job in jobs]
    return [error for future in futures if (error := future.result()) is not None]


def _build_one(job: _Job, tool: Path, wit_dir: Path, log: Log) -> BuildError | None:
    """Build one component; a failure is returned, not raised, so the others finish."""
    started = time.monotonic()
    fd, temporary = tempfile.mkstemp(dir=job.wasm.parent, prefix=f".{job.wasm.name}.")
    os.close(fd)
    argv = [
        str(tool),
        "-d",
        str(wit_dir.resolve()),
        "-w",
        WORLD,
        "componentize",
        ENTRY_MODULE,
        "-o",
        str(Path(temporary).resolve()),
    ]
    try:
        result = subprocess.run(  # noqa: S603 - our own tool, list argv, no shell
            argv,
            cwd=job.source,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            output = _real_paths(result.stderr or result.stdout, job.source)
            return BuildError(
                f"agent {job.name!r} failed to build ({COMPONENTIZE_PY} exit status "
                f"{result.returncode}):\n{_tail(output)}"
            )
        Path(temporary).chmod(OUTPUT_MODE)
        Path(temporary).replace(job.wasm)
        _write_text_atomically(digest_path(job.wasm), job.digest + "\n")
    except subprocess.TimeoutExpired:
        return BuildError(f"agent {job.name!r} did not build within {BUILD_TIMEOUT_S} s")
    finally:
        Path(temporary).unlink(missing_ok=True)
    log(f"built {job.name} in {time.monotonic() - started:.1f} s")
    return None


def _write_text_atomically(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
        Path(temporary).chmod(OUTPUT_MODE)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _real_paths(text: str, source: Path) -> str:
    """The tool's output with the agent's files named where they are: componentize-py
    mounts its Python path (the agent's folder, the only entry given) as ``/0``."""
    return text.replace(f'"{GUEST_SOURCE}/', f'"{source.resolve()}/')


def _tail(text: str) -> str:
    """The last lines of a tool's output, without the Rust backtrace that may follow."""
    message = text.split(RUST_BACKTRACE_HEADER, 1)[0]
    lines = [line for line in message.splitlines() if line.strip()][-STDERR_TAIL_LINES:]
    return "\n".join(f"  | {line}" for line in lines) or "  | (no output)"
