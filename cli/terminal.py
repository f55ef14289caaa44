"""What the CLI shows a person: untrusted text made safe for a terminal.

A payload, a kill's reason, an agent's name in a host's report: text that others wrote
reaches the operator's terminal. Shown as written, an escape sequence could drive the
terminal (OSC 52 writes the clipboard), a carriage return or newline could draw a line
that looks like a verified act from someone else, and a bidi override could reorder what
is read. :func:`terminal_safe` escapes all of those, so one shown item is one line that
says exactly what was sent. JSON output needs none of this: JSON escapes them itself.
"""

from __future__ import annotations

import io
import re
import sys
from typing import Final

# C0 controls but tab, DEL, C1 controls, the Arabic letter mark, the left-to-right and
# right-to-left marks, the line and paragraph separators, bidi embeddings, overrides and
# isolates, and lone surrogates (which no terminal can be sent as UTF-8).
_UNSAFE: Final = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x0A:
        return "\\n"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def terminal_safe(text: str) -> str:
    """``text`` with every character that could act on a terminal or break a line escaped:
    a newline as ``\\n``, other controls as ``\\xNN``, separators and bidi controls as
    ``\\uNNNN``. Tabs and everything printable are left as they are."""
    return _UNSAFE.sub(_escaped, text)


def show(line: str) -> None:
    """Print one line of human output made of text that others wrote."""
    print(terminal_safe(line))


def tolerant_stdout() -> None:
    """Let standard output take any text: what its encoding cannot write (an emoji under
    an ASCII locale) is written as a backslash escape instead of ending the command."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
