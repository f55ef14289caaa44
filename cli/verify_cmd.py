"""``agora verify``: check a facts directory offline; exit 0 only if everything holds."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Final

from agora.cli.keys_cmd import DEFAULT_REGISTRY
from agora.core.errors import AgoraError
from agora.core.keys import KeyRegistry
from agora.core.verify import Problem, Report, verify_directory

DEFAULT_FACTS_DIR: Final = Path("facts")


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
        type=int,
        default=os.cpu_count() or 1,
        help="processes that check signatures (default: one per core)",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    try:
        registry = KeyRegistry.load(arguments.keys)
        report = verify_directory(arguments.facts_dir, registry, jobs=arguments.jobs)
    except AgoraError as exc:
        report = Report(problem=Problem(str(arguments.keys), str(exc)))
    if arguments.json:
        print(json.dumps(report.to_json(), sort_keys=True))
    elif report.problem is None:
        print(
            f"OK {arguments.facts_dir}: {report.entries} facts ({report.acts} acts, "
            f"{report.events} events), {report.checkpoints} checkpoints, "
            f"tree size {report.size}, root {report.root}"
        )
    else:
        print(f"FAIL {arguments.facts_dir}: {report.problem}")
    return 0 if report.ok else 1
