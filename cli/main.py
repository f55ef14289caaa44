"""``agora``: the entry point. Parses arguments and hands each command a plain config.

Only this layer reads the environment and the command line; everything below takes
keyword arguments. An :class:`~agora.core.errors.AgoraError` ends a command with its
message on stderr and a non-zero exit code, never with a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agora.cli import (
    agents_cmd,
    channel_cmds,
    control_cmds,
    demo_cmd,
    keys_cmd,
    status_cmd,
    up_cmd,
    verify_cmd,
)
from agora.core.errors import AgoraError

EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agora",
        description="Real-time coordination for software agents, recorded as signed facts.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keys_cmd.register(commands)
    verify_cmd.register(commands)
    demo_cmd.register(commands)
    agents_cmd.register(commands)
    up_cmd.register(commands)
    channel_cmds.register(commands)
    control_cmds.register(commands)
    status_cmd.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        status: int = arguments.run(arguments)
    except AgoraError as exc:
        print(f"agora: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
