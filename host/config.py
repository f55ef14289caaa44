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

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Final
from urllib.parse import urlsplit

from agora.core.document import (
    Fields,
    Node,
    check_channel_at,
    check_name_at,
    parse_yaml,
    resolve_path,
)
from agora.core.errors import ConfigError, shown
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
DEFAULT_BATCH: Final = 256
DEFAULT_OUTBOX: Final = 512  # twice a batch: an answer to each message, and more
MAX_MESSAGES_PER_CALL: Final = 1024
# how far back an agent may still answer: the host keeps the hop budgets of its last N
# conversations and of the last max(N, 256) messages handed to it, saved with every
# batch (each costs every save some 40 or 80 bytes)
DEFAULT_REMEMBERED: Final = 128
MIN_REMEMBERED: Final = 16
MAX_REMEMBERED: Final = 4096

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
_LIMIT_KEYS: Final = ("fuel", "timeout_ms", "memory_mb", "batch", "outbox", "remembered")
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
    remembered: int = DEFAULT_REMEMBERED  # conversations whose hop budgets the host keeps


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


def with_agents(config: Config, names: Sequence[str]) -> Config:
    """``config`` with only the agents ``names``: what one of several host processes runs.

    Agents can be split across host processes (on one machine or many) that share the
    NATS spine; exactly one of them records (the others run ``agora up --no-record``).
    """
    for name in names:
        if name not in config.agents:
            raise ConfigError(
                f"{config.path}: there is no agent {shown(name)} under agents: expected one "
                f"of {', '.join(config.agents) or '(none configured)'}"
            )
    chosen = {n: a for n, a in config.agents.items() if n in names}
    return replace(config, agents=MappingProxyType(chosen))


# -- the parser -------------------------------------------------------------------------


def parse_config(document: object, *, path: Path) -> Config:
    """Check a loaded ``agora.yaml`` document and turn it into a :class:`Config`.

    ``path`` is the file the document came from: errors name it as given, and relative
    paths in the document are resolved against its folder.
    """
    absolute = Path(os.path.normpath(path.absolute()))
    root = absolute.parent
    top = Node(str(path), "", document)
    if document is None:  # an empty file, or only comments: most likely not the file meant
        raise top.error(
            "a mapping of configuration keys such as channels: and agents: "
            "(agora.example.yaml shows every key)",
            "an empty file",
        )
    if not isinstance(document, Mapping):
        raise top.error("a mapping of configuration keys")
    fields = top.fields(_TOP_KEYS)

    keys = fields.section("keys", ("registry", "dir"))
    host = fields.section("host", ("name", "checkpoint_every"))
    defaults = fields.section("defaults", ("hops", "limits"))
    keys_dir = keys.folder("dir", root=root, default=DEFAULT_KEYS_DIR)
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
        facts_dir=fields.folder("facts", root=root, default=DEFAULT_FACTS_DIR),
        registry=keys.path("registry", root=root, default=DEFAULT_REGISTRY),
        keys_dir=keys_dir,
        agents_dir=fields.folder("agents_dir", root=root, default=DEFAULT_AGENTS_DIR),
        build_dir=fields.folder("build_dir", root=root, default=DEFAULT_BUILD_DIR),
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


def _limits(fields: Fields, base: Limits) -> Limits:
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
        remembered=fields.integer(
            "remembered", default=base.remembered, low=MIN_REMEMBERED, high=MAX_REMEMBERED
        ),
    )


def _nats(fields: Fields, root: Path) -> NatsConfig:
    url: str | None = None
    node = fields.get("url")
    if node is not None and node.value is not None:
        url = _nats_url(node)
    replicas = fields.integer("replicas", default=1, low=1, high=MAX_REPLICAS)
    if url is None and replicas > 1:
        raise (fields.get("replicas") or fields.missing("replicas")).error(
            "1 with the embedded server (url: null), which is one node: more replicas "
            "need a NATS cluster's url"
        )
    return NatsConfig(
        url=url,
        data_dir=fields.folder("data_dir", root=root, default=DEFAULT_NATS_DATA_DIR),
        replicas=replicas,
    )


def _nats_url(node: Node) -> str:
    expected = "null (an embedded server) or a URL starting with " + ", ".join(
        f"{scheme}://" for scheme in NATS_URL_SCHEMES
    )
    value = node.value
    if not isinstance(value, str):
        raise node.error(expected)
    masked = shown(without_credentials(value))
    try:
        parts = urlsplit(value)
    except ValueError:
        raise node.error(expected, masked) from None
    if parts.scheme not in NATS_URL_SCHEMES or not value.startswith(f"{parts.scheme}://"):
        raise node.error(expected, masked)
    if "@" in value[len(parts.scheme) + 3 + len(parts.netloc) :]:
        # a "/", "?" or "#" in a user name or password ends the host part early
        raise node.error(
            "a user name and password with '/', '?', '#' and '@' written %2F, %3F, %23 and %40",
            masked,
        )
    try:
        port = parts.port
    except ValueError:
        raise node.error("a URL with a port from 1 to 65535", masked) from None
    if not parts.hostname or port == 0:
        raise node.error("a URL with a host name (and a port from 1 to 65535)", masked)
    return value


