"""What a comment on a linked issue says, and whether its author may say it.

Pure decisions over plain values, so every rule is testable without GitHub:

- ``/agora <act> text`` on the first line picks the act (any of the 22 performatives);
  anything else is an ``inform`` carrying the whole comment;
- the bridge's own comments carry a hidden marker and are never injected back;
- bots are not injected (another bridge's echo must not start a loop);
- a person speaks if their author association is allowed (OWNER, MEMBER, COLLABORATOR
  by default) or their login is on the allow-list;
- comments on pull requests are injected only when configured.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from agora.core.acts import Performative, parse_act
from agora.core.envelope import check_payload
from agora.core.errors import InputError

COMMAND: Final = "/agora"
MARKER_PREFIX: Final = "<!-- agora:"
DEFAULT_ASSOCIATIONS: Final = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})
_COMMAND_LINE: Final = re.compile(r"^/agora(?:\s+(\S+))?(?:\s+(.*))?$")


class Refusal(StrEnum):
    """Why a comment is not injected (each becomes a ``refused`` fact)."""

    OWN_COMMENT = "own-comment"
    BOT = "bot-author"
    NOT_ALLOWED = "not-allowed"
    PULL_REQUEST = "pull-request"
    BAD_COMMAND = "bad-command"
    EMPTY = "empty"
    TOO_LARGE = "payload-too-large"
    BRIDGE_NOT_GRANTED = "bridge-not-granted"


@dataclass(frozen=True, slots=True)
class Speech:
    act: Performative
    text: str


@dataclass(frozen=True, slots=True)
class Author:
    login: str
    kind: str  # GitHub's sender/user type: "User", "Bot", "Organization"
    association: str  # OWNER, MEMBER, COLLABORATOR, CONTRIBUTOR, NONE, ...
    via_app: bool  # the comment was made through a GitHub App


def parse_speech(body: str) -> Speech:
    """The act and text of a comment. Raises InputError on a malformed command."""
    text = body.strip()
    first, _, rest = text.partition("\n")
    match = _COMMAND_LINE.match(first.strip())
    if match is None:
        return Speech(Performative.INFORM, text)
    name, inline = match.group(1), match.group(2) or ""
    if name is None:
        raise InputError(
            f"`{COMMAND}` needs an act: `{COMMAND} <act> text`, e.g. `{COMMAND} request ship it`"
        )
    act = parse_act(name)
    said = "\n".join(part for part in (inline.strip(), rest.strip()) if part)
    if not said:
        raise InputError(f"`{COMMAND} {name}` has no text after the act")
    return Speech(act, said)


def screen_comment(  # noqa: PLR0911 - one return per rule, in order
    *,
    body: str,
    author: Author,
    bridge_login: str | None,
    on_pull_request: bool,
    pull_requests_allowed: bool,
    associations: Container[str] = DEFAULT_ASSOCIATIONS,
    allowed_logins: Container[str] = (),
) -> Speech | tuple[Refusal, str]:
    """The speech to inject, or why not (the refusal and a sentence for the record)."""
    if MARKER_PREFIX in body or (bridge_login is not None and author.login == bridge_login):
        return Refusal.OWN_COMMENT, "the bridge's own comment came back"
    if author.kind == "Bot" or author.via_app:
        return Refusal.BOT, f"{author.login} is a bot; bots are not injected"
    if on_pull_request and not pull_requests_allowed:
        return Refusal.PULL_REQUEST, "comments on pull requests are not injected"
    if author.login not in allowed_logins and author.association not in associations:
        return (
            Refusal.NOT_ALLOWED,
            f"{author.login} ({author.association}) is not allowed to speak here",
        )
    if not body.strip():
        return Refusal.EMPTY, "the comment is empty"
    try:
        speech = parse_speech(body)
    except InputError as exc:
        return Refusal.BAD_COMMAND, str(exc)
    try:
        check_payload(speech.text)
    except InputError as exc:
        return Refusal.TOO_LARGE, str(exc)
    return speech
