"""`agora.yaml`: defaults, every refusal with its key path, the example, and the registry check."""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest

from agora.cli.main import main as agora
from agora.core.errors import ConfigError
from agora.core.keys import KeyRegistry, Role, SigningKey
from agora.host.config import (
    Config,
    ConsumerConfig,
    Limits,
    NatsConfig,
    check_against_registry,
    load_config,
    parse_config,
    without_credentials,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "agora.example.yaml"
FILE = Path("agora.yaml")


def _document() -> dict[str, Any]:
    """The smallest document with one channel and one agent."""
    return {
        "channels": {"build-coord": {}},
        "agents": {"synth-agent": {"component": "chatty", "channels": ["build-coord"]}},
    }


def _with(path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    document = _document()
    node: Any = document
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value
    return document


def _refusal(document: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(document, path=FILE)
    return str(caught.value)


# -- the example --------------------------------------------------------------------------


def test_the_example_file_parses() -> None:
    config = load_config(EXAMPLE)
    assert list(config.channels) == ["build-coord", "secret-ops", "release"]
    assert list(config.agents) == [
        "synth-agent",
        "relay-agent",
        "coordinator",
        "alice-voter",
        "bob-voter",
        "carol-voter",
        "summarizer",
    ]
    assert {a.component for a in config.agents.values()} == {
        "chatty",
        "coordinator",
        "voter",
        "summarizer",
    }
    assert config.agents["coordinator"].settings == (
        ("voters", "alice-voter,bob-voter,carol-voter"),
        ("quorum", "2"),
        ("deadline-ms", "5000"),
    )
    assert config.agents["alice-voter"].settings == (
        ("approve", "tests pass"),
        ("veto", "breaking"),
        ("default", "reject"),
    )
    assert dict(config.agents["bob-voter"].settings)["approve"] == "reviewed,changelog"
    assert config.agents["summarizer"].limits == Limits(memory_mb=128, timeout_ms=5000)
    assert config.agents["synth-agent"].limits == Limits()
    assert config.agents["relay-agent"].channels == ("build-coord",)
    assert config.agents["summarizer"].channels == ("release",)


def test_the_example_states_every_default() -> None:
    """The example writes out each default; parsing it equals parsing an empty mapping."""
    example = load_config(EXAMPLE)
    empty = parse_config({}, path=EXAMPLE)
    for field in dataclasses.fields(Config):
        if field.name not in {"channels", "agents"}:
            assert getattr(example, field.name) == getattr(empty, field.name), field.name


def test_the_commands_a_registry_error_suggests_make_the_example_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(EXAMPLE, tmp_path / "agora.yaml")
    config = load_config(tmp_path / "agora.yaml")
    with pytest.raises(ConfigError) as caught:
        check_against_registry(config, KeyRegistry([]))
    commands = re.findall(r"run `(agora keys new [^`]+)`", str(caught.value))
    assert len(commands) == len(config.agents) + 2  # the agents, the host, the operator
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert agora(shlex.split(command)[1:]) == 0, command
    check_against_registry(config, KeyRegistry.load(config.registry))
    assert config.agents["synth-agent"].key.is_file()


# -- defaults and paths -----------------------------------------------------------------


def test_an_empty_mapping_gives_every_default(tmp_path: Path) -> None:
    config = parse_config({}, path=tmp_path / "agora.yaml")
    assert config.path == tmp_path / "agora.yaml"
    assert config.root == tmp_path
    assert config.facts_dir == tmp_path / "facts"
    assert config.registry == tmp_path / "keys.yaml"
    assert config.keys_dir == tmp_path / ".agora" / "keys"
    assert config.agents_dir == tmp_path / "agents"
    assert config.build_dir == tmp_path / "agents" / "build"
    assert config.host_name == "host"
    assert config.checkpoint_every == 1000
    assert config.operator == "maintainer"
    assert config.hops == 8
    assert config.nats == NatsConfig(url=None, data_dir=tmp_path / ".agora" / "nats", replicas=1)
    assert config.consumer == ConsumerConfig(ack_wait_s=30.0, max_deliver=5)
    assert dict(config.channels) == {}
    assert dict(config.agents) == {}
    assert dict(config.bridge) == {}


def test_default_limits_are_the_documented_ones() -> None:
    (agent,) = parse_config(_document(), path=FILE).agents.values()
    assert agent.limits == Limits(
        fuel=2_000_000_000, timeout_ms=2000, memory_mb=64, batch=256, outbox=512
    )


def test_a_relative_file_path_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse_config({"facts": "out/../facts"}, path=Path("conf/agora.yaml"))
    assert config.path == tmp_path / "conf" / "agora.yaml"
    assert config.facts_dir == tmp_path / "conf" / "facts"


def test_paths_resolve_against_the_file_folder_and_absolute_ones_stay(tmp_path: Path) -> None:
    document = {
        "facts": "/srv/facts",
        "keys": {"registry": "../shared/keys.yaml", "dir": "secrets"},
        "agents_dir": "src/agents",
        "build_dir": "out",
        "nats": {"data_dir": "/var/lib/nats"},
    }
    config = parse_config(document, path=tmp_path / "conf" / "agora.yaml")
    assert config.facts_dir == Path("/srv/facts")
    assert config.registry == tmp_path / "shared" / "keys.yaml"
    assert config.keys_dir == tmp_path / "conf" / "secrets"
    assert config.agents_dir == tmp_path / "conf" / "src" / "agents"
    assert config.build_dir == tmp_path / "conf" / "out"
    assert config.nats.data_dir == Path("/var/lib/nats")


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"facts": "keys.yaml"}, "facts"),
        ({"facts": "keys.yaml/facts"}, "facts"),
        ({"build_dir": "keys.yaml"}, "build_dir"),
        ({"agents_dir": "keys.yaml"}, "agents_dir"),
        ({"nats": {"data_dir": "keys.yaml"}}, "nats.data_dir"),
        ({"keys": {"dir": "keys.yaml"}}, "keys.dir"),
        ({}, "facts"),  # the default, where a file lies
    ],
)
def test_a_folder_with_a_file_in_its_way_is_refused_before_anything_starts(
    tmp_path: Path, document: dict[str, Any], key: str
) -> None:
    (tmp_path / "keys.yaml").write_text("identities: {}\n")
    if not document:
        (tmp_path / "facts").write_text("not a folder\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(document, path=tmp_path / "agora.yaml")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'agora.yaml'}: {key}: expected a folder")
    assert "is a file" in message


