"""The ``bridge:`` section of ``agora.yaml``: where the webhook listens, how to reach
GitHub, which channels are linked to which issues, who may speak, what is mirrored, and
how the facts are committed.

Secrets (the webhook secret, a token, an App's private key) are never written in the
file: it names where to read them, ``{env: NAME}`` or ``{file: PATH}``, and they are read
once at start-up into :class:`Secret` values whose ``repr`` shows only where they came
from. Every error names the file, the key and what is expected, like the rest of the
configuration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from agora.core.document import Fields, Node, check_channel_at
from agora.core.errors import ConfigError, shown
from agora.host.config import Config

DEFAULT_PORT: Final = 8088
DEFAULT_MAX_BODY: Final = 1024 * 1024
GITHUB_MAX_BODY: Final = 25 * 1024 * 1024
DEFAULT_API_URL: Final = "https://api.github.com"
DEFAULT_KILL_LABEL: Final = "agora:kill"
DEFAULT_LINK_PREFIX: Final = "agora:channel:"
DEFAULT_ASSOCIATIONS: Final = ("OWNER", "MEMBER", "COLLABORATOR")
ASSOCIATIONS: Final = (
    "OWNER",
    "MEMBER",
    "COLLABORATOR",
    "CONTRIBUTOR",
    "FIRST_TIME_CONTRIBUTOR",
    "FIRST_TIMER",
    "MANNEQUIN",
    "NONE",
)
COMMIT_MODES: Final = ("api", "local", "off")
_ISSUE: Final = re.compile(r"^([A-Za-z0-9_.-]{1,100})/([A-Za-z0-9_.-]{1,100})#([1-9][0-9]{0,9})$")
_REPO: Final = re.compile(r"^([A-Za-z0-9_.-]{1,100})/([A-Za-z0-9_.-]{1,100})$")
_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_LOGIN: Final = re.compile(r"^[A-Za-z0-9-]{1,39}(\[bot\])?$")


class Secret:
    """A secret read at start-up. Its ``repr`` and ``str`` say where from, never what."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self.source})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class IssueRef:
    repo: str  # owner/name
    number: int

    def __str__(self) -> str:
        return f"{self.repo}#{self.number}"


@dataclass(frozen=True, slots=True)
class AppAuth:
    app_id: int
    private_key: Secret
    installation_id: int


@dataclass(frozen=True, slots=True)
class FactsCommit:
    mode: str  # api | local | off
    repo: str  # owner/name, for mode api
    branch: str
    path: str  # the facts directory's path inside the repository
    every_s: float
    every_facts: int
    checkout: Path | None  # for mode local


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    identity: str
    listen_host: str
    listen_port: int
    webhook_secret: Secret
    max_body_bytes: int
    api_url: str
    token: Secret | None
    app: AppAuth | None
    login: str | None  # the bridge's own GitHub login, e.g. agora-bridge[bot]
    links: Mapping[str, IssueRef]  # channel -> issue
    link_label_prefix: str
    kill_label: str
    associations: frozenset[str]
    logins: frozenset[str]
    pull_requests: bool
    mirror: tuple[str, ...]
    per_minute: int
    per_hour: int
    status_every_s: float
    hops: int
    facts: FactsCommit
    repos: frozenset[str] = field(default_factory=frozenset)


_KEYS: Final = (
    "identity",
    "listen",
    "webhook_secret",
    "max_body_bytes",
    "github",
    "links",
    "link_label_prefix",
    "kill_label",
    "speakers",
    "pull_requests",
    "mirror",
    "pacing",
    "hops",
    "facts",
)


