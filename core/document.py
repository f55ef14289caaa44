"""Reading a configuration document: values with the dotted path that leads to them.

Every error names the file, the key's dotted path, what was expected and what was
found (shortened, so a huge or hostile value cannot flood a log)::

    agora.yaml: agents.synth-agent.limits.memory_mb: expected an integer from 16 to 4096, got 8

The host's ``agora.yaml`` reader and the bridge's reader of its ``bridge:`` section are
both built from :class:`Node` and :class:`Fields`.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agora.core.acts import MAX_CHANNEL_CHARS, MAX_NAME_CHARS, check_channel, check_name
from agora.core.errors import ConfigError, InvalidChannel, InvalidName, shown

NAME_RULE: Final = f"(only letters, digits, '-' and '_'; 1 to {MAX_NAME_CHARS} characters)"
CHANNEL_RULE: Final = f"(only letters, digits, '-' and '_'; 1 to {MAX_CHANNEL_CHARS} characters)"


@dataclass(frozen=True, slots=True)
class Node:
    """One value of the document and the dotted path that leads to it."""

    file: str
    where: str
    value: object

    def error(self, expected: str, got: str | None = None) -> ConfigError:
        place = f"{self.file}: {self.where}" if self.where else self.file
        return ConfigError(f"{place}: expected {expected}, got {got or shown(self.value)}")

    def child(self, key: str, value: object) -> Node:
        return Node(self.file, f"{self.where}.{key}" if self.where else key, value)

    def entries(self) -> list[tuple[object, Node]]:
        """The key/value pairs of a mapping (null counts as empty), keys not yet checked."""
        if self.value is None:
            return []
        if not isinstance(self.value, Mapping):
            raise self.error("a mapping")
        return [(key, self.child(key_segment(key), value)) for key, value in self.value.items()]

    def fields(self, allowed: tuple[str, ...]) -> Fields:
        """A mapping whose keys must all be among ``allowed``."""
        children: dict[str, Node] = {}
        for key, child in self.entries():
            if not isinstance(key, str) or key not in allowed:
                raise unknown_key(child, key, allowed)
            children[key] = child
        return Fields(self, children)


def key_segment(key: object) -> str:
    """A key as one step of a dotted path; a long or odd one is shortened like a value."""
    if isinstance(key, str) and len(key) <= MAX_CHANNEL_CHARS:
        return key
    return shown(key) if not isinstance(key, int) else str(key)


def unknown_key(node: Node, key: object, allowed: tuple[str, ...]) -> ConfigError:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    keys = f"one of the keys {', '.join(allowed)}" if len(allowed) > 1 else f"the key {allowed[0]}"
    return node.error(f"{keys}{hint}", shown(key))


@dataclass(frozen=True, slots=True)
class Fields:
    node: Node
    children: dict[str, Node]

    def get(self, key: str) -> Node | None:
        return self.children.get(key)

    def missing(self, key: str) -> Node:
        return self.node.child(key, None)

    def section(self, key: str, allowed: tuple[str, ...]) -> Fields:
        return (self.get(key) or self.missing(key)).fields(allowed)

    def integer(self, key: str, *, default: int, low: int, high: int) -> int:
        node = self.get(key)
        if node is None:
            return default
        value = node.value
        # bool is an int to Python, never to a reader of the file
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise node.error(f"an integer from {low} to {high}")
        return value

    def seconds(self, key: str, *, default: float, low: float, high: float) -> float:
        node = self.get(key)
        if node is None:
            return default
        value = node.value
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            raise node.error(f"a number of seconds from {low:g} to {high:g}")
        return float(value)

    def text(self, key: str, *, default: str) -> str:
        node = self.get(key)
        if node is None:
            return default
        if not isinstance(node.value, str):
            raise node.error("a string")
        return node.value

    def name(self, key: str, *, default: str) -> str:
        node = self.get(key)
        if node is None:
            return default
        return check_name_at(node, node.value, "an identity name")

    def path(self, key: str, *, root: Path, default: str) -> Path:
        node = self.get(key)
        if node is None:
            return resolve_path(root, default)
        if not isinstance(node.value, str) or not node.value:
            raise node.error("a path (a non-empty string)")
        return resolve_path(root, node.value)


def check_name_at(node: Node, value: object, what: str) -> str:
    try:
        return check_name(value)
    except InvalidName:
        raise node.error(f"{what} {NAME_RULE}", shown(value)) from None


def check_channel_at(node: Node, value: object) -> str:
    try:
        return check_channel(value)
    except InvalidChannel:
        raise node.error(f"a channel name {CHANNEL_RULE}", shown(value)) from None


def resolve_path(root: Path, value: str) -> Path:
    return Path(os.path.normpath(root / value))