def without_credentials(url: str) -> str:
    """``url`` with everything before its last "@" (a user name, a password, a token)
    hidden, so that neither an error nor a log ever shows a credential, however the
    URL is written."""
    scheme, separator, rest = url.rpartition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{separator}***@{rest.rpartition('@')[2]}"


def _consumer(fields: Fields) -> ConsumerConfig:
    return ConsumerConfig(
        ack_wait_s=fields.seconds(
            "ack_wait_s", default=DEFAULT_ACK_WAIT_S, low=MIN_ACK_WAIT_S, high=MAX_ACK_WAIT_S
        ),
        max_deliver=fields.integer(
            "max_deliver", default=DEFAULT_MAX_DELIVER, low=1, high=MAX_MAX_DELIVER
        ),
    )


def _channels(node: Node) -> dict[str, ChannelConfig]:
    channels: dict[str, ChannelConfig] = {}
    for key, child in node.entries():
        name = check_channel_at(node, key)
        fields = child.fields(("description",))
        channels[name] = ChannelConfig(name, fields.text("description", default=""))
    return channels


def _agents(
    node: Node,
    *,
    channels: Mapping[str, ChannelConfig],
    keys_dir: Path,
    root: Path,
    limits: Limits,
) -> dict[str, AgentConfig]:
    agents: dict[str, AgentConfig] = {}
    for key, child in node.entries():
        name = check_name_at(node, key, "an agent name")
        fields = child.fields(_AGENT_KEYS)
        component = fields.get("component")
        if component is None:
            raise fields.missing("component").error(
                "a component name (required): the agent's source under agents_dir", "nothing"
            )
        agents[name] = AgentConfig(
            name=name,
            component=check_name_at(component, component.value, "a component name"),
            channels=_agent_channels(
                fields.get("channels") or fields.missing("channels"), channels
            ),
            key=fields.path("key", root=root, default=str(keys_dir / f"{name}.key")),
            limits=_limits(fields.section("limits", _LIMIT_KEYS), limits),
            settings=_settings(fields.get("settings") or fields.missing("settings")),
        )
    return agents


def _agent_channels(node: Node, declared: Mapping[str, ChannelConfig]) -> tuple[str, ...]:
    if not isinstance(node.value, list) or not node.value:
        raise node.error("a non-empty list of channel names, each declared under channels:")
    granted: list[str] = []
    for index, value in enumerate(node.value):
        item = Node(node.file, f"{node.where}[{index}]", value)
        channel = check_channel_at(item, value)
        if channel not in declared:
            known = ", ".join(declared) or "none are declared"
            raise item.error(f"a channel declared under channels: ({known})")
        if channel in granted:
            raise item.error("each channel once")
        granted.append(channel)
    return tuple(granted)


def _settings(node: Node) -> tuple[tuple[str, str], ...]:
    settings: list[tuple[str, str]] = []
    for key, child in node.entries():
        name = check_name_at(node, key, "a setting name")
        if isinstance(child.value, list):
            items = [_setting_item(child, index, value) for index, value in enumerate(child.value)]
            settings.append((name, SETTINGS_LIST_SEPARATOR.join(items)))
        else:
            settings.append((name, _scalar(child, child.value)))
    return tuple(settings)


def _setting_item(node: Node, index: int, value: object) -> str:
    item = Node(node.file, f"{node.where}[{index}]", value)
    text = _scalar(item, value)
    if SETTINGS_LIST_SEPARATOR in text:
        raise item.error(
            f"a list item without {SETTINGS_LIST_SEPARATOR!r}: the list is handed to the "
            f"agent joined by {SETTINGS_LIST_SEPARATOR!r}"
        )
    return text


def _scalar(node: Node, value: object) -> str:
    """A setting value as the agent receives it: always a string."""
    if isinstance(value, bool):  # before int: YAML true is a bool, and bool is an int
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return getattr(value, "written", str(value))  # a number as the file wrote it
    raise node.error("a string, number or boolean, or a list of those (quote dates and nulls)")


def _bridge(node: Node | None) -> Mapping[str, object]:
    if node is None:
        return MappingProxyType({})
    raw: dict[str, object] = {}
    for key, child in node.entries():
        if not isinstance(key, str):
            raise child.error("a key that is a string", shown(key))
        raw[key] = child.value
    return MappingProxyType(raw)


# -- the file ---------------------------------------------------------------------------


def load_config(path: Path) -> Config:
    """Read and check ``path``. Any problem is a :class:`ConfigError` that names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file: copy agora.example.yaml to start one") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    return parse_config(parse_yaml(text, source=str(path)), path=path)


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
    if config.registry != resolve_path(config.root, DEFAULT_REGISTRY):
        words.append(f"--registry {config.registry}")
    if config.keys_dir != resolve_path(config.root, DEFAULT_KEYS_DIR):
        words.append(f"--keys-dir {config.keys_dir}")
    return " ".join(words)
