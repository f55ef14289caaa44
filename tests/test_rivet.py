"""No payload can inject YAML into the view: every string reads back exactly."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agora.core.rivet import VIEW_HEADER, artifact, quoted
from tests.factories import make_act

INJECTIONS = [
    "line one\nline two",
    "---\nartifacts: []",
    "key: value",
    "- id: FAKE\n  type: coordination-fact",
    '"quoted" and \\backslash\\',
    "tab\there",
    "\x85 next line \u2028 line sep \u2029 para sep",
    "\x7f\x9f\ufeff bom",
    "#not a comment",
    "&anchor *alias !!python/object:os.system",
    "",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_known_injections_round_trip(payload: str) -> None:
    act = make_act(payload=payload)
    document = yaml.safe_load(VIEW_HEADER + artifact(0, "00", act))
    assert len(document["artifacts"]) == 1
    assert document["artifacts"][0]["fields"]["payload"] == payload
    assert document["artifacts"][0]["id"] == act.id


@given(st.text(st.characters(blacklist_categories=["Cs"])))
def test_any_text_round_trips(text: str) -> None:
    assert yaml.safe_load(f"value: {quoted(text)}") == {"value": text}
