"""The stand-in's world: users, repositories, issues, comments, labels, the issue events
that record label changes, apps, tokens, hooks.

Pure state and its transitions: no I/O and no clock (``now`` is passed in, in seconds
since the epoch). A transition that GitHub would announce by webhook returns the
``Happening`` records describing it; the shell turns them into payloads at once (so a
payload shows the world as it was) and queues the deliveries.
A request GitHub would refuse raises ``GitHubError`` with the status and message GitHub
gives, and changes nothing.
"""

from __future__ import annotations

import base64
import itertools
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from agora.bridge.standin.git import Commit, ObjectStore, Signature, initial_tree
from agora.core.errors import InputError, InternalError

Association = Literal[
    "OWNER",
    "MEMBER",
    "COLLABORATOR",
    "CONTRIBUTOR",
    "FIRST_TIMER",
    "FIRST_TIME_CONTRIBUTOR",
    "MANNEQUIN",
    "NONE",
]
UserType = Literal["User", "Bot", "Organization"]
# The legacy base roles GitHub's collaborator-permission endpoint reports.
Permission = Literal["admin", "write", "read", "none"]
ASSOCIATIONS: Final = frozenset(Association.__args__)  # type: ignore[attr-defined]
WRITERS: Final = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})
DOCS: Final = "https://docs.github.com/rest"
DEFAULT_LABEL_COLOR: Final = "ededed"
MAX_BODY_CHARS: Final = 65536  # an issue's or a comment's body
DEFAULT_TOKEN_LIFETIME_S: Final = 3600
APP_PERMISSIONS: Final = {"issues": "write", "contents": "write", "metadata": "read"}
APP_EVENTS: Final = ("issue_comment", "issues")
# The labels GitHub gives every new repository.
DEFAULT_LABELS: Final = (
    ("bug", "d73a4a", "Something isn't working"),
    ("documentation", "0075ca", "Improvements or additions to documentation"),
    ("duplicate", "cfd3d7", "This issue or pull request already exists"),
    ("enhancement", "a2eeef", "New feature or request"),
    ("good first issue", "7057ff", "Good for newcomers"),
    ("help wanted", "008672", "Extra attention is needed"),
    ("invalid", "e4e669", "This doesn't seem right"),
    ("question", "d876e3", "Further information is requested"),
    ("wontfix", "ffffff", "This will not be worked on"),
)


class GitHubError(InputError):
    """A request GitHub refuses: the HTTP status and GitHub's JSON error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        documentation_url: str = DOCS,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.documentation_url = documentation_url
        self.errors = errors
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.errors is not None:
            body["errors"] = self.errors
        body["documentation_url"] = self.documentation_url
        body["status"] = str(self.status)
        return body


def not_found(documentation_url: str = DOCS) -> GitHubError:
    return GitHubError(404, "Not Found", documentation_url=documentation_url)


def invalid(resource: str, field_name: str, code: str = "missing_field") -> GitHubError:
    error = {"resource": resource, "code": code, "field": field_name}
    return GitHubError(422, "Validation Failed", errors=[error])


def check_body(resource: str, body: str | None) -> None:
    if body is not None and len(body) > MAX_BODY_CHARS:
        error = {
            "resource": resource,
            "code": "custom",
            "field": "body",
            "message": f"body is too long (maximum is {MAX_BODY_CHARS} characters)",
        }
        raise GitHubError(422, "Validation Failed", errors=[error])


def node_id(prefix: str, number: int) -> str:
    raw = b"\x93\x00" + number.to_bytes(8, "big")
    return f"{prefix}_kwDO{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"


@dataclass(slots=True)
class User:
    id: int
    login: str
    type: UserType
    name: str | None
    association: Association  # on repositories that do not say otherwise

    @property
    def node_id(self) -> str:
        return node_id("BOT" if self.type == "Bot" else "U", self.id)

    @property
    def email(self) -> str:
        return f"{self.id}+{self.login}@users.noreply.github.com"


@dataclass(slots=True)
class Label:
    id: int
    name: str
    color: str
    description: str | None
    default: bool


@dataclass(slots=True)
class App:
    id: int
    slug: str
    name: str
    client_id: str
    owner: User
    public_key_pem: bytes
    bot: User
    created_at: float
    token_lifetime_s: float


@dataclass(slots=True)
class Installation:
    id: int
    app: App
    account: User
    repos: set[str]
    created_at: float


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: a user, or an app's bot acting for one of its installations."""

    user: User
    installation: Installation | None = None

    @property
    def app(self) -> App | None:
        return self.installation.app if self.installation else None


@dataclass(slots=True)
class Issue:
    id: int
    number: int
    title: str
    body: str | None
    user: User
    created_at: float
    updated_at: float
    app: App | None = None
    pull_request: bool = False
    state: Literal["open", "closed"] = "open"
    closed_at: float | None = None
    labels: list[Label] = field(default_factory=list)
    comments: int = 0


