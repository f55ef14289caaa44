"""The facts committed to the repository (Git Data API, or a local checkout) verify;
the committer never rewinds, forks or removes a log, and never hammers GitHub."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from githubkit import GitHub, TokenAuthStrategy
from githubkit.cache import MemCacheStrategy

from agora.bridge.commit import FactsCommitter, FactsDiverged
from agora.bridge.config import FactsCommit
from agora.bridge.github import GitHubUnavailable, GitHubWriter
from agora.bridge.standin import Fault, GitHubStandIn
from agora.cli.workspace import AgentPlan
from agora.core.errors import AgoraError, ConfigError
from agora.core.factlog import FactLog, FactsSnapshot
from agora.core.keys import KeyRegistry, SigningKey
from agora.core.signing import sign_fact
from agora.core.verify import verify_directory
from tests.bridge_harness import BOT, HUMAN, REPO, github_loop
from tests.factories import make_act

SYNTH = {"synth-agent": AgentPlan("chatty", ("build-coord",))}


def _write(files: dict[str, bytes], into: Path) -> Path:
    for relative, data in files.items():
        path = into / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return into


async def test_facts_are_committed_through_the_git_data_api_and_verify(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    # committed only when the test says so: the committer's own round (once a second,
    # when due) could otherwise take the second comment's facts first
    rarely = {"every_facts": 1_000_000, "every_s": 3600}
    settings = {"facts": {"commit": "api", "repo": REPO, **rarely}}
    async with github_loop(tmp_path / "ws", components, agents=SYNTH, bridge=settings) as loop:
        loop.github.comment(REPO, loop.issue, "first", by=HUMAN)
        await loop.delivered()
        committer = loop.bridge.committer
        assert committer is not None
        first = await committer.commit()
        loop.github.comment(REPO, loop.issue, "second", by=HUMAN)
        await loop.delivered()
        second = await committer.commit()
        assert await committer.commit() is None  # nothing new: no empty commit
        files = loop.github.files_at(REPO, "main")
        registry = loop.host.session.registry
        head = loop.github.head(REPO)
    assert first and second and head == second
    facts = {k.removeprefix("facts/"): v for k, v in files.items() if k.startswith("facts/")}
    assert "log.jsonl" in facts and "coordination.yaml" in facts
    assert not any(name in (".lock", ".position") for name in facts)
    assert "README.md" in files  # committed on top of the branch, not instead of it
    report = verify_directory(_write(facts, tmp_path / "checked"), registry)
    assert report.ok, report.problem
    assert report.entries == facts["log.jsonl"].count(b"\n")


async def test_facts_can_be_committed_into_a_local_checkout(
    tmp_path: Path, components: dict[str, Path]
) -> None:
    checkout = _git_checkout(tmp_path / "repo")
    settings = {"facts": {"commit": "local", "checkout": str(checkout)}}
    async with github_loop(tmp_path / "ws", components, agents=SYNTH, bridge=settings) as loop:
        loop.github.comment(REPO, loop.issue, "hello", by=HUMAN)
        await loop.delivered()
        assert loop.bridge.committer is not None
        sha = await loop.bridge.committer.commit()
        registry = loop.host.session.registry
    log = _git(checkout, "log", "--format=%H %s")
    assert log.startswith(f"{sha} agora: facts up to ")
    assert verify_directory(checkout / "facts", registry).ok


def _git(checkout: Path, *arguments: str) -> str:
    return subprocess.run(
        ["git", "-C", str(checkout), *arguments], capture_output=True, text=True, check=True
    ).stdout


def _git_checkout(path: Path) -> Path:
    path.mkdir()
    _git(path, "init", "--quiet", "-b", "main")
    _git(path, "config", "user.email", "agora@example.invalid")
    _git(path, "config", "user.name", "agora")
    return path


def test_a_commit_is_due_after_n_facts_or_after_the_interval() -> None:
    class Source:
        size = 0
        failure: str | None = None

        def snapshot(self) -> FactsSnapshot:
            raise AssertionError("not taken")

    now = [0.0]
    source = Source()
    committer = FactsCommitter(
        settings=FactsCommit("api", REPO, "main", "facts", 60.0, 500, None),
        source=source,
        client=None,
        writer=None,
        clock=lambda: now[0],
    )
    assert not committer.due()  # nothing recorded
    source.size = 499
    assert not committer.due()  # fewer than every_facts, and the interval has not passed
    source.size = 500
    assert committer.due()
    source.size = 1
    now[0] = 59.0
    assert not committer.due()
    now[0] = 60.0
    assert committer.due()
    source.failure = "the fact log could not be made durable"
    assert not committer.due()  # a stopped recorder's facts may not be on the disk


# -- the committer alone, against the stand-in ---------------------------------------------

OpenLog = Callable[[str], FactLog]


class LogSource:
    """A facts directory being written, offered as the recorder offers it."""

    failure: str | None = None

    def __init__(self, log: FactLog) -> None:
        self.log = log

    @property
    def size(self) -> int:
        return self.log.size

    def snapshot(self) -> FactsSnapshot:
        return self.log.snapshot()


@pytest.fixture
def open_log(tmp_path: Path, keys: dict[str, SigningKey]) -> Iterator[OpenLog]:
    opened: list[FactLog] = []

    def open_(name: str) -> FactLog:
        log = FactLog.open(tmp_path / name, signer=keys["host"])
        opened.append(log)
        return log

    yield open_
    for log in opened:
        with contextlib.suppress(Exception):
            log.close()


def grow(log: FactLog, keys: dict[str, SigningKey], count: int) -> FactLog:
    for n in range(count):
        act = make_act(payload=f"fact {log.size + n}")
        log.append(sign_fact(act, keys["synth-agent"]), act)
    return log


@pytest.fixture
async def standin() -> AsyncIterator[GitHubStandIn]:
    github = GitHubStandIn()
    await github.start()
    github.add_user(BOT, type="Bot", association="COLLABORATOR")
    try:
        yield github
    finally:
        await github.stop()


def api_committer(
    github: GitHubStandIn, log: FactLog, *, branch: str = "main", path: str = "facts"
) -> FactsCommitter:
    client = GitHub(
        TokenAuthStrategy(github.issue_token(BOT)),
        base_url=github.base_url,
        auto_retry=False,
        http_cache=False,
        cache_strategy=MemCacheStrategy(),
    )
    return FactsCommitter(
        settings=FactsCommit("api", REPO, branch, path, 60.0, 1, None),
        source=LogSource(log),
        client=client,
        writer=GitHubWriter(client, per_minute=80, per_hour=500),
    )


def committed_facts(github: GitHubStandIn, into: Path) -> Path:
    files = github.files_at(REPO, "main")
    facts = {k.removeprefix("facts/"): v for k, v in files.items() if k.startswith("facts/")}
    return _write(facts, into)


def requests(github: GitHubStandIn, method: str, path: str) -> int:
    return sum(1 for r in github.request_log if r.method == method and path in r.path)


@pytest.mark.parametrize("other_size", [3, 8])
async def test_a_log_that_does_not_extend_the_committed_one_is_refused_writing_nothing(
    standin: GitHubStandIn, open_log: OpenLog, keys: dict[str, SigningKey], other_size: int
) -> None:
    standin.create_repo(REPO)
    assert await api_committer(standin, grow(open_log("first"), keys, 5)).commit()
    head, before = standin.head(REPO), len(standin.request_log)
    other = api_committer(standin, grow(open_log("other"), keys, other_size))  # a reset
    with pytest.raises(FactsDiverged, match="does not extend the committed one"):
        await other.commit()
    assert standin.head(REPO) == head  # neither rewound nor forked
    assert {r.method for r in standin.request_log[before:]} == {"GET"}  # nothing written


async def test_a_log_that_grew_is_committed_on_top_and_verifies(
    standin: GitHubStandIn,
    open_log: OpenLog,
    keys: dict[str, SigningKey],
    registry: KeyRegistry,
    tmp_path: Path,
) -> None:
    standin.create_repo(REPO)
    log = grow(open_log("facts"), keys, 5)
    committer = api_committer(standin, log)
    first = await committer.commit()
    second = await api_committer(standin, grow(log, keys, 4)).commit()  # after a restart
    assert first and second and standin.head(REPO) == second
    report = verify_directory(committed_facts(standin, tmp_path / "checked"), registry)
    assert report.ok, report.problem
    assert report.entries == 9


async def test_files_the_facts_directory_no_longer_holds_leave_the_branch(
    standin: GitHubStandIn,
    open_log: OpenLog,
    keys: dict[str, SigningKey],
    registry: KeyRegistry,
    tmp_path: Path,
) -> None:
    standin.create_repo(REPO, files={"README.md": b"# repo\n", "facts/old/stale.yaml": b"x\n"})
    assert await api_committer(standin, grow(open_log("facts"), keys, 3)).commit()
    files = standin.files_at(REPO, "main")
    assert "facts/old/stale.yaml" not in files
    assert "README.md" in files  # what lies outside the facts path stays
    assert verify_directory(committed_facts(standin, tmp_path / "checked"), registry).ok


async def test_two_commits_at_once_make_one(
    standin: GitHubStandIn, open_log: OpenLog, keys: dict[str, SigningKey]
) -> None:
    standin.create_repo(REPO)
    initial = standin.head(REPO)
    committer = api_committer(standin, grow(open_log("facts"), keys, 4))
    made = await asyncio.gather(committer.commit(), committer.commit())
    assert sorted(made, key=bool) == [None, standin.head(REPO)]
    assert standin.world.repo(REPO).store.commit(standin.head(REPO)).parents == (initial,)


async def test_a_restart_makes_no_empty_commit(
    standin: GitHubStandIn, open_log: OpenLog, keys: dict[str, SigningKey]
) -> None:
    standin.create_repo(REPO)
    log = grow(open_log("facts"), keys, 4)
    sha = await api_committer(standin, log).commit()
    again = api_committer(standin, log)  # a new process: it knows nothing of the first
    assert await again.commit() is None
    assert standin.head(REPO) == sha
    assert again.commits == []


async def test_a_branch_that_moved_is_committed_on_again(
    standin: GitHubStandIn, open_log: OpenLog, keys: dict[str, SigningKey]
) -> None:
    standin.create_repo(REPO)
    standin.inject(Fault(422, "Update is not a fast forward", method="PATCH", path="/git/refs/"))
    committer = api_committer(standin, grow(open_log("facts"), keys, 2))
    assert await committer.commit() == standin.head(REPO)
    assert requests(standin, "PATCH", "/git/refs/") == 2


async def test_any_other_422_is_final(
    standin: GitHubStandIn, open_log: OpenLog, keys: dict[str, SigningKey]
) -> None:
    standin.create_repo(REPO)
    head = standin.head(REPO)
    standin.inject(Fault(422, "Validation Failed", method="POST", path="/git/trees", times=10))
    committer = api_committer(standin, grow(open_log("facts"), keys, 2))
    with pytest.raises(GitHubUnavailable, match="422"):
        await committer.commit()
    assert requests(standin, "POST", "/git/trees") == 1
    assert standin.head(REPO) == head


async def test_after_a_failure_the_committer_waits_before_trying_again(
    standin: GitHubStandIn, open_log: OpenLog, keys: dict[str, SigningKey]
) -> None:
    standin.create_repo(REPO)
    committer = api_committer(standin, grow(open_log("facts"), keys, 1), branch="no-such-branch")
    task = asyncio.create_task(committer.run())
    await asyncio.sleep(3.5)  # three rounds of the committer's loop
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert len(standin.request_log) == 1  # one 404, then a minute's wait
    assert not committer.due()


# -- into a local checkout -----------------------------------------------------------------


def local_committer(
    checkout: Path, log: FactLog, *, path: str = "facts", facts_dir: Path | None = None
) -> FactsCommitter:
    return FactsCommitter(
        settings=FactsCommit("local", "", "main", path, 60.0, 1, checkout),
        source=LogSource(log),
        client=None,
        writer=None,
        facts_dir=facts_dir,
    )


@pytest.mark.parametrize(
    ("facts", "path"), [("facts", "facts"), ("facts", "facts/copy"), ("data/facts", "data")]
)
def test_a_local_commit_overlapping_the_live_facts_directory_is_refused_at_start(
    tmp_path: Path, open_log: OpenLog, facts: str, path: str
) -> None:
    root = _git_checkout(tmp_path / "repo")
    with pytest.raises(ConfigError, match=r"bridge\.facts\.checkout and bridge\.facts\.path"):
        local_committer(root, open_log("any"), path=path, facts_dir=root / facts)


@pytest.mark.parametrize("path", [".", "../elsewhere", ".git/facts"])
def test_a_local_commit_outside_the_checkout_is_refused_at_start(
    tmp_path: Path, open_log: OpenLog, path: str
) -> None:
    root = _git_checkout(tmp_path / "repo")
    with pytest.raises(ConfigError, match=r"bridge\.facts\.path: expected a folder inside"):
        local_committer(root, open_log("any"), path=path)


async def test_a_local_commit_never_removes_a_live_facts_directory(
    tmp_path: Path, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    root = _git_checkout(tmp_path / "repo")
    with FactLog.open(root / "facts", signer=keys["host"]) as log:
        grow(log, keys, 3)
        committer = local_committer(root, log)  # facts_dir unknown: caught when committing
        with pytest.raises(AgoraError, match="live facts directory"):
            await committer.commit()
        assert (root / "facts" / ".lock").exists()
        grow(log, keys, 3)
        log.sync()
    assert (root / "facts" / "log.jsonl").read_bytes().count(b"\n") == 6
    assert verify_directory(root / "facts", registry).ok


async def test_a_local_commit_puts_exactly_the_snapshot_and_skips_an_unchanged_tree(
    tmp_path: Path, open_log: OpenLog, keys: dict[str, SigningKey], registry: KeyRegistry
) -> None:
    checkout = _git_checkout(tmp_path / "repo")
    (checkout / "facts").mkdir()
    (checkout / "facts" / "stale.yaml").write_text("old: true\n")
    log = grow(open_log("facts"), keys, 3)
    sha = await local_committer(checkout, log).commit()
    assert not (checkout / "facts" / "stale.yaml").exists()
    assert verify_directory(checkout / "facts", registry).ok
    assert await local_committer(checkout, log).commit() is None  # a restart: nothing new
    assert _git(checkout, "log", "--format=%H").split() == [sha]
    assert not [p for p in checkout.iterdir() if p.name.startswith(".facts.")]  # no leftovers
