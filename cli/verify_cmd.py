"""``agora verify``: check a facts directory offline; exit 0 only if everything holds."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Final

from agora.cli.keys_cmd import DEFAULT_REGISTRY
from agora.cli.terminal import show
from agora.core.errors import AgoraError
from agora.core.keys import KeyRegistry
from agora.core.verify import Extends, Problem, Report, verify_directory

DEFAULT_FACTS_DIR: Final = Path("facts")
MAX_JOBS: Final = 64  # processes checking signatures: past the cores, each only costs memory


def job_count(text: str) -> int:
    """``--jobs``: an integer from 1 to :data:`MAX_JOBS`."""
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if not 1 <= jobs <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_JOBS}, got {text!r}")
    return jobs


def register(commands: Any) -> None:
    verify = commands.add_parser(
        "verify",
        help="check every signature, leaf, checkpoint and grant in a facts directory",
        description=(
            "Check, offline, every signature against the key registry, every leaf against "
            "the signed checkpoint, consistency between checkpoints, unique ids, contiguous "
            "indices, channel grants and the rivet view. Exit 0 if all holds, 1 otherwise."
        ),
    )
    verify.add_argument(
        "facts_dir", nargs="?", type=Path, default=DEFAULT_FACTS_DIR, help="default: facts"
    )
    verify.add_argument(
        "--keys", type=Path, default=DEFAULT_REGISTRY, help="key registry (default: keys.yaml)"
    )
    verify.add_argument(
        "--jobs",
        type=job_count,
        default=min(os.cpu_count() or 1, MAX_JOBS),
        help=f"processes that check signatures, 1 to {MAX_JOBS} (default: one per core)",
    )
    verify.add_argument(
        "--extends",
        type=Path,
        metavar="NOTE",
        help=(
            "a signed checkpoint taken from outside the directory (say, the newest one the "
            "main branch holds) that the log must extend: no entry it covers removed or "
            "changed"
        ),
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    try:
        registry = KeyRegistry.load(arguments.keys)
        extends = None
        if arguments.extends is not None:
            where = f"--extends {arguments.extends}"
            extends = Extends(where, arguments.extends.read_bytes())
        report = verify_directory(
            arguments.facts_dir, registry, jobs=arguments.jobs, extends=extends
        )
    except AgoraError as exc:
        report = Report(problem=Problem(str(arguments.keys), str(exc)))
    except OSError as exc:  # a file in the facts directory that cannot be read
        where = str(exc.filename or arguments.facts_dir)
        report = Report(problem=Problem(where, f"cannot be read: {exc.strerror or exc}"))
    if arguments.json:
        print(json.dumps(report.to_json(), sort_keys=True))
    elif report.problem is None:
        print(
            f"OK {arguments.facts_dir}: {report.entries} facts ({report.acts} acts, "
            f"{report.events} events), {report.checkpoints} checkpoints, "
            f"tree size {report.size}, root {report.root}"
        )
    else:
        show(f"FAIL {arguments.facts_dir}: {report.problem}")  # it may quote the log
    return 0 if report.ok else 1
