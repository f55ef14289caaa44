"""The ``bridge:`` section: secrets read from where the file says, every mistake named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agora.bridge.config import bridge_config
from agora.core.errors import ConfigError
from agora.host.config import load_config

BASE: dict[str, Any] = {
    "channels": {"build-coord": {}, "release": {}},
    "bridge": {
        "webhook_secret": {"env": "HOOK_SECRET"},
        "github": {"token": {"file": "token.txt"}, "login": "agora-bridge[bot]"},
        "links": {"build-coord": "octo/repo#12"},
        "mirror": ["build-coord", "release"],
        "facts": {"commit": "api", "repo": "octo/repo"},
    },
}
ENV = {"HOOK_SECRET": "s3cret-hook"}


def _load(tmp_path: Path, document: dict[str, Any], env: dict[str, str] = ENV) -> Any:
    (tmp_path / "token.txt").write_text("ghp_token_value\n")
    path = tmp_path / "agora.yaml"
    path.write_text(yaml.safe_dump(document))
    return bridge_config(load_config(path), environ=env)


def test_defaults_and_secrets(tmp_path: Path) -> None:
    bridge = _load(tmp_path, BASE)
    assert bridge.identity == "bridge"
    assert (bridge.listen_host, bridge.listen_port) == ("127.0.0.1", 8088)
    assert bridge.webhook_secret.reveal() == "s3cret-hook"
    assert bridge.token is not None and bridge.token.reveal() == "ghp_token_value"
    assert "s3cret" not in repr(bridge) and "ghp_token_value" not in repr(bridge)
    assert str(bridge.links["build-coord"]) == "octo/repo#12"
    assert bridge.kill_label == "agora:kill"
    assert bridge.associations == {"OWNER", "MEMBER", "COLLABORATOR"}
    assert (bridge.per_minute, bridge.per_hour) == (80, 500)
    assert bridge.facts.mode == "api" and bridge.facts.path == "facts"
    assert bridge.repos == {"octo/repo"}


def test_no_bridge_section_means_no_bridge(tmp_path: Path) -> None:
    assert _load(tmp_path, {"channels": {}}) is None


def _with(path: str, value: object) -> dict[str, Any]:
    document = yaml.safe_load(yaml.safe_dump(BASE))
    target = document["bridge"]
    *parents, last = path.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    if value is None:
        del target[last]
    else:
        target[last] = value
    return document


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("webhook_secret", None, "bridge.webhook_secret: expected one of {env: NAME}"),
        (
            "webhook_secret",
            {"env": "NOPE"},
            "bridge.webhook_secret.env: expected a variable that is set",
        ),
        (
            "webhook_secret",
            {"file": "missing.txt"},
            "bridge.webhook_secret.file: expected a readable file",
        ),
        ("webhook_secret", {"env": "A", "file": "b"}, "got both"),
        (
            "links.build-coord",
            "octo/repo",
            "bridge.links.build-coord: expected an issue as owner/repo#NUMBER",
        ),
        ("links.nowhere", "octo/repo#1", "a channel declared under channels:"),
        ("mirror", ["secret.ops"], "bridge.mirror[0]: expected a channel name"),
        ("github.token", None, "bridge.github.token: expected a token"),
        ("github.login", "not a login", "a GitHub login"),
        (
            "speakers",
            {"associations": ["ADMIN"]},
            "bridge.speakers.associations: expected a list of OWNER",
        ),
        (
            "pacing",
            {"per_minute": 200},
            "bridge.pacing.per_minute: expected an integer from 1 to 80",
        ),
        ("pull_requests", "yes", "bridge.pull_requests: expected true or false"),
        ("facts", {"commit": "push"}, "bridge.facts.commit: expected one of api, local, off"),
        ("facts", {"commit": "api"}, "bridge.facts.repo: expected owner/name"),
        (
            "facts",
            {"commit": "local"},
            "bridge.facts.checkout: expected the path of a local git checkout",
        ),
        (
            "facts",
            {"commit": "local", "checkout": "."},  # path "facts": the live facts directory
            "expected a folder apart from the facts directory the recorder writes",
        ),
        (
            "facts",
            {"commit": "local", "checkout": ".", "path": "../elsewhere"},
            "bridge.facts.path: expected a folder inside facts.checkout",
        ),
        ("max_body_bytes", 10**9, "bridge.max_body_bytes: expected an integer"),
        ("tokens", 1, "bridge.tokens: expected one of the keys"),
        ("github.token", "ghp_inline_secret", "never the secret itself, got something else"),
        ("webhook_secret", {"env": "ghp_secret-with-dash"}, "an environment variable name"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, path: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, _with(path, value))
    assert message in str(raised.value)
    assert "agora.yaml" in str(raised.value)
    assert "ghp_token_value" not in str(raised.value)
    assert "ghp_inline_secret" not in str(raised.value)
    assert "ghp_secret" not in str(raised.value)
