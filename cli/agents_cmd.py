"""``agora agents``: build the agents into wasm components and show which are built.

A component is built again only when its Python sources, the WIT contract or the
componentize-py version changed (see :mod:`agora.host.builder`). The contract is the
folder's own ``wit/`` if it has one, else agora's, as ``agora up`` uses it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

from agora.cli.session import folder_argument
from agora.host.builder import agent_statuses, build_agents

DEFAULT_SOURCE: Final = Path("agents")
DEFAULT_BUILD_DIR: Final = Path("agents/build")
OWN_WIT: Final = Path("wit")
SOURCE_WIT: Final = Path(__file__).resolve().parent.parent / "wit"


def contract_in(folder: Path) -> Path:
    """The WIT contract to build against: ``folder``'s own ``wit/``, else agora's."""
    own = folder / OWN_WIT
    return own if own.is_dir() else SOURCE_WIT


def register(commands: Any) -> None:
    agents = commands.add_parser("agents", help="build the agents and list them")
    actions = agents.add_subparsers(dest="agents_command", required=True, metavar="ACTION")

    build = actions.add_parser("build", help="build agents that changed into wasm components")
    build.add_argument(
        "names", nargs="*", metavar="NAME", help="agents to build (default: all of them)"
    )
    _folder_options(build)
    build.set_defaults(run=run_build)

    listing = actions.add_parser("list", help="show the agents and whether each is built")
    _folder_options(listing)
    listing.set_defaults(run=run_list)


def _folder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help="the agents' sources, one folder each (default: agents)",
    )
    parser.add_argument(
        "--build-dir",
        type=folder_argument,
        default=DEFAULT_BUILD_DIR,
        help="where components are written (default: agents/build)",
    )
    parser.add_argument(
        "--wit",
        type=Path,
        help="the WIT contract (default: wit if there is one here, else agora's own)",
    )


def _contract(arguments: argparse.Namespace) -> Path:
    wit: Path | None = arguments.wit
    return contract_in(Path()) if wit is None else wit


def run_build(arguments: argparse.Namespace) -> int:
    build_agents(
        arguments.source,
        arguments.build_dir,
        _contract(arguments),
        arguments.names or None,
        log=print,
    )
    return 0


def run_list(arguments: argparse.Namespace) -> int:
    for status in agent_statuses(arguments.source, arguments.build_dir, _contract(arguments)):
        if not status.built:
            state = "not built"
        elif status.up_to_date:
            state = "built, up to date"
        else:
            state = "built, out of date"
        print(f"{status.name:<24} {state}")
    return 0