def test_a_folder_argument_with_a_file_in_its_way_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keys.yaml").write_text("identities: {}\n")
    for arguments in (
        ["agents", "build", "--build-dir", str(tmp_path / "keys.yaml")],
        ["demo", "--facts-dir", str(tmp_path / "keys.yaml" / "facts")],
    ):
        with pytest.raises(SystemExit) as exited:
            agora(arguments)
        assert exited.value.code == 2
        assert f"{tmp_path / 'keys.yaml'} is a file" in capsys.readouterr().err


def test_an_agent_key_defaults_to_its_name_in_the_keys_folder(tmp_path: Path) -> None:
    document = _document()
    document["keys"] = {"dir": "private"}
    document["agents"]["relay-agent"] = {
        "component": "chatty",
        "channels": ["build-coord"],
        "key": "elsewhere/relay.pem",
    }
    agents = parse_config(document, path=tmp_path / "agora.yaml").agents
    assert agents["synth-agent"].key == tmp_path / "private" / "synth-agent.key"
    assert agents["relay-agent"].key == tmp_path / "elsewhere" / "relay.pem"


def test_agent_limits_override_the_defaults_one_by_one() -> None:
    document = _with(("defaults", "limits"), {"memory_mb": 256, "batch": 8})
    document["agents"]["synth-agent"]["limits"] = {"batch": 2, "fuel": 5_000_000}
    (agent,) = parse_config(document, path=FILE).agents.values()
    assert agent.limits == Limits(fuel=5_000_000, timeout_ms=2000, memory_mb=256, batch=2)


def test_channels_may_be_empty_or_described_and_keep_file_order() -> None:
    document = _document()
    document["channels"] = {"zeta": None, "alpha": {}, "build-coord": {"description": "builds"}}
    channels = parse_config(document, path=FILE).channels
    assert list(channels) == ["zeta", "alpha", "build-coord"]
    assert channels["zeta"].description == ""
    assert channels["build-coord"].description == "builds"


