"""The host configuration, ``agora.yaml``: channels, agents, their limits, and where things live.

The file is read once, at the edge, into frozen values; nothing downstream looks at the
raw document again. Every key is checked: an unknown key (a typo) is refused, never
ignored, and each error names the file, the dotted path of the key, what was expected
and what was found::

    agora.yaml: agents.synth-agent.limits.memory_mb: expected an integer from 16 to 4096, got 8

Relative paths are resolved against the file's own directory. The only I/O here is
reading that one file in :func:`load_config`. The top-level ``bridge:`` key belongs to
the GitHub bridge, which checks it with its own loader; it is kept as given.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final
from urllib.parse import urlsplit

import yaml

from agora.core.acts import MAX_CHANNEL_CHARS, MAX_NAME_CHARS, check_channel, check_name
from agora.core.errors import ConfigError, InvalidChannel, InvalidName, shown
from agora.core.keys import ALL_CHANNELS, KeyRegistry, Role

# -- defaults and limits, with their units ---------------------------------------------

DEFAULT_FUEL: Final = 2_000_000_000
MIN_FUEL: Final = 1_000_000
MAX_FUEL: Final = 2**63 - 1  # wasmtime counts fuel in a u64; stay below its top bit
DEFAULT_TIMEOUT_MS: Final = 2000
MIN_TIMEOUT_MS: Final = 10
MAX_TIMEOUT_MS: Final = 600_000
DEFAULT_MEMORY_MB: Final = 64
MIN_MEMORY_MB: Final = 16
MAX_MEMORY_MB: Final = 4096
DEFAULT_BATCH: Final = 64
DEFAULT_OUTBOX: Final = 64
MAX_MESSAGES_PER_CALL: Final = 1024

DEFAULT_HOPS: Final = 8
MAX_HOPS: Final = 32
DEFAULT_CHECKPOINT_EVERY: Final = 1000
MAX_CHECKPOINT_EVERY: Final = 1_000_000
MAX_REPLICAS: Final = 5
DEFAULT_ACK_WAIT_S: Final = 30.0
MIN_ACK_WAIT_S: Final = 1.0
MAX_ACK_WAIT_S: Final = 3600.0
DEFAULT_MAX_DELIVER: Final = 5
MAX_MAX_DELIVER: Final = 100

DEFAULT_FACTS_DIR: Final = "facts"
DEFAULT_REGISTRY: Final = "keys.yaml"
DEFAULT_KEYS_DIR: Final = ".agora/keys"
DEFAULT_AGENTS_DIR: Final = "agents"
DEFAULT_BUILD_DIR: Final = "agents/build"
DEFAULT_NATS_DATA_DIR: Final = ".agora/nats"
DEFAULT_HOST_NAME: Final = "host"
DEFAULT_OPERATOR: Final = "maintainer"
NATS_URL_SCHEMES: Final = ("nats", "tls", "ws", "wss")
SETTINGS_LIST_SEPARATOR: Final = ","

_NAME_RULE: Final = f"(only letters, digits, '-' and '_'; 1 to {MAX_NAME_CHARS} characters)"
_CHANNEL_RULE: Final = f"(only letters, digits, '-' and '_'; 1 to {MAX_CHANNEL_CHARS} characters)"

_TOP_KEYS: Final = (
    "facts",
    "keys",
    "agents_dir",
    "build_dir",
    "host",
    "operator",
    "defaults",
    "nats",
    "consumer",
    "channels",
    "agents",
    "bridge",
)
_LIMIT_KEYS: Final = ("fuel", "timeout_ms", "memory_mb", "batch", "outbox")
_AGENT_KEYS: Final = ("component", "channels", "key", "limits", "settings")


# -- the values -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """What one call into an agent may use."""

    fuel: int = DEFAULT_FUEL  # wasm fuel per call
    timeout_ms: int = DEFAULT_TIMEOUT_MS  # wall-clock budget per call (epoch interruption)
    memory_mb: int = DEFAULT_MEMORY_MB  # linear memory limit
    batch: int = DEFAULT_BATCH  # most messages handed to one call
    outbox: int = DEFAULT_OUTBOX  # most messages one call may emit


@dataclass(frozen=True, slots=True)
class AgentConfig:
    name: str  # identity name in the key registry
    component: str  # component name under the agents source folder
    channels: tuple[str, ...]  # granted channels, each declared under `channels:`
    key: Path  # private key file
    limits: Limits
    settings: tuple[tuple[str, str], ...]  # handed to the agent in its context, in file order


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    name: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class NatsConfig:
    url: str | None  # None: start an embedded nats-server
    data_dir: Path  # the embedded server's JetStream store
    replicas: int = 1  # stream and KV replicas


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    ack_wait_s: float = DEFAULT_ACK_WAIT_S
    max_deliver: int = DEFAULT_MAX_DELIVER  # then the message goes to the dead letters


@dataclass(frozen=True, slots=True)
class Config:
    path: Path  # the file it was read from (absolute)
    root: Path  # relative paths are resolved against this folder (the file's)
    facts_dir: Path
    registry: Path
    keys_dir: Path
    agents_dir: Path  # component sources
    build_dir: Path
    host_name: str  # the identity that signs host events and checkpoints
    checkpoint_every: int
    operator: str  # the identity inject, kill and resume use unless told otherwise
    hops: int  # hop budget given to injected acts
    nats: NatsConfig
    consumer: ConsumerConfig
    channels: Mapping[str, ChannelConfig]  # in file order, read-only
    agents: Mapping[str, AgentConfig]  # in file order, read-only
    bridge: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


# -- reading the document ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    """One value of the document and the dotted path that leads to it."""

    file: str
    where: str
    value: object

    def error(self, expected: str, got: str | None = None) -> ConfigError:
        place = f"{self.file}: {self.where}" if self.where else self.file
        return ConfigError(f"{place}: expected {expected}, got {got or shown(self.value)}")

    def child(self, key: str, value: object) -> _Node:
        return _Node(self.file, f"{self.where}.{key}" if self.where else key, value)

    def entries(self) -> list[tuple[object, _Node]]:
        """The key/value pairs of a mapping (null counts as empty), keys not yet checked."""
        if self.value is None:
            return []
        if not isinstance(self.value, Mapping):
            raise self.error("a mapping")
        return [(key, self.child(_segment(key), value)) for key, value in self.value.items()]

    def fields(self, allowed: tuple[str, ...]) -> _Fields:
        """A mapping whose keys must all be among ``allowed``."""
        children: dict[str, _Node] = {}
        for key, child in self.entries():
            if not isinstance(key, str) or key not in allowed:
                raise _unknown_key(child, key, allowed)
            children[key] = child
        return _Fields(self, children)


def _segment(key: object) -> str:
    """A key as one step of a dotted path; a long or odd one is shortened like a value."""
    if isinstance(key, str) and len(key) <= MAX_CHANNEL_CHARS:
        return key
    return shown(key) if not isinstance(key, int) else str(key)


def _unknown_key(node: _Node, key: object, allowed: tuple[str, ...]) -> ConfigError:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    keys = f"one of the keys {', '.join(allowed)}" if len(allowed) > 1 else f"the key {allowed[0]}"
    return node.error(f"{keys}{hint}", shown(key))


@dataclass(frozen=True, slots=True)
class _Fields:
    node: _Node
    children: dict[str, _Node]

    def get(self, key: str) -> _Node | None:
        return self.children.get(key)

    def missing(self, key: str) -> _Node:
        return self.node.child(key, None)

    def section(self, key: str, allowed: tuple[str, ...]) -> _Fields:
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
        return _name(node, node.value, "an identity name")

    def path(self, key: str, *, root: Path, default: str) -> Path:
        node = self.get(key)
        if node is None:
            return _resolve(root, default)
        if not isinstance(node.value, str) or not node.value:
            raise node.error("a path (a non-empty string)")
        return _resolve(root, node.value)


def _name(node: _Node, value: object, what: str) -> str:
    try:
        return check_name(value)
    except InvalidName:
        raise node.error(f"{what} {_NAME_RULE}", shown(value)) from None


def _channel(node: _Node, value: object) -> str:
    try:
        return check_channel(value)
    except InvalidChannel:
        raise node.error(f"a channel name {_CHANNEL_RULE}", shown(value)) from None


def _resolve(root: Path, value: str) -> Path:
    return Path(os.path.normpath(root / value))


# -- the parser -------------------------------------------------------------------------


def parse_config(document: object, *, path: Path) -> Config:
    """Check a loaded ``agora.yaml`` document and turn it into a :class:`Config`.

    ``path`` is the file the document came from: errors name it as given, and relative
    paths in the document are resolved against its folder.
    """
    absolute = Path(os.path.normpath(path.absolute()))
    root = absolute.parent
    top = _Node(str(path), "", document)
    if document is not None and not isinstance(document, Mapping):
        raise top.error("a mapping of configuration keys")
    fields = top.fields(_TOP_KEYS)

    keys = fields.section("keys", ("registry", "dir"))
    host = fields.section("host", ("name", "checkpoint_every"))
    defaults = fields.section("defaults", ("hops", "limits"))
    keys_dir = keys.path("dir", root=root, default=DEFAULT_KEYS_DIR)
    default_limits = _limits(defaults.section("limits", _LIMIT_KEYS), Limits())
    channels = _channels(fields.get("channels") or fields.missing("channels"))
    agents = _agents(
        fields.get("agents") or fields.missing("agents"),
        channels=channels,
        keys_dir=keys_dir,
        root=root,
        limits=default_limits,
    )
    return Config(
        path=absolute,
        root=root,
        facts_dir=fields.path("facts", root=root, default=DEFAULT_FACTS_DIR),
        registry=keys.path("registry", root=root, default=DEFAULT_REGISTRY),
        keys_dir=keys_dir,
        agents_dir=fields.path("agents_dir", root=root, default=DEFAULT_AGENTS_DIR),
        build_dir=fields.path("build_dir", root=root, default=DEFAULT_BUILD_DIR),
        host_name=host.name("name", default=DEFAULT_HOST_NAME),
        checkpoint_every=host.integer(
            "checkpoint_every", default=DEFAULT_CHECKPOINT_EVERY, low=1, high=MAX_CHECKPOINT_EVERY
        ),
        operator=fields.name("operator", default=DEFAULT_OPERATOR),
        hops=defaults.integer("hops", default=DEFAULT_HOPS, low=1, high=MAX_HOPS),
        nats=_nats(fields.section("nats", ("url", "data_dir", "replicas")), root),
        consumer=_consumer(fields.section("consumer", ("ack_wait_s", "max_deliver"))),
        channels=MappingProxyType(channels),
        agents=MappingProxyType(agents),
        bridge=_bridge(fields.get("bridge")),
    )


def _limits(fields: _Fields, base: Limits) -> Limits:
    return Limits(
        fuel=fields.integer("fuel", default=base.fuel, low=MIN_FUEL, high=MAX_FUEL),
        timeout_ms=fields.integer(
            "timeout_ms", default=base.timeout_ms, low=MIN_TIMEOUT_MS, high=MAX_TIMEOUT_MS
        ),
        memory_mb=fields.integer(
            "memory_mb", default=base.memory_mb, low=MIN_MEMORY_MB, high=MAX_MEMORY_MB
        ),
        batch=fields.integer("batch", default=base.batch, low=1, high=MAX_MESSAGES_PER_CALL),
        outbox=fields.integer("outbox", default=base.outbox, low=1, high=MAX_MESSAGES_PER_CALL),
    )


def _nats(fields: _Fields, root: Path) -> NatsConfig:
    url: str | None = None
    node = fields.get("url")
    if node is not None and node.value is not None:
        url = _nats_url(node)
    return NatsConfig(
        url=url,
        data_dir=fields.path("data_dir", root=root, default=DEFAULT_NATS_DATA_DIR),
        replicas=fields.integer("replicas", default=1, low=1, high=MAX_REPLICAS),
    )


def _nats_url(node: _Node) -> str:
    expected = "null (an embedded server) or a URL starting with " + ", ".join(
        f"{scheme}://" for scheme in NATS_URL_SCHEMES
    )
    value = node.value
    if not isinstance(value, str):
        raise node.error(expected)
    try:
        parts = urlsplit(value)
    except ValueError:
        raise node.error(expected, shown(_without_password(value))) from None
    if parts.scheme not in NATS_URL_SCHEMES or not value.startswith(f"{parts.scheme}://"):
        raise node.error(expected, shown(_without_password(value)))
    if not parts.hostname:
        raise node.error("a URL with a host name", shown(_without_password(value)))
    return value


def _without_password(url: str) -> str:
    """``url`` with any user:password part hidden, so an error never shows a credential."""
    scheme, separator, rest = url.rpartition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{separator}{authority}{slash}{path}"


def _consumer(fields: _Fields) -> ConsumerConfig:
    return ConsumerConfig(
        ack_wait_s=fields.seconds(
            "ack_wait_s", default=DEFAULT_ACK_WAIT_S, low=MIN_ACK_WAIT_S, high=MAX_ACK_WAIT_S
        ),
        max_deliver=fields.integer(
            "max_deliver", default=DEFAULT_MAX_DELIVER, low=1, high=MAX_MAX_DELIVER
        ),
    )


def _channels(node: _Node) -> dict[str, ChannelConfig]:
    channels: dict[str, ChannelConfig] = {}
    for key, child in node.entries():
        name = _channel(node, key)
        fields = child.fields(("description",))
        channels[name] = ChannelConfig(name, fields.text("description", default=""))
    return channels


def _agents(
    node: _Node,
    *,
    channels: Mapping[str, ChannelConfig],
    keys_dir: Path,
    root: Path,
    limits: Limits,
) -> dict[str, AgentConfig]:
    agents: dict[str, AgentConfig] = {}
    for key, child in node.entries():
        name = _name(node, key, "an agent name")
        fields = child.fields(_AGENT_KEYS)
        component = fields.get("component")
        if component is None:
            raise fields.missing("component").error(
                "a component name (required): the agent's source under agents_dir", "nothing"
            )
        agents[name] = AgentConfig(
            name=name,
            component=_name(component, component.value, "a component name"),
            channels=_agent_channels(
                fields.get("channels") or fields.missing("channels"), channels
            ),
            key=fields.path("key", root=root, default=str(keys_dir / f"{name}.key")),
            limits=_limits(fields.section("limits", _LIMIT_KEYS), limits),
            settings=_settings(fields.get("settings") or fields.missing("settings")),
        )
    return agents


def _agent_channels(node: _Node, declared: Mapping[str, ChannelConfig]) -> tuple[str, ...]:
    if not isinstance(node.value, list) or not node.value:
        raise node.error("a non-empty list of channel names, each declared under channels:")
    granted: list[str] = []
    for index, value in enumerate(node.value):
        item = _Node(node.file, f"{node.where}[{index}]", value)
        channel = _channel(item, value)
        if channel not in declared:
            known = ", ".join(declared) or "none are declared"
            raise item.error(f"a channel declared under channels: ({known})")
        if channel in granted:
            raise item.error("each channel once")
        granted.append(channel)
    return tuple(granted)


def _settings(node: _Node) -> tuple[tuple[str, str], ...]:
    settings: list[tuple[str, str]] = []
    for key, child in node.entries():
        name = _name(node, key, "a setting name")
        if isinstance(child.value, list):
            items = [_setting_item(child, index, value) for index, value in enumerate(child.value)]
            settings.append((name, SETTINGS_LIST_SEPARATOR.join(items)))
        else:
            settings.append((name, _scalar(child, child.value)))
    return tuple(settings)


def _setting_item(node: _Node, index: int, value: object) -> str:
    item = _Node(node.file, f"{node.where}[{index}]", value)
    text = _scalar(item, value)
    if SETTINGS_LIST_SEPARATOR in text:
        raise item.error(
            f"a list item without {SETTINGS_LIST_SEPARATOR!r}: the list is handed to the "
            f"agent joined by {SETTINGS_LIST_SEPARATOR!r}"
        )
    return text


def _scalar(node: _Node, value: object) -> str:
    """A setting value as the agent receives it: always a string."""
    if isinstance(value, bool):  # before int: YAML true is a bool, and bool is an int
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise node.error("a string, number or boolean, or a list of those (quote dates and nulls)")


def _bridge(node: _Node | None) -> Mapping[str, object]:
    if node is None:
        return MappingProxyType({})
    raw: dict[str, object] = {}
    for key, child in node.entries():
        if not isinstance(key, str):
            raise child.error("a key that is a string", shown(key))
        raw[key] = child.value
    return MappingProxyType(raw)


# -- the file ---------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping.

    Plain YAML keeps the last of two equal keys, so a second agent under the same name
    would silently replace the first.
    """

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