def bridge_config(
    config: Config, *, environ: Mapping[str, str] | None = None
) -> BridgeConfig | None:
    """The checked ``bridge:`` section, with its secrets read; None if there is none."""
    if not config.bridge:
        return None
    env = os.environ if environ is None else environ
    node = Node(str(config.path), "bridge", dict(config.bridge))
    fields = node.fields(_KEYS)
    listen = fields.section("listen", ("host", "port"))
    github = fields.section("github", ("api_url", "token", "app", "login"))
    speakers = fields.section("speakers", ("associations", "logins"))
    pacing = fields.section("pacing", ("per_minute", "per_hour", "status_every_s"))
    links = _links(fields.get("links") or fields.missing("links"), config)
    mirror = _channels(fields.get("mirror"), config)
    token_node = github.get("token")
    app = _app(github.get("app"), config.root, env)
    if token_node is None and app is None:
        raise github.missing("token").error(
            "a token ({env: NAME} or {file: PATH}) or an app ({id, private_key, installation})",
            "neither",
        )
    facts = _facts(fields.section("facts", _FACTS_KEYS), config)
    repos = {ref.repo for ref in links.values()} | ({facts.repo} if facts.repo else set())
    return BridgeConfig(
        identity=fields.name("identity", default="bridge"),
        listen_host=listen.text("host", default="127.0.0.1"),
        listen_port=listen.integer("port", default=DEFAULT_PORT, low=0, high=65535),
        webhook_secret=_secret(
            fields.get("webhook_secret") or fields.missing("webhook_secret"), config.root, env
        ),
        max_body_bytes=fields.integer(
            "max_body_bytes", default=DEFAULT_MAX_BODY, low=1024, high=GITHUB_MAX_BODY
        ),
        api_url=_url(github.get("api_url")),
        token=None if token_node is None else _secret(token_node, config.root, env),
        app=app,
        login=_login(github.get("login")),
        links=MappingProxyType(links),
        link_label_prefix=fields.text("link_label_prefix", default=DEFAULT_LINK_PREFIX),
        kill_label=fields.text("kill_label", default=DEFAULT_KILL_LABEL),
        associations=_words(
            speakers.get("associations"), ASSOCIATIONS, default=DEFAULT_ASSOCIATIONS
        ),
        logins=frozenset(_logins(speakers.get("logins"))),
        pull_requests=_flag(fields.get("pull_requests"), default=False),
        mirror=mirror,
        per_minute=pacing.integer("per_minute", default=80, low=1, high=80),
        per_hour=pacing.integer("per_hour", default=500, low=1, high=500),
        status_every_s=pacing.seconds("status_every_s", default=10.0, low=0.1, high=3600.0),
        hops=fields.integer("hops", default=config.hops, low=1, high=32),
        facts=facts,
        repos=frozenset(repos),
    )


_FACTS_KEYS: Final = ("commit", "repo", "branch", "path", "every_s", "every_facts", "checkout")


def _facts(fields: Fields, config: Config) -> FactsCommit:
    mode = fields.text("commit", default="off")
    if mode not in COMMIT_MODES:
        raise (fields.get("commit") or fields.missing("commit")).error(
            f"one of {', '.join(COMMIT_MODES)}"
        )
    repo_node = fields.get("repo")
    repo = "" if repo_node is None else _repo(repo_node)
    if mode == "api" and not repo:
        raise fields.missing("repo").error("owner/name of the repository to commit to", "nothing")
    checkout_node = fields.get("checkout")
    checkout = (
        None if checkout_node is None else fields.path("checkout", root=config.root, default=".")
    )
    if mode == "local" and checkout is None:
        raise fields.missing("checkout").error("the path of a local git checkout", "nothing")
    settings = FactsCommit(
        mode=mode,
        repo=repo,
        branch=fields.text("branch", default="main"),
        path=fields.text("path", default="facts").strip("/") or "facts",
        every_s=fields.seconds("every_s", default=60.0, low=1.0, high=86400.0),
        every_facts=fields.integer("every_facts", default=500, low=1, high=1_000_000),
        checkout=checkout,
    )
    try:
        check_local_target(settings, config.facts_dir)
    except ConfigError as exc:
        raise ConfigError(f"{fields.node.file}: {exc}") from exc
    return settings


def check_local_target(settings: FactsCommit, facts_dir: Path | None) -> None:
    """Refuse a local commit's target that is not a folder inside the checkout, or that
    is, holds or lies inside the facts directory the recorder writes (``facts:``)."""
    if settings.mode != "local" or settings.checkout is None:
        return
    checkout = settings.checkout.resolve()
    target = (checkout / settings.path).resolve()
    inside = checkout in target.parents
    if not inside or ".git" in target.relative_to(checkout).parts:
        raise ConfigError(
            f"bridge.facts.path: expected a folder inside facts.checkout ({checkout}), "
            f"got {settings.path!r}"
        )
    if facts_dir is None:
        return
    live = facts_dir.resolve()
    if target == live or live in target.parents or target in live.parents:
        raise ConfigError(
            "bridge.facts.checkout and bridge.facts.path: expected a folder apart from the "
            f"facts directory the recorder writes (facts: {live}), got {target}, which "
            f"{'is' if target == live else 'overlaps'} it: the committer replaces that "
            "folder with each snapshot. Point facts.path elsewhere in the checkout, or "
            "facts: outside it"
        )