def test_a_host_with_no_agents_is_allowed() -> None:
    assert dict(parse_config({"agents": {}, "channels": None}, path=FILE).agents) == {}
    assert dict(parse_config({"agents": None}, path=FILE).agents) == {}


def test_the_config_cannot_be_changed() -> None:
    config = parse_config(_document(), path=FILE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hops = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.agents["other"] = config.agents["synth-agent"]  # type: ignore[index]
    with pytest.raises(TypeError):
        del config.channels["build-coord"]  # type: ignore[attr-defined]


def test_the_bridge_section_is_kept_raw_for_its_own_loader() -> None:
    bridge = {"repo": "octo/agora", "anything": {"nested": [1, 2]}}
    config = parse_config({**_document(), "bridge": bridge}, path=FILE)
    assert dict(config.bridge) == bridge
    with pytest.raises(TypeError):
        config.bridge["repo"] = "x"  # type: ignore[index]


# -- refusals -----------------------------------------------------------------------------


def test_an_error_has_the_file_the_key_path_the_expectation_and_the_value() -> None:
    message = _refusal(_with(("agents", "synth-agent", "limits", "memory_mb"), 8))
    assert message == (
        "agora.yaml: agents.synth-agent.limits.memory_mb: expected an integer from 16 to 4096, "
        "got 8"
    )


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("agents", "synth-agent", "limits", "memory_mb"), 4097, "from 16 to 4096, got 4097"),
        (("defaults", "limits", "memory_mb"), 15, "defaults.limits.memory_mb: expected an int"),
        (("defaults", "limits", "fuel"), 999_999, "fuel: expected an integer from 1000000 to"),
        (("defaults", "limits", "fuel"), 2**64, "fuel: expected an integer from 1000000 to"),
        (("defaults", "limits", "timeout_ms"), 9, "timeout_ms: expected an integer from 10 to"),
        (("defaults", "limits", "timeout_ms"), 600_001, "from 10 to 600000, got 600001"),
        (("defaults", "limits", "batch"), 0, "batch: expected an integer from 1 to 1024, got 0"),
        (("defaults", "limits", "batch"), 1025, "batch: expected an integer from 1 to 1024"),
        (("agents", "synth-agent", "limits", "outbox"), 0, "limits.outbox: expected an integer"),
        (("agents", "synth-agent", "limits", "outbox"), "64", "from 1 to 1024, got '64'"),
        (("defaults", "limits", "outbox"), 2000, "outbox: expected an integer from 1 to 1024"),
        (("defaults", "hops"), 0, "defaults.hops: expected an integer from 1 to 32, got 0"),
        (("defaults", "hops"), 33, "defaults.hops: expected an integer from 1 to 32, got 33"),
        (("defaults", "hops"), 1.5, "defaults.hops: expected an integer from 1 to 32, got 1.5"),
        (("host", "checkpoint_every"), 0, "host.checkpoint_every: expected an integer from 1 to"),
        (("host", "checkpoint_every"), 1_000_001, "from 1 to 1000000, got 1000001"),
        (("nats", "replicas"), 0, "nats.replicas: expected an integer from 1 to 5, got 0"),
        (("nats", "replicas"), 6, "nats.replicas: expected an integer from 1 to 5, got 6"),
        (("consumer", "ack_wait_s"), 0.5, "ack_wait_s: expected a number of seconds from 1 to"),
        (("consumer", "ack_wait_s"), 3601, "from 1 to 3600, got 3601"),
        (("consumer", "ack_wait_s"), "30s", "from 1 to 3600, got '30s'"),
        (("consumer", "ack_wait_s"), float("nan"), "from 1 to 3600, got nan"),
        (("consumer", "max_deliver"), 0, "max_deliver: expected an integer from 1 to 100, got 0"),
        (("consumer", "max_deliver"), 101, "consumer.max_deliver: expected an integer from 1"),
        (("facts",), 3, "facts: expected a path (a non-empty string with no NUL character)"),
        (
            ("facts",),
            "",
            "facts: expected a path (a non-empty string with no NUL character), got ''",
        ),
        (("keys", "registry"), None, "keys.registry: expected a path"),
        (
            ("keys", "dir"),
            ["a"],
            "keys.dir: expected a path (a non-empty string with no NUL character), got ['a']",
        ),
        (("agents_dir",), False, "agents_dir: expected a path"),
        (("build_dir",), {}, "build_dir: expected a path"),
        (("nats", "data_dir"), 1, "nats.data_dir: expected a path"),
        (("host", "name"), "agora host", "host.name: expected an identity name (only letters"),
        (("operator",), "", "operator: expected an identity name (only letters"),
        (("operator",), 7, "operator: expected an identity name"),
        (("keys",), "keys.yaml", "keys: expected a mapping, got 'keys.yaml'"),
        (("nats",), ["nats://x"], "nats: expected a mapping, got ['nats://x']"),
        (("defaults", "limits"), 64, "defaults.limits: expected a mapping, got 64"),
        (("channels",), ["build-coord"], "channels: expected a mapping, got ['build-coord']"),
        (("channels", "build-coord"), "builds", "channels.build-coord: expected a mapping"),
        (("channels", "build-coord", "description"), 5, "description: expected a string, got 5"),
        (("agents",), ["synth-agent"], "agents: expected a mapping, got ['synth-agent']"),
        (("agents", "synth-agent"), "chatty", "agents.synth-agent: expected a mapping"),
        (("agents", "synth-agent", "settings"), "x=1", "settings: expected a mapping, got 'x=1'"),
        (("agents", "synth-agent", "component"), "chat ty", "component: expected a component"),
        (("agents", "synth-agent", "component"), None, "component: expected a component name"),
        (("bridge",), "on", "bridge: expected a mapping, got 'on'"),
    ],
)
def test_a_bad_value_is_refused_with_its_key_path(
    path: tuple[str, ...], value: object, expected: str
) -> None:
    message = _refusal(_with(path, value))
    assert message.startswith("agora.yaml: ")
    assert expected in message