@dataclass(slots=True)
class Comment:
    id: int
    repo: str
    issue_number: int
    user: User
    body: str
    created_at: float
    updated_at: float
    app: App | None = None


@dataclass(frozen=True, slots=True)
class IssueEvent:
    """A label added to or taken off an issue or pull request, as GitHub's issue events
    record it: the label as it was then, who changed it, and when."""

    id: int
    issue_number: int
    event: Literal["labeled", "unlabeled"]
    actor: User
    label_name: str
    label_color: str
    created_at: float
    app: App | None = None


@dataclass(slots=True)
class Repo:
    id: int
    owner: User
    name: str
    created_at: float
    pushed_at: float
    default_branch: str = "main"
    issues: dict[int, Issue] = field(default_factory=dict)
    labels: dict[str, Label] = field(default_factory=dict)  # by lower-cased name
    refs: dict[str, str] = field(default_factory=dict)  # "refs/heads/main" -> commit sha
    store: ObjectStore = field(default_factory=ObjectStore)
    associations: dict[str, Association] = field(default_factory=dict)
    events: list[IssueEvent] = field(default_factory=list)  # oldest first

    @property
    def full_name(self) -> str:
        return f"{self.owner.login}/{self.name}"


@dataclass(slots=True)
class Token:
    value: str
    user: User | None
    installation: Installation | None
    expires_at: float | None

    def actor(self) -> Actor:
        if self.installation is not None:
            return Actor(self.installation.app.bot, self.installation)
        if self.user is None:
            raise InternalError("a token belongs to a user or to an installation")
        return Actor(self.user)


@dataclass(slots=True)
class Hook:
    id: int
    url: str
    secret: str
    events: tuple[str, ...]
    app: App | None
    created_at: float

    def wants(self, event: str) -> bool:
        return event == "ping" or "*" in self.events or event in self.events


@dataclass(slots=True)
class Delivery:
    """One attempt to deliver a webhook, as the deliveries API reports it."""

    id: int
    guid: str
    hook: Hook
    event: str
    action: str | None
    installation_id: int | None
    repository_id: int | None
    redelivery: bool
    body: bytes
    request_headers: dict[str, str]
    delivered_at: float
    duration: float = 0.0
    status: str = "pending"
    status_code: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


@dataclass(frozen=True, slots=True)
class Happening:
    """Something a webhook announces, captured when it happened."""

    event: Literal["issue_comment", "issues"]
    action: str
    repo: Repo
    issue: Issue
    actor: Actor
    comment: Comment | None = None
    label: Label | None = None
    changes: Mapping[str, Any] | None = None


