"""The 22 FIPA performatives and the channel-name rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from agora.core.acts import Performative, check_channel, check_name, parse_act
from agora.core.errors import InvalidAct, InvalidChannel, InvalidName

FIPA = [
    "accept-proposal",
    "agree",
    "cancel",
    "cfp",
    "confirm",
    "disconfirm",
    "failure",
    "inform",
    "inform-if",
    "inform-ref",
    "not-understood",
    "propagate",
    "propose",
    "proxy",
    "query-if",
    "query-ref",
    "refuse",
    "reject-proposal",
    "request",
    "request-when",
    "request-whenever",
    "subscribe",
]


def test_all_22_fipa_performatives_are_acts() -> None:
    assert sorted(p.value for p in Performative) == sorted(FIPA)
    assert len(FIPA) == 22


def test_wit_contract_lists_the_same_performatives() -> None:
    wit = (Path(__file__).parent.parent / "wit" / "agent.wit").read_text()
    body = wit.split("enum performative {")[1].split("}")[0]
    listed = [word.strip().rstrip(",") for word in body.split() if word.strip()]
    assert listed == sorted(FIPA)


def test_unknown_act_names_the_value_and_the_choices() -> None:
    with pytest.raises(InvalidAct, match=r"'shout' is not a FIPA performative.*inform"):
        parse_act("shout")


@pytest.mark.parametrize("name", ["build-coord", "a", "A_b-9", "x" * 128])
def test_valid_channels_pass(name: str) -> None:
    assert check_channel(name) == name


@pytest.mark.parametrize(
    "name", ["secret.ops", "build-coord.>", "a*", "a b", "../etc", "x>y", "", "x" * 129, 7, None]
)
def test_subject_injection_and_bad_channels_are_refused(name: object) -> None:
    with pytest.raises(InvalidChannel, match="only letters, digits"):
        check_channel(name)


def test_identity_names_follow_the_same_alphabet() -> None:
    assert check_name("synth-agent") == "synth-agent"
    with pytest.raises(InvalidName, match=r"'a\.b'"):
        check_name("a.b")