@pytest.mark.parametrize(
    "path",
    [
        ("defaults", "limits", "fuel"),
        ("agents", "synth-agent", "limits", "memory_mb"),
        ("defaults", "hops"),
        ("host", "checkpoint_every"),
        ("nats", "replicas"),
        ("consumer", "max_deliver"),
        ("consumer", "ack_wait_s"),
    ],
)
@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_not_a_number(path: tuple[str, ...], value: bool) -> None:
    assert _refusal(_with(path, value)).endswith(f"got {value}")


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    assert _refusal(["agents"]) == (
        "agora.yaml: expected a mapping of configuration keys, got ['agents']"
    )


@pytest.mark.parametrize(
    ("path", "where", "suggestion"),
    [
        (("agent",), "agora.yaml: agent: expected one of the keys facts", "'agents'"),
        (("agents", "synth-agent", "limts"), "agents.synth-agent.limts: expected", "'limits'"),
        (("agents", "synth-agent", "limits", "memory"), ".limits.memory: ", "'memory_mb'"),
        (("defaults", "limits", "fuell"), "defaults.limits.fuell: ", "'fuel'"),
        (("nats", "uri"), "nats.uri: expected one of the keys url, data_dir", "'url'"),
        (("consumer", "ack_wait"), "consumer.ack_wait: ", "'ack_wait_s'"),
        (("keys", "directory"), "keys.directory: expected one of the keys registry, dir", None),
        (("host", "checkpoint"), "host.checkpoint: ", "'checkpoint_every'"),
        (
            ("channels", "build-coord", "descripton"),
            "build-coord.descripton: expected the key description",
            "'description'",
        ),
        (("agents", "synth-agent", "setting"), "synth-agent.setting: ", "'settings'"),
    ],
)
def test_an_unknown_key_is_refused_with_its_path(
    path: tuple[str, ...], where: str, suggestion: str | None
) -> None:
    message = _refusal(_with(path, 1))
    assert where in message
    assert message.endswith(f"got {path[-1]!r}")
    if suggestion is not None:
        assert f"did you mean {suggestion}?" in message


def test_a_key_that_is_not_a_string_is_unknown() -> None:
    document: dict[Any, Any] = _document()
    document[1] = "x"
    assert _refusal(document).startswith("agora.yaml: 1: expected one of the keys facts, ")


