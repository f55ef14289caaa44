"""Reading a configuration document: values with the dotted path that leads to them.

Every error names the file, the key's dotted path, what was expected and what was
found (shortened, so a huge or hostile value cannot flood a log)::

    agora.yaml: agents.synth-agent.limits.memory_mb: expected an integer from 16 to 4096, got 8

The host's ``agora.yaml`` reader and the bridge's reader of its ``bridge:`` section are
both built from :class:`Node` and :class:`Fields`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

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
        # the range first: it also refuses NaN and infinity, and an integer too large to
        # be a float is compared exactly rather than converted
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
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
        if not isinstance(node.value, str) or not node.value or "\0" in node.value:
            raise node.error("a path (a non-empty string with no NUL character)")
        return resolve_path(root, node.value)

    def folder(self, key: str, *, root: Path, default: str) -> Path:
        """A path that is a folder, or can be made one: neither it nor any folder on the
        way to it is a file (checked now, before anything starts and makes it)."""
        path = self.path(key, root=root, default=default)
        blocking = file_in_the_way(path)
        if blocking is not None:
            node = self.get(key) or self.missing(key)
            raise node.error(
                f"a folder, or a path where one can be made, not a file: {blocking} is a file",
                shown(str(path)),
            )
        return path


def file_in_the_way(path: Path) -> Path | None:
    """``path`` or the first of its parents that exists and is not a folder, if any."""
    for place in (path, *path.parents):
        if place.exists():
            return None if place.is_dir() else place
    return None


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


# -- reading YAML -------------------------------------------------------------------------

_INT_TAG: Final = "tag:yaml.org,2002:int"
_FLOAT_TAG: Final = "tag:yaml.org,2002:float"
_BOOL_TAG: Final = "tag:yaml.org,2002:bool"


class WrittenInt(int):
    """An integer as the file wrote it (``written``), for a value handed on as text."""

    written: str


class WrittenFloat(float):
    """A number with a fraction as the file wrote it (``written``)."""

    written: str


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML
    keeps the last of two equal keys, so a second agent or identity under one name
    would silently replace the first), and reads only what a reader of the file would
    take for a number or a flag: ``true`` and ``false``, whole numbers in decimal with
    no leading zero. ``yes``, ``0755``, ``1:30`` or ``0x1F`` are text, kept as written,
    so nothing a file says is turned into something else on the way (a value that must
    be a number says so when it is not one). Numbers keep how they were written."""

    def construct_mapping(
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict[Hashable, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class refuses it with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {shown(key)} twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_written_int(self, node: yaml.ScalarNode) -> WrittenInt:
        value = WrittenInt(self.construct_yaml_int(node))
        value.written = str(node.value)
        return value

    def construct_written_float(self, node: yaml.ScalarNode) -> WrittenFloat:
        value = WrittenFloat(self.construct_yaml_float(node))
        value.written = str(node.value)
        return value


UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (_INT_TAG, _BOOL_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
UniqueKeyLoader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789")
)
UniqueKeyLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
UniqueKeyLoader.add_constructor(_INT_TAG, UniqueKeyLoader.construct_written_int)
UniqueKeyLoader.add_constructor(_FLOAT_TAG, UniqueKeyLoader.construct_written_float)


def parse_yaml(text: str, *, source: str) -> object:
    """A YAML document read by :class:`UniqueKeyLoader`; any problem with it is a
    :class:`ConfigError` that names ``source``."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_where_and_what(exc)}") from None
    except (ValueError, OverflowError) as exc:  # a date that is none, a number too long
        raise ConfigError(f"{source}: a value cannot be read: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested deeper than a configuration goes") from None


def _where_and_what(exc: yaml.YAMLError) -> str:
    """What is wrong with a YAML document and where (line and column), without the
    lines PyYAML quotes from it: a line of a configuration may hold a secret, such as
    a password in a NATS URL, which no error message may show."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    said: list[str] = []
    for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        if text is None:
            continue
        place = "" if mark is None else f" (line {mark.line + 1}, column {mark.column + 1})"
        said.append(f"{text}{place}")
    return "; ".join(said) or type(exc).__name__