class World:
    """Everything the stand-in knows, and every change GitHub would allow on it."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.repos: dict[str, Repo] = {}
        self.comments: dict[int, Comment] = {}
        self.apps: dict[int, App] = {}
        self.installations: dict[int, Installation] = {}
        self.tokens: dict[str, Token] = {}
        self.hooks: dict[int, Hook] = {}
        self.deliveries: list[Delivery] = []
        self._ids: dict[str, Iterator[int]] = {
            "user": itertools.count(1001),
            "repo": itertools.count(700_000_001),
            "issue": itertools.count(2_100_000_001),
            "comment": itertools.count(1_900_000_001),
            "label": itertools.count(5_600_000_001),
            "installation": itertools.count(41_000_001),
            "hook": itertools.count(470_000_001),
            "delivery": itertools.count(12_000_000_001),
            "event": itertools.count(15_000_000_001),
        }

    def next_id(self, kind: str) -> int:
        return next(self._ids[kind])

    # -- users and repositories ---------------------------------------------------------

    def add_user(
        self,
        login: str,
        *,
        type: UserType = "User",
        association: Association = "NONE",
        name: str | None = None,
    ) -> User:
        if login in self.users:
            raise GitHubError(422, f"user {login!r} already exists")
        if association not in ASSOCIATIONS:
            raise GitHubError(422, f"association {association!r} is not one of {ASSOCIATIONS}")
        user = User(self.next_id("user"), login, type, name, association)
        self.users[login] = user
        return user

    def user(self, login: str) -> User:
        if login not in self.users:
            raise GitHubError(404, f"no user {login!r}: add it with add_user first")
        return self.users[login]

    def create_repo(self, full_name: str, *, now: float, files: Mapping[str, bytes]) -> Repo:
        owner_login, _, name = full_name.partition("/")
        if not owner_login or not name or "/" in name:
            raise GitHubError(422, f"repository name {full_name!r} is not OWNER/NAME")
        if self.find_repo(full_name) is not None:
            raise GitHubError(422, f"repository {full_name!r} already exists")
        owner = self.users.get(owner_login) or self.add_user(owner_login, association="OWNER")
        repo = Repo(self.next_id("repo"), owner, name, now, now)
        repo.associations[owner.login] = "OWNER"
        for label_name, color, description in DEFAULT_LABELS:
            label = Label(self.next_id("label"), label_name, color, description, True)
            repo.labels[label_name.lower()] = label
        tree = initial_tree(repo.store, files)
        who = Signature(owner.login, owner.email, int(now))
        commit = repo.store.put_commit(Commit(tree, (), who, who, "Initial commit"))
        repo.refs[f"refs/heads/{repo.default_branch}"] = commit
        self.repos[full_name] = repo
        return repo

    def find_repo(self, full_name: str) -> Repo | None:
        """The repository of that name, however its letters are cased (as on GitHub)."""
        found = self.repos.get(full_name)
        if found is not None:
            return found
        wanted = full_name.lower()
        return next((repo for name, repo in self.repos.items() if name.lower() == wanted), None)

    def repo(self, full_name: str) -> Repo:
        found = self.find_repo(full_name)
        if found is None:
            raise not_found("https://docs.github.com/rest/repos/repos#get-a-repository")
        return found

    def association(self, repo: Repo, user: User) -> Association:
        return repo.associations.get(user.login, user.association)

    def permission(self, repo: Repo, user: User) -> Permission:
        """``user``'s base role on ``repo``: its owner and OWNERs admin, members and
        collaborators write, anyone else read (every repository here is public)."""
        association = self.association(repo, user)
        if user is repo.owner or association == "OWNER":
            return "admin"
        return "write" if association in WRITERS else "read"

    def can_see(self, actor: Actor, repo: Repo) -> bool:
        return actor.installation is None or repo.full_name in actor.installation.repos

    # -- issues, comments, labels -------------------------------------------------------

    def issue(self, repo: Repo, number: int) -> Issue:
        if number not in repo.issues:
            raise not_found("https://docs.github.com/rest/issues/issues#get-an-issue")
        return repo.issues[number]

    def create_issue(
        self,
        repo: Repo,
        *,
        title: str,
        body: str | None,
        actor: Actor,
        now: float,
        labels: Sequence[str] = (),
        pull_request: bool = False,
    ) -> tuple[Issue, list[Happening]]:
        if not title.strip():
            raise invalid("Issue", "title")
        check_body("Issue", body)
        number = max(repo.issues, default=0) + 1
        issue = Issue(
            id=self.next_id("issue"),
            number=number,
            title=title,
            body=body,
            user=actor.user,
            created_at=now,
            updated_at=now,
            app=actor.app,
            pull_request=pull_request,
        )
        repo.issues[number] = issue
        if pull_request:  # GitHub announces these as pull_request events, not modelled here
            issue.labels = [self._label(repo, name) for name in dict.fromkeys(labels)]
            return issue, []
        happenings = [Happening("issues", "opened", repo, issue, actor)]
        happenings += self.add_labels(repo, issue, labels, actor=actor, now=now)
        return issue, happenings

    def comment(self, repo: Repo, comment_id: int) -> Comment:
        found = self.comments.get(comment_id)
        if found is None or found.repo != repo.full_name:
            raise not_found("https://docs.github.com/rest/issues/comments#get-an-issue-comment")
        return found

    def add_comment(
        self, repo: Repo, issue: Issue, *, body: str, actor: Actor, now: float
    ) -> tuple[Comment, list[Happening]]:
        if not body.strip():
            raise invalid("IssueComment", "body")
        check_body("IssueComment", body)
        comment = Comment(
            id=self.next_id("comment"),
            repo=repo.full_name,
            issue_number=issue.number,
            user=actor.user,
            body=body,
            created_at=now,
            updated_at=now,
            app=actor.app,
        )
        self.comments[comment.id] = comment
        issue.comments += 1
        issue.updated_at = now
        return comment, [Happening("issue_comment", "created", repo, issue, actor, comment)]

    def edit_comment(
        self, repo: Repo, comment: Comment, *, body: str, actor: Actor, now: float
    ) -> list[Happening]:
        if not body.strip():
            raise invalid("IssueComment", "body")
        check_body("IssueComment", body)
        self._check_may_change(repo, comment, actor)
        before = comment.body
        comment.body = body
        comment.updated_at = now
        issue = repo.issues[comment.issue_number]
        changes = {"body": {"from": before}}
        return [Happening("issue_comment", "edited", repo, issue, actor, comment, None, changes)]

    def delete_comment(self, repo: Repo, comment: Comment, *, actor: Actor) -> list[Happening]:
        self._check_may_change(repo, comment, actor)
        del self.comments[comment.id]
        issue = repo.issues[comment.issue_number]
        issue.comments -= 1
        return [Happening("issue_comment", "deleted", repo, issue, actor, comment)]

    def _check_may_change(self, repo: Repo, comment: Comment, actor: Actor) -> None:
        if actor.user is comment.user or actor.installation is not None:
            return
        if self.association(repo, actor.user) not in WRITERS:
            raise GitHubError(
                403,
                "Must have admin rights to Repository.",
                documentation_url="https://docs.github.com/rest/issues/comments",
            )

    def _label(self, repo: Repo, name: str) -> Label:
        key = name.lower()
        if key not in repo.labels:
            repo.labels[key] = Label(self.next_id("label"), name, DEFAULT_LABEL_COLOR, None, False)
        return repo.labels[key]

    def add_labels(
        self, repo: Repo, issue: Issue, names: Sequence[str], *, actor: Actor, now: float
    ) -> list[Happening]:
        if any(not name.strip() for name in names):
            raise invalid("Label", "name", "invalid")
        happenings: list[Happening] = []
        for name in dict.fromkeys(names):
            label = self._label(repo, name)
            if label in issue.labels:
                continue
            issue.labels.append(label)
            issue.updated_at = now
            self._record_event(repo, issue, "labeled", label, actor=actor, now=now)
            if not issue.pull_request:
                happenings.append(Happening("issues", "labeled", repo, issue, actor, None, label))
        return happenings

    def remove_label(
        self, repo: Repo, issue: Issue, name: str, *, actor: Actor, now: float
    ) -> list[Happening]:
        label = repo.labels.get(name.lower())
        if label is None or label not in issue.labels:
            raise GitHubError(
                404,
                "Label does not exist",
                documentation_url="https://docs.github.com/rest/issues/labels#remove-a-label-from-an-issue",
            )
        issue.labels.remove(label)
        issue.updated_at = now
        self._record_event(repo, issue, "unlabeled", label, actor=actor, now=now)
        if issue.pull_request:
            return []
        return [Happening("issues", "unlabeled", repo, issue, actor, None, label)]

    def _record_event(
        self,
        repo: Repo,
        issue: Issue,
        event: Literal["labeled", "unlabeled"],
        label: Label,
        *,
        actor: Actor,
        now: float,
    ) -> None:
        """Keep an issue event for a label change (on a pull request too, as GitHub does,
        though its webhook is a ``pull_request`` event, not modelled here)."""
        repo.events.append(
            IssueEvent(
                id=self.next_id("event"),
                issue_number=issue.number,
                event=event,
                actor=actor.user,
                label_name=label.name,
                label_color=label.color,
                created_at=now,
                app=actor.app,
            )
        )

    # -- apps, installations, tokens, hooks ----------------------------------------------

    def register_app(
        self,
        app_id: int,
        public_key_pem: bytes,
        *,
        slug: str,
        name: str,
        owner: User,
        now: float,
        token_lifetime_s: float,
    ) -> App:
        if app_id in self.apps:
            raise GitHubError(422, f"app {app_id} is already registered")
        bot = self.add_user(f"{slug}[bot]", type="Bot", association="NONE")
        client_id = f"Iv23li{secrets.token_hex(7)}"
        app = App(app_id, slug, name, client_id, owner, public_key_pem, bot, now, token_lifetime_s)
        self.apps[app_id] = app
        return app

    def install(self, app: App, repo: Repo, *, now: float) -> Installation:
        for installation in self.installations.values():
            if installation.app is app and installation.account is repo.owner:
                installation.repos.add(repo.full_name)
                return installation
        installation = Installation(
            self.next_id("installation"), app, repo.owner, {repo.full_name}, now
        )
        self.installations[installation.id] = installation
        return installation

    def installation_for(self, app: App, repo: Repo) -> Installation | None:
        for installation in self.installations.values():
            if installation.app is app and repo.full_name in installation.repos:
                return installation
        return None

    def issue_token(
        self,
        *,
        user: User | None = None,
        installation: Installation | None = None,
        now: float,
        lifetime_s: float | None,
    ) -> Token:
        prefix = "ghs_" if installation is not None else "ghp_"
        value = prefix + secrets.token_urlsafe(27).replace("-", "A").replace("_", "z")[:36]
        expires = None if lifetime_s is None else now + lifetime_s
        token = Token(value, user, installation, expires)
        self.tokens[value] = token
        return token

    def token(self, value: str, *, now: float) -> Token | None:
        token = self.tokens.get(value)
        if token is None or (token.expires_at is not None and now >= token.expires_at):
            return None
        return token

    def add_hook(
        self, url: str, secret: str, *, events: tuple[str, ...], app: App | None, now: float
    ) -> Hook:
        hook = Hook(self.next_id("hook"), url, secret, events, app, now)
        self.hooks[hook.id] = hook
        return hook