def test_a_long_unknown_key_is_shortened_in_the_message() -> None:
    message = _refusal(_with(("x" * 10_000,), 1))
    assert len(message) < 600
    assert "(10002 chars)" in message


def test_an_agent_channel_must_be_declared() -> None:
    document = _with(("agents", "synth-agent", "channels"), ["build-coord", "release"])
    assert _refusal(document) == (
        "agora.yaml: agents.synth-agent.channels[1]: expected a channel declared under "
        "channels: (build-coord), got 'release'"
    )


@pytest.mark.parametrize("name", ["secret.ops", "a b", "build-coord.>", "a*", "../etc", "", 7])
def test_a_malformed_channel_name_is_refused_in_channels(name: object) -> None:
    document = _document()
    document["channels"][name] = {}
    message = _refusal(document)
    assert message.startswith("agora.yaml: channels: expected a channel name (only letters, ")
    assert message.endswith(f"got {name!r}")


@pytest.mark.parametrize("name", ["secret.ops", "a b", None])
def test_a_malformed_channel_name_is_refused_in_an_agent(name: object) -> None:
    message = _refusal(_with(("agents", "synth-agent", "channels"), ["build-coord", name]))
    assert message.startswith("agora.yaml: agents.synth-agent.channels[1]: expected a channel name")
    assert "only letters, digits, '-' and '_'" in message


@pytest.mark.parametrize("channels", [[], None, "build-coord", {"build-coord": None}])
def test_an_agent_needs_a_list_of_channels(channels: object) -> None:
    message = _refusal(_with(("agents", "synth-agent", "channels"), channels))
    assert "agents.synth-agent.channels: expected a non-empty list of channel names" in message


def test_an_agent_without_channels_is_refused() -> None:
    document = _document()
    del document["agents"]["synth-agent"]["channels"]
    assert "agents.synth-agent.channels: expected a non-empty list" in _refusal(document)


def test_an_agent_without_a_component_is_refused() -> None:
    document = _document()
    del document["agents"]["synth-agent"]["component"]
    assert _refusal(document).startswith(
        "agora.yaml: agents.synth-agent.component: expected a component name (required)"
    )


def test_a_channel_granted_twice_is_refused() -> None:
    document = _with(("agents", "synth-agent", "channels"), ["build-coord", "build-coord"])
    assert "synth-agent.channels[1]: expected each channel once" in _refusal(document)


@pytest.mark.parametrize("name", ["synth.agent", "a b", "x" * 65, 3])
def test_a_malformed_agent_name_is_refused(name: object) -> None:
    document = _document()
    document["agents"][name] = document["agents"].pop("synth-agent")
    message = _refusal(document)
    assert message.startswith("agora.yaml: agents: expected an agent name (only letters")


# -- settings -----------------------------------------------------------------------------


def test_settings_become_strings_in_file_order() -> None:
    settings = {
        "voters": ["alice-voter", "bob-voter"],
        "quorum": 2,
        "ratio": 0.5,
        "strict": True,
        "verbose": False,
        "word": "tests pass",
        "mixed": [1, True, "x", 2.5],
    }
    (agent,) = parse_config(
        _with(("agents", "synth-agent", "settings"), settings), path=FILE
    ).agents.values()
    assert agent.settings == (
        ("voters", "alice-voter,bob-voter"),
        ("quorum", "2"),
        ("ratio", "0.5"),
        ("strict", "true"),
        ("verbose", "false"),
        ("word", "tests pass"),
        ("mixed", "1,true,x,2.5"),
    )