def load_config(path: Path) -> Config:
    """Read and check ``path``. Any problem is a :class:`ConfigError` that names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file: copy agora.example.yaml to start one") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(document, path=path)


# -- the key registry -------------------------------------------------------------------


def check_against_registry(config: Config, registry: KeyRegistry) -> None:
    """Every identity the configuration names must be in ``registry`` as what it is used for.

    Each agent must be registered with role agent and granted (at least) its channels;
    the host identity with role host; the operator with role operator. All problems are
    reported together, each with the command or edit that fixes it.
    """
    problems: list[str] = []
    for agent in config.agents.values():
        problems += _problems(config, registry, agent.name, Role.AGENT, agent.channels)
    problems += _problems(config, registry, config.host_name, Role.HOST, (ALL_CHANNELS,))
    problems += _problems(config, registry, config.operator, Role.OPERATOR, (*config.channels,))
    if problems:
        raise ConfigError("\n".join(f"{config.registry}: {problem}" for problem in problems))


def _problems(
    config: Config, registry: KeyRegistry, name: str, role: Role, channels: tuple[str, ...]
) -> list[str]:
    used_as = _USED_AS[role]
    if name not in registry:
        command = _keys_new(config, name, role, channels)
        return [f"{used_as} {name!r} of {config.path.name} is not registered: run `{command}`"]
    identity = registry.get(name)
    if identity.role is not role:
        command = _keys_new(config, "NAME", role, channels)
        return [
            f"{used_as} {name!r} of {config.path.name} has role {identity.role.value}, "
            f"expected {role.value}: a role comes with its key, so use another name in "
            f"{config.path.name} and make it with `{command}`"
        ]
    if role is not Role.AGENT:
        return []
    missing = [channel for channel in channels if not identity.may_use(channel)]
    if not missing:
        return []
    granted = ", ".join(sorted(identity.channels)) or "none"
    return [
        f"agent {name!r} is not granted {', '.join(missing)} (granted: {granted}): add "
        f"to identities.{name}.channels in {config.registry.name}, or remove from "
        f"agents.{name}.channels in {config.path.name}"
    ]


_USED_AS: Final = {Role.AGENT: "agent", Role.HOST: "host.name", Role.OPERATOR: "operator"}


def _keys_new(config: Config, name: str, role: Role, channels: tuple[str, ...]) -> str:
    words = ["agora keys new", name]
    if role is not Role.AGENT:
        words.append(f"--role {role.value}")
    words += ["--channel " + ("'*'" if c == ALL_CHANNELS else c) for c in channels]
    if config.registry != _resolve(config.root, DEFAULT_REGISTRY):
        words.append(f"--registry {config.registry}")
    if config.keys_dir != _resolve(config.root, DEFAULT_KEYS_DIR):
        words.append(f"--keys-dir {config.keys_dir}")
    return " ".join(words)
