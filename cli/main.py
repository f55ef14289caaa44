"""``agora``: the entry point. Parses arguments and hands each command a plain config.

Only this layer reads the environment and the command line; everything below takes
keyword arguments. An :class:`~agora.core.errors.AgoraError`, or an error from NATS that
no command turned into one, ends a command with one message on stderr and a non-zero
exit code, never with a traceback. When the reader of the output goes away (``agora log
CHANNEL | head -1``), a command ends quietly with exit status 141, as a program ended by
SIGPIPE does. Standard output takes any text, whatever its encoding can write.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from nats.errors import Error as NatsError

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
from agora.cli.terminal import terminal_safe, tolerant_stdout
from agora.core.errors import AgoraError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of the output went away


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
    tolerant_stdout()
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        status: int = arguments.run(arguments)
        sys.stdout.flush()  # here, so that a reader gone away is seen here too
    except AgoraError as exc:
        return failed(str(exc))
    except NatsError as exc:  # the server's words: no URL, so no credential, in them
        return failed(f"NATS: {str(exc).strip() or type(exc).__name__}")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`agora log CHANNEL | head -1`): stop quietly, with the
        # status of a program ended by SIGPIPE. What is still buffered goes nowhere, so
        # the interpreter's last flush cannot fail again on the way out.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return status


def failed(message: str) -> int:
    """Say why the command failed, each line made safe for a terminal (a message may
    quote what others wrote), and give the exit status for it."""
    lines = (terminal_safe(line) for line in message.split("\n"))
    print("agora: " + "\n".join(lines), file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