def test_settings_reach_the_agent_as_the_file_writes_them(tmp_path: Path) -> None:
    # read from the file: YAML 1.1 would make 00123 an octal 83, 1:30 a 90, yes a true
    path = tmp_path / "agora.yaml"
    path.write_text(
        "channels: {build-coord: {}}\n"
        "agents:\n"
        "  synth-agent:\n"
        "    component: chatty\n"
        "    channels: [build-coord]\n"
        "    settings: {id: 00123, version: 1.10, at: 1:30, mode: 0755, flag: yes, "
        "n: 5, big: 1_000, t: true, hex: 0x1F}\n",
        encoding="utf-8",
    )
    (agent,) = load_config(path).agents.values()
    assert dict(agent.settings) == {
        "id": "00123",
        "version": "1.10",
        "at": "1:30",
        "mode": "0755",
        "flag": "yes",
        "n": "5",
        "big": "1_000",
        "t": "true",
        "hex": "0x1F",
    }


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("consumer: {ack_wait_s: " + "9" * 400 + "}", "consumer.ack_wait_s: expected a number"),
        ("consumer: {max_deliver: " + "9" * 5000 + "}", "a value cannot be read"),
        ("agents: {a: {settings: {x: 2024-13-45}}}", "a value cannot be read"),
        ("channels: " + "[" * 20_000, "nested deeper than a configuration goes"),
        ('facts: "a\\0b"', "facts: expected a path (a non-empty string with no NUL"),
        ("defaults: {limits: {memory_mb: 0755}}", "memory_mb: expected an integer"),
    ],
)
def test_a_file_python_cannot_read_as_written_is_refused_with_its_name(
    tmp_path: Path, text: str, said: str
) -> None:
    path = tmp_path / "agora.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value).startswith(str(path))
    assert said in str(refused.value)


def test_a_value_whose_aliases_hold_a_billion_items_is_refused_at_once(tmp_path: Path) -> None:
    # nine lines of anchors, each ten of the one before: the error shows its first few
    levels = ["&l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"&l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, 9)]
    path = tmp_path / "agora.yaml"
    path.write_text(f"operator: [{', '.join(levels)}]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="operator: expected") as refused:
        load_config(path)
    assert len(str(refused.value)) < 400


def test_no_settings_is_an_empty_tuple() -> None:
    (agent,) = parse_config(_document(), path=FILE).agents.values()
    assert agent.settings == ()


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"inner": 1}, "settings.nested: expected a string, number or boolean"),
        ([["a", "b"]], "settings.nested[0]: expected a string, number or boolean"),
        ([{"a": 1}], "settings.nested[0]: expected a string, number or boolean"),
        (None, "settings.nested: expected a string, number or boolean"),
        (["a,b", "c"], "settings.nested[0]: expected a list item without ','"),
    ],
)
def test_a_setting_that_is_not_a_scalar_or_a_list_of_them_is_refused(
    value: object, where: str
) -> None:
    message = _refusal(_with(("agents", "synth-agent", "settings", "nested"), value))
    assert f"agora.yaml: agents.synth-agent.{where}" in message


@pytest.mark.parametrize("key", ["a b", "x.y", 5])
def test_a_malformed_setting_name_is_refused(key: object) -> None:
    message = _refusal(_with(("agents", "synth-agent", "settings"), {key: "v"}))
    assert message.startswith("agora.yaml: agents.synth-agent.settings: expected a setting name")


# -- nats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "nats://127.0.0.1:4222",
        "tls://nats.example.com:4222",
        "ws://localhost:8080",
        "wss://nats.example.com",
        "nats://user:secret@host:4222",
    ],
)
def test_a_nats_url_with_a_nats_scheme_is_accepted(url: str) -> None:
    assert parse_config(_with(("nats", "url"), url), path=FILE).nats.url == url


def test_a_null_nats_url_means_an_embedded_server() -> None:
    assert parse_config(_with(("nats", "url"), None), path=FILE).nats.url is None


@pytest.mark.parametrize(
    "url",
    ["http://localhost:4222", "localhost:4222", "nats:localhost", "NATS://x", 4222, "nats://"],
)
def test_any_other_nats_url_is_refused(url: object) -> None:
    message = _refusal(_with(("nats", "url"), url))
    assert message.startswith("agora.yaml: nats.url: expected ")


def test_a_refused_nats_url_does_not_show_its_password() -> None:
    message = _refusal(_with(("nats", "url"), "https://user:hunter2@host:4222/x"))
    assert "hunter2" not in message
    assert "'https://***@host:4222/x'" in message


