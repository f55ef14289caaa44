"""The rivet-compatible YAML view of the fact log (``coordination.yaml``).

The view is derived from the log and written one artifact at a time, so appending a fact
appends a few lines instead of rewriting the file. It is emitted by hand rather than by a
YAML library for two reasons: it is several times faster, and every string is written as
a double-quoted scalar with JSON escapes (plus the characters YAML treats as line breaks
or refuses), so no payload can inject keys, documents or list items. ``agora verify``
regenerates the view and compares it byte for byte, so editing it is caught too.
"""

from __future__ import annotations

import json
import re
from typing import Final

from agora.core.envelope import Act, Event, Fact

VIEW_HEADER: Final = (
    "# agora coordination facts: generated from log.jsonl, do not edit (agora verify checks)\n"
    "artifacts:\n"
)
ACT_ARTIFACT_TYPE: Final = "coordination-fact"
EVENT_ARTIFACT_TYPE: Final = "coordination-event"
REPLIES_TO: Final = "replies-to"
CONCERNS: Final = "concerns"

# Characters that YAML either refuses in a stream or folds as a line break inside a
# double-quoted scalar; JSON leaves them raw, so they are escaped here as well.
_YAML_UNSAFE: Final = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


_json_string = json.JSONEncoder(ensure_ascii=False).encode


def quoted(text: str) -> str:
    """``text`` as a YAML double-quoted scalar that reads back exactly."""
    encoded = _json_string(text)
    if _YAML_UNSAFE.search(encoded) is None:
        return encoded
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)


def artifact(index: int, leaf_hex: str, fact: Fact) -> str:
    """The YAML list item for the fact at ``index`` (ends with a newline).

    Ids, names, channels, acts and hashes were checked to be ``[A-Za-z0-9_-]`` (or hex)
    when the fact was built, so they are quoted without escaping; free text goes through
    :func:`quoted`.
    """
    if isinstance(fact, Act):
        return _act_artifact(index, leaf_hex, fact)
    return _event_artifact(index, leaf_hex, fact)


def _act_artifact(index: int, leaf_hex: str, act: Act) -> str:
    lines = [
        f'- id: "{act.id}"',
        f"  type: {ACT_ARTIFACT_TYPE}",
        f"  title: {quoted(f'{act.act.value} on {act.channel} by {act.sender}')}",
        f'  tags: ["{act.channel}", "{act.act.value}"]',
        "  fields:",
        f"    index: {index}",
        f'    leaf-hash: "{leaf_hex}"',
        f'    act: "{act.act.value}"',
        f'    channel: "{act.channel}"',
        f'    sender: "{act.sender}"',
        f'    conversation: "{act.conversation}"',
        f"    hops: {act.hops}",
        f"    time-ms: {act.time_ms}",
        f"    payload: {quoted(act.payload)}",
    ]
    lines.extend(
        f"    provenance-{key}: {quoted(value)}" for key, value in sorted(act.provenance.items())
    )
    if act.in_reply_to is not None:
        lines.extend(["  links:", f"  - type: {REPLIES_TO}", f'    target: "{act.in_reply_to}"'])
    return "\n".join(lines) + "\n"


def _event_artifact(index: int, leaf_hex: str, event: Event) -> str:
    lines = [
        f'- id: "{event.id}"',
        f"  type: {EVENT_ARTIFACT_TYPE}",
        f"  title: {quoted(f'{event.kind.value}: {event.reason}')}",
        f'  tags: ["{event.kind.value}"]',
        "  fields:",
        f"    index: {index}",
        f'    leaf-hash: "{leaf_hex}"',
        f'    kind: "{event.kind.value}"',
        f'    actor: "{event.actor}"',
        f'    reason: "{event.reason}"',
        f"    detail: {quoted(event.detail)}",
        f"    time-ms: {event.time_ms}",
    ]
    if event.channel is not None:
        lines.append(f'    channel: "{event.channel}"')
    if event.agent is not None:
        lines.append(f'    agent: "{event.agent}"')
    lines.extend(f"    data-{key}: {quoted(value)}" for key, value in sorted(event.data.items()))
    if event.subjects:
        lines.append("  links:")
        for subject in event.subjects:
            lines.extend([f"  - type: {CONCERNS}", f'    target: "{subject}"'])
    return "\n".join(lines) + "\n"
