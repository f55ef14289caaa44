"""Comments to speech acts: the command syntax and who may speak."""

from __future__ import annotations

import pytest

from agora.bridge.speech import (
    Author,
    Refusal,
    Speech,
    parse_speech,
    screen_comment,
    screen_labeller,
)
from agora.core.acts import Performative
from agora.core.errors import InputError

MEMBER = Author("octocat", "User", "MEMBER", via_app=False)


@pytest.mark.parametrize(
    ("body", "act", "text"),
    [
        ("ship it", Performative.INFORM, "ship it"),
        ("  two\nlines  ", Performative.INFORM, "two\nlines"),
        ("/agora request ship v0.2", Performative.REQUEST, "ship v0.2"),
        ("/agora query-if is main green?", Performative.QUERY_IF, "is main green?"),
        ("/agora cfp\nwho takes the release?", Performative.CFP, "who takes the release?"),
        ("/agora propose a\nb", Performative.PROPOSE, "a\nb"),
        ("say /agora request later", Performative.INFORM, "say /agora request later"),
        ("/agoraX request y", Performative.INFORM, "/agoraX request y"),
    ],
)
def test_parse_speech(body: str, act: Performative, text: str) -> None:
    assert parse_speech(body) == Speech(act, text)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("/agora", "needs an act"),
        ("/agora shout loud", "shout"),
        ("/agora request", "has no text"),
    ],
)
def test_a_malformed_command_is_refused(body: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_speech(body)


def _screen(body: str = "hello", **changes: object) -> Speech | tuple[Refusal, str]:
    arguments: dict[str, object] = {
        "body": body,
        "author": MEMBER,
        "bridge_login": "agora-bridge[bot]",
        "on_pull_request": False,
        "pull_requests_allowed": False,
    }
    arguments.update(changes)
    return screen_comment(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"body": "status <!-- agora:status channel=x -->"}, Refusal.OWN_COMMENT),
        ({"author": Author("agora-bridge[bot]", "Bot", "NONE", True)}, Refusal.OWN_COMMENT),
        ({"author": Author("dependabot[bot]", "Bot", "NONE", False)}, Refusal.BOT),
        ({"author": Author("someone", "User", "MEMBER", True)}, Refusal.BOT),
        ({"on_pull_request": True}, Refusal.PULL_REQUEST),
        ({"author": Author("drive-by", "User", "NONE", False)}, Refusal.NOT_ALLOWED),
        ({"author": Author("contrib", "User", "CONTRIBUTOR", False)}, Refusal.NOT_ALLOWED),
        ({"body": "   "}, Refusal.EMPTY),
        ({"body": "/agora dance now"}, Refusal.BAD_COMMAND),
        ({"body": '"' * 40_000}, Refusal.TOO_LARGE),  # 80,000 bytes in JSON
        ({"body": "broken \ud800 text"}, Refusal.BAD_TEXT),
        ({"body": "/agora request \udfff"}, Refusal.BAD_TEXT),
    ],
)
def test_screen_comment_refusals(changes: dict[str, object], refusal: Refusal) -> None:
    result = _screen(**changes)
    assert isinstance(result, tuple)
    assert result[0] is refusal
    assert result[1]


def test_who_may_speak() -> None:
    assert _screen() == Speech(Performative.INFORM, "hello")
    owner = Author("boss", "User", "OWNER", via_app=False)
    assert isinstance(_screen(author=owner), Speech)
    guest = Author("guest", "User", "NONE", via_app=False)
    assert isinstance(_screen(author=guest, allowed_logins={"guest"}), Speech)
    assert isinstance(_screen(on_pull_request=True, pull_requests_allowed=True), Speech)
    assert isinstance(_screen(author=MEMBER, associations={"OWNER"}), tuple)


@pytest.mark.parametrize(
    ("login", "kind", "permission", "stopping", "refusal"),
    [
        ("labeller[bot]", "Bot", "write", True, Refusal.BOT),
        ("labeller[bot]", "Bot", None, True, Refusal.BOT),
        ("drive-by", "User", "read", True, Refusal.NOT_ALLOWED),
        ("drive-by", "User", "none", False, Refusal.NOT_ALLOWED),
        ("drive-by", "User", None, False, Refusal.NOT_ALLOWED),
        ("mona", "User", "write", False, None),
        ("boss", "User", "admin", False, None),
        ("guest", "User", "read", False, None),  # on the allow-list
        ("mona", "User", None, True, None),  # GitHub did not answer: a kill goes through
    ],
)
def test_who_may_change_the_bridges_labels(
    login: str, kind: str, permission: str | None, stopping: bool, refusal: Refusal | None
) -> None:
    verdict = screen_labeller(
        login=login,
        kind=kind,
        permission=permission,
        stopping=stopping,
        allowed_logins={"guest"},
    )
    assert (verdict[0] if verdict else None) is refusal