@pytest.mark.parametrize(
    ("url", "said"),
    [
        # a "/" or "#" in a token or password would make the user name the host
        ("nats://tok/en3cret@127.0.0.1:4222", "written %2F, %3F, %23 and %40"),
        ("nats://user:pa#ss3cret@127.0.0.1:4222", "written %2F, %3F, %23 and %40"),
        ("nats://user:s3cret@127.0.0.1:99999", "a port from 1 to 65535"),
        ("nats://user:s3cret@127.0.0.1:abc", "a port from 1 to 65535"),
    ],
)
def test_a_nats_url_that_would_be_misread_is_refused_without_its_secret(
    url: str, said: str
) -> None:
    message = _refusal(_with(("nats", "url"), url))
    assert said in message
    assert "3cret" not in message and "@127.0.0.1" in message


def test_a_url_is_shown_without_what_comes_before_its_last_at() -> None:
    assert without_credentials("nats://tok/en3cret@127.0.0.1:4222") == "nats://***@127.0.0.1:4222"
    assert without_credentials("nats://u:p@x@host") == "nats://***@host"


def test_replicas_need_a_cluster() -> None:
    message = _refusal(_with(("nats",), {"url": None, "replicas": 3}))
    assert "nats.replicas: expected 1 with the embedded server" in message
    assert (
        parse_config(
            _with(("nats",), {"url": "nats://a:4222", "replicas": 3}), path=FILE
        ).nats.replicas
        == 3
    )


# -- the key registry -----------------------------------------------------------------------


def _registry(keys: dict[str, SigningKey], **changes: tuple[Role, list[str]] | None) -> KeyRegistry:
    """host, maintainer and synth-agent as they should be, with ``changes`` applied."""
    wanted: dict[str, tuple[Role, list[str]] | None] = {
        "host": (Role.HOST, ["*"]),
        "maintainer": (Role.OPERATOR, ["build-coord"]),
        "synth-agent": (Role.AGENT, ["build-coord"]),
    }
    wanted.update({name.replace("_", "-"): change for name, change in changes.items()})
    return KeyRegistry(
        keys[name].identity(*entry) for name, entry in wanted.items() if entry is not None
    )


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return parse_config(_document(), path=tmp_path / "agora.yaml")


def test_a_matching_registry_passes(config: Config, keys: dict[str, SigningKey]) -> None:
    check_against_registry(config, _registry(keys))


def test_an_agent_may_hold_more_channels_than_it_is_configured_with(
    config: Config, keys: dict[str, SigningKey]
) -> None:
    registry = _registry(keys, synth_agent=(Role.AGENT, ["build-coord", "secret-ops"]))
    check_against_registry(config, registry)