def _secret(node: Node, root: Path, env: Mapping[str, str]) -> Secret:
    """Read a secret from where the file says. No error ever shows the value it read or
    what was written in its place (which may be the secret itself)."""
    if node.value is None:
        raise node.error("one of {env: NAME} or {file: PATH}", "nothing")
    if not isinstance(node.value, Mapping):
        raise node.error(
            "{env: NAME} or {file: PATH}, never the secret itself", "something else (not shown)"
        )
    fields = node.fields(("env", "file"))
    name, path = fields.get("env"), fields.get("file")
    if (name is None) == (path is None):
        raise node.error("one of {env: NAME} or {file: PATH}", "both" if name else "neither")
    if name is not None:
        variable = name.value
        if not isinstance(variable, str) or _ENV_NAME.match(variable) is None:
            raise name.error("an environment variable name", "something else (not shown)")
        value = env.get(variable)
        if not value:
            raise name.error("a variable that is set", "it is not set (its name is not shown)")
        return Secret(value, "an environment variable")
    assert path is not None  # noqa: S101 - exactly one of the two is set
    file = fields.path("file", root=root, default=".")
    try:
        text = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise path.error("a readable file", f"{file} ({exc.strerror})") from None
    if not text:
        raise path.error("a file holding the secret", f"{file} is empty")
    return Secret(text, str(file))


def _app(node: Node | None, root: Path, env: Mapping[str, str]) -> AppAuth | None:
    if node is None:
        return None
    fields = node.fields(("id", "private_key", "installation"))
    key = fields.get("private_key") or fields.missing("private_key")
    return AppAuth(
        app_id=fields.integer("id", default=0, low=1, high=2**53),
        private_key=_secret(key, root, env),
        installation_id=fields.integer("installation", default=0, low=1, high=2**53),
    )


def _links(node: Node, config: Config) -> dict[str, IssueRef]:
    links: dict[str, IssueRef] = {}
    for key, child in node.entries():
        channel = check_channel_at(child, key)
        if channel not in config.channels:
            raise child.error(
                f"a channel declared under channels: ({', '.join(config.channels)})", shown(channel)
            )
        match = _ISSUE.match(child.value) if isinstance(child.value, str) else None
        if match is None:
            raise child.error("an issue as owner/repo#NUMBER")
        links[channel] = IssueRef(f"{match.group(1)}/{match.group(2)}", int(match.group(3)))
    return links


def _channels(node: Node | None, config: Config) -> tuple[str, ...]:
    if node is None:
        return ()
    if not isinstance(node.value, list):
        raise node.error("a list of channels")
    chosen: list[str] = []
    for index, value in enumerate(node.value):
        item = Node(node.file, f"{node.where}[{index}]", value)
        channel = check_channel_at(item, value)
        if channel not in config.channels:
            raise item.error("a channel declared under channels:", shown(channel))
        chosen.append(channel)
    return tuple(dict.fromkeys(chosen))


def _repo(node: Node) -> str:
    if not isinstance(node.value, str) or _REPO.match(node.value) is None:
        raise node.error("a repository as owner/name")
    return node.value


def _url(node: Node | None) -> str:
    if node is None:
        return DEFAULT_API_URL
    value = node.value
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        raise node.error("an http(s) URL of the GitHub API")
    return value.rstrip("/")


def _login(node: Node | None) -> str | None:
    if node is None:
        return None
    if not isinstance(node.value, str) or _LOGIN.match(node.value) is None:
        raise node.error("a GitHub login, e.g. agora-bridge[bot]")
    return node.value


def _logins(node: Node | None) -> list[str]:
    if node is None:
        return []
    if not isinstance(node.value, list):
        raise node.error("a list of GitHub logins")
    for index, value in enumerate(node.value):
        _login(Node(node.file, f"{node.where}[{index}]", value))
    return [str(v) for v in node.value]


def _words(
    node: Node | None, allowed: tuple[str, ...], *, default: tuple[str, ...]
) -> frozenset[str]:
    if node is None:
        return frozenset(default)
    if not isinstance(node.value, list) or not all(v in allowed for v in node.value):
        raise node.error(f"a list of {', '.join(allowed)}")
    return frozenset(str(v) for v in node.value)


def _flag(node: Node | None, *, default: bool) -> bool:
    if node is None:
        return default
    if not isinstance(node.value, bool):
        raise node.error("true or false")
    return node.value
