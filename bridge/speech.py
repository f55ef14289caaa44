"""What a comment on a linked issue says, and whether its author may say it.

Pure decisions over plain values, so every rule is testable without GitHub:

- ``/agora <act> text`` on the first line picks the act (any of the 22 performatives);
  anything else is an ``inform`` carrying the whole comment;
- the bridge's own comments carry a hidden marker and are never injected back;
- bots are not injected (another bridge's echo must not start a loop);
- a person speaks if their author association is allowed (OWNER, MEMBER, COLLABORATOR
  by default) or their login is on the allow-list;
- comments on pull requests are injected only when configured;
- text that is not valid Unicode (a lone surrogate, which JSON can carry) is refused.

A label event carries no author association, only its ``sender``: who may kill, resume,
link or unlink by label (:func:`screen_labeller`) is decided by the sender's type, the
allow-list, and the sender's permission on the repository as GitHub reports it.
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
# GitHub's legacy base roles (``maintain`` reads as write, ``triage`` as read) that may
# change the bridge's labels: the people who could push to the repository.
LABEL_PERMISSIONS: Final = frozenset({"admin", "write"})
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
    BAD_TEXT = "bad-text"
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


def screen_author(
    *,
    body: str,
    author: Author,
    bridge_login: str | None,
    associations: Container[str] = DEFAULT_ASSOCIATIONS,
    allowed_logins: Container[str] = (),
) -> tuple[Refusal, str] | None:
    """Why ``author`` may not speak through this comment, or None if they may."""
    if MARKER_PREFIX in body or (bridge_login is not None and author.login == bridge_login):
        return Refusal.OWN_COMMENT, "the bridge's own comment came back"
    if author.kind == "Bot" or author.via_app:
        return Refusal.BOT, f"{author.login} is a bot; bots are not injected"
    if author.login not in allowed_logins and author.association not in associations:
        return (
            Refusal.NOT_ALLOWED,
            f"{author.login} ({author.association}) is not allowed to speak here",
        )
    return None


def check_text(text: str) -> tuple[Refusal, str] | None:
    """Why ``text`` cannot be recorded (it is not valid Unicode), or None."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        return (
            Refusal.BAD_TEXT,
            f"the text holds a lone surrogate at position {exc.start}: "
            "expected valid Unicode (UTF-8)",
        )
    return None


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
    refused = screen_author(
        body=body,
        author=author,
        bridge_login=bridge_login,
        associations=associations,
        allowed_logins=allowed_logins,
    )
    if refused is not None and refused[0] is not Refusal.NOT_ALLOWED:
        return refused
    if on_pull_request and not pull_requests_allowed:
        return Refusal.PULL_REQUEST, "comments on pull requests are not injected"
    if refused is not None:
        return refused
    if not body.strip():
        return Refusal.EMPTY, "the comment is empty"
    bad_text = check_text(body)
    if bad_text is not None:
        return bad_text
    try:
        speech = parse_speech(body)
    except InputError as exc:
        return Refusal.BAD_COMMAND, str(exc)
    try:
        check_payload(speech.text)
    except InputError as exc:
        return Refusal.TOO_LARGE, str(exc)
    return speech


def screen_labeller(
    *,
    login: str,
    kind: str,
    permission: str | None,
    stopping: bool,
    allowed_logins: Container[str] = (),
) -> tuple[Refusal, str] | None:
    """Why the sender of a label event may not act through it, or None if they may.

    ``kind`` is the sender's type (``Bot`` is refused: an auto-labeller must not kill or
    resume a channel); ``permission`` their legacy base role on the repository (admin,
    write, read, none), or None when it could not be read, which lets a kill through
    (``stopping``: stopping a channel is always safe) and nothing else.
    """
    if kind == "Bot":
        return Refusal.BOT, f"{login} is a bot; bots cannot change agora labels"
    if login in allowed_logins or permission in LABEL_PERMISSIONS:
        return None
    if permission is None and stopping:
        return None
    return (
        Refusal.NOT_ALLOWED,
        f"{login} has {permission or 'unknown'} access: agora labels need write access "
        "to the repository or a login on speakers.logins",
    )