def test_an_unregistered_agent_names_the_registry_and_the_command(
    config: Config, keys: dict[str, SigningKey]
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_against_registry(config, _registry(keys, synth_agent=None))
    assert str(caught.value) == (
        f"{config.registry}: agent 'synth-agent' of agora.yaml is not registered: "
        "run `agora keys new synth-agent --channel build-coord`"
    )


def test_an_agent_with_another_role_is_refused(config: Config, keys: dict[str, SigningKey]) -> None:
    with pytest.raises(ConfigError) as caught:
        check_against_registry(config, _registry(keys, synth_agent=(Role.OPERATOR, [])))
    message = str(caught.value)
    assert message.startswith(f"{config.registry}: agent 'synth-agent' of agora.yaml has role ")
    assert "operator, expected agent" in message


def test_an_agent_not_granted_its_channel_is_refused(
    config: Config, keys: dict[str, SigningKey]
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_against_registry(config, _registry(keys, synth_agent=(Role.AGENT, ["release"])))
    assert str(caught.value) == (
        f"{config.registry}: agent 'synth-agent' is not granted build-coord (granted: release): "
        "add to identities.synth-agent.channels in keys.yaml, or remove from "
        "agents.synth-agent.channels in agora.yaml"
    )


def test_a_missing_host_identity_is_refused(config: Config, keys: dict[str, SigningKey]) -> None:
    with pytest.raises(ConfigError) as caught:
        check_against_registry(config, _registry(keys, host=None))
    assert str(caught.value) == (
        f"{config.registry}: host.name 'host' of agora.yaml is not registered: "
        "run `agora keys new host --role host --channel '*'`"
    )


def test_a_host_identity_without_role_host_is_refused(
    config: Config, keys: dict[str, SigningKey]
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_against_registry(config, _registry(keys, host=(Role.BRIDGE, ["*"])))
    assert "host.name 'host' of agora.yaml has role bridge, expected host" in str(caught.value)


def test_a_missing_operator_is_refused(config: Config, keys: dict[str, SigningKey]) -> None:
    with pytest.raises(ConfigError) as caught:
        check_against_registry(config, _registry(keys, maintainer=None))
    assert "operator 'maintainer' of agora.yaml is not registered: run `agora keys new " in str(
        caught.value
    )
    assert "--role operator --channel build-coord`" in str(caught.value)


def test_an_operator_without_role_operator_is_refused(
    config: Config, keys: dict[str, SigningKey]
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_against_registry(config, _registry(keys, maintainer=(Role.AGENT, ["build-coord"])))
    assert "operator 'maintainer' of agora.yaml has role agent, expected operator" in str(
        caught.value
    )


def test_every_registry_problem_is_reported_at_once(config: Config) -> None:
    with pytest.raises(ConfigError) as caught:
        check_against_registry(config, KeyRegistry([]))
    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{config.registry}: ") for line in lines)


def test_a_suggested_command_names_a_registry_that_is_not_the_default(
    tmp_path: Path,
) -> None:
    document = {**_document(), "keys": {"registry": "conf/keys.yaml", "dir": "private"}}
    config = parse_config(document, path=tmp_path / "agora.yaml")
    with pytest.raises(ConfigError) as caught:
        check_against_registry(config, KeyRegistry([]))
    assert (
        f"agora keys new synth-agent --channel build-coord --registry {tmp_path}/conf/keys.yaml "
        f"--keys-dir {tmp_path}/private`" in str(caught.value)
    )


# -- the file --------------------------------------------------------------------------------


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"agora\.yaml: no such file"):
        load_config(tmp_path / "agora.yaml")


def test_a_folder_is_not_a_readable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path}: cannot be read: ")


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agora.yaml"
    path.write_bytes(b"facts: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"^.*agora\.yaml: cannot be read: "):
        load_config(path)


def test_invalid_yaml_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "agora.yaml"
    path.write_text("channels:\n  build-coord: {\nagents: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid YAML: ")
    assert "line " in message


@pytest.mark.parametrize(
    "text",
    [
        "nats:\n  url: nats://admin:pw: x9Secret@127.0.0.1:4222\n",  # a syntax error
        "nats:\n  url: nats://a:x9Secret@h:1\n  url: nats://a:x9Secret@h:2\n",  # twice
    ],
)
def test_a_yaml_error_says_where_without_quoting_the_file(tmp_path: Path, text: str) -> None:
    # A configuration's lines may hold a secret (a password in a URL): an error names
    # the line and column, never what is on it.
    path = tmp_path / "agora.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "x9Secret" not in message
    assert re.search(r"line \d+, column \d+", message), message


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agora.yaml"
    path.write_text(
        "channels: {build-coord: {}}\n"
        "agents:\n"
        "  synth-agent: {component: chatty, channels: [build-coord]}\n"
        "  synth-agent: {component: other, channels: [build-coord]}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "found the key 'synth-agent' twice" in str(caught.value)
    assert "line 4" in str(caught.value)


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "agora.yaml"
    path.write_text(
        "channels: {build-coord: {}}\n"
        "agents:\n"
        "  synth-agent: &agent {component: chatty, channels: [build-coord]}\n"
        "  relay-agent:\n"
        "    <<: *agent\n"
        "    component: relay\n",
        encoding="utf-8",
    )
    agents = load_config(path).agents
    assert agents["relay-agent"].component == "relay"
    assert agents["relay-agent"].channels == ("build-coord",)


def test_an_error_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "site" / "agora.yaml"
    path.parent.mkdir()
    path.write_text(
        "defaults: {hops: 99}\nchannels: {build-coord: {}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (f"{path}: defaults.hops: expected an integer from 1 to 32, got 99")


@pytest.mark.parametrize("text", ["", "\n", "# nothing yet\n", "---\n"])
def test_an_empty_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "agora.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: expected a mapping of configuration keys such as channels: and agents: "
        "(agora.example.yaml shows every key), got an empty file"
    )
