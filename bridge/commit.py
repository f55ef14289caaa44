"""Committing the facts directory to the repository, in batches.

The recorder hands over a consistent snapshot (it checkpoints first, so the newest
checkpoint covers the whole log, as ``agora verify`` requires). A batch is committed
when ``facts.every_facts`` new facts have been recorded or ``facts.every_s`` has passed
with at least one; the commit message names the checkpoint (origin, size, root), so the
verify workflow on GitHub checks exactly what it says. A snapshot that changes nothing
on the branch (after a restart, say) makes no commit. After a failure the next attempt
waits, from a minute doubling to an hour: a branch that does not exist or a token that
was revoked costs GitHub one request an hour, not one a second.

- ``commit: api``: through GitHub's Git Data API. First the branch's facts are read: its
  newest checkpoint note must be, byte for byte, one of the local ones, and its log a
  prefix of the local log, or nothing is written (:class:`FactsDiverged`: committing
  would rewind or fork the committed log, and the result would fail verify). Then only
  the files whose blob changed are uploaded, files under the facts path that the local
  directory no longer holds are deleted, one tree on top of the branch's tree, one
  commit, and a fast-forward of the branch (if someone else moved it meanwhile, the
  whole round is made again on top; any other refusal is final). One commit at a time
  per committer.
- ``commit: local``: into a local git checkout, with ``git commit`` of the facts path
  only. The snapshot is written into a new folder beside the target and swapped in; a
  target that is, holds or lies inside a live facts directory (one with a lock file) is
  refused, so the committer can never remove the log the recorder is writing.

Only the facts directory's files are committed: never its lock or the recorder's
position (machine state, listed in its ``.gitignore``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from githubkit import GitHub

from agora.bridge.config import FactsCommit, check_local_target
from agora.bridge.github import GitHubUnavailable, GitHubWriter
from agora.core.errors import AgoraError
from agora.core.factlog import CHECKPOINT_DIR, CHECKPOINT_SUFFIX, LOCK_FILE, LOG_FILE, FactsSnapshot

log = logging.getLogger(__name__)

UNPROCESSABLE: Final = 422
NOT_FAST_FORWARD: Final = "not a fast forward"  # GitHub's 422 when the branch moved
MAX_RACES: Final = 5
RETRY_FIRST_S: Final = 60.0
RETRY_MAX_S: Final = 3600.0
FILE_MODE: Final = "100644"


def commit_message(snapshot: FactsSnapshot) -> str:
    checkpoint = snapshot.checkpoint
    root = base64.b64encode(checkpoint.root).decode()
    return (
        f"agora: facts up to {checkpoint.size}\n\n"
        f"Checkpoint {checkpoint.origin} size {checkpoint.size} root {root}\n"
    )


class FactsSource(Protocol):
    """Where the facts come from: the recorder of the host running beside the bridge."""

    @property
    def size(self) -> int: ...

    @property
    def failure(self) -> str | None:
        """Why the source stopped for good (then nothing more is committed), or None."""
        ...

    def snapshot(self) -> FactsSnapshot: ...


class FactsDiverged(AgoraError):
    """The branch holds facts the local log does not extend: committing would rewind or
    fork the committed log. Nothing was written."""


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file under the facts path on the branch: its blob id, size and mode."""

    sha: str
    size: int
    mode: str = FILE_MODE


def git_blob_sha(data: bytes) -> str:
    """The id git gives a file's content (SHA-1 of ``blob <size>\\0<content>``)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


def check_extends(remote: Mapping[str, RemoteFile], snapshot: FactsSnapshot, where: str) -> None:
    """Refuse unless the local facts extend those on the branch (``remote``, by path
    inside the facts directory): the branch's newest checkpoint note is byte for byte
    the local note of that name, and the branch's log is a prefix of the local log."""
    notes = sorted(
        path
        for path in remote
        if path.startswith(f"{CHECKPOINT_DIR}/") and path.endswith(CHECKPOINT_SUFFIX)
    )
    committed_log = remote.get(LOG_FILE)
    if not notes and committed_log is None:
        return  # nothing committed yet
    local_log = snapshot.files.get(LOG_FILE, b"")
    if not notes:
        raise FactsDiverged(f"{where} holds a {LOG_FILE} but no checkpoint; nothing committed")
    newest = notes[-1]
    local_note = snapshot.files.get(newest)
    if local_note is None or git_blob_sha(local_note) != remote[newest].sha:
        raise FactsDiverged(
            f"{where}: its newest checkpoint {newest} is "
            f"{'not in' if local_note is None else 'not the one in'} the local facts "
            "directory: the local log does not extend the committed one (a reset or another "
            "facts directory?); nothing committed"
        )
    if committed_log is not None and (
        committed_log.size > len(local_log)
        or git_blob_sha(local_log[: committed_log.size]) != committed_log.sha
    ):
        raise FactsDiverged(
            f"{where}: its {LOG_FILE} ({committed_log.size} bytes) is not a prefix of the "
            f"local one ({len(local_log)} bytes); nothing committed"
        )


def tree_changes(
    remote: Mapping[str, RemoteFile], files: Mapping[str, bytes], prefix: str
) -> tuple[dict[str, bytes], list[dict[str, str | None]]]:
    """What a commit must change under ``prefix``: the files whose blob differs (to
    upload), and the deletions of files the branch has and the snapshot has not."""
    changed = {
        relative: data
        for relative, data in sorted(files.items())
        if (known := remote.get(relative)) is None or known.sha != git_blob_sha(data)
    }
    deletions: list[dict[str, str | None]] = [
        {"path": f"{prefix}/{relative}", "mode": remote[relative].mode, "type": "blob", "sha": None}
        for relative in sorted(set(remote) - set(files))
    ]
    return changed, deletions


class FactsCommitter:
    """Commits the facts in batches; :meth:`run` checks every second whether one is due.

    ``facts_dir`` is the facts directory the recorder writes: a local commit into it is
    refused here, before anything runs.
    """

    def __init__(
        self,
        *,
        settings: FactsCommit,
        source: FactsSource,
        client: GitHub[Any] | None,
        writer: GitHubWriter | None,
        clock: Callable[[], float] = time.monotonic,
        facts_dir: Path | None = None,
    ) -> None:
        check_local_target(settings, facts_dir)
        self._settings = settings
        self._source = source
        self._gh = client
        self._writer = writer
        self._clock = clock
        self._committed_size = -1
        self._last_commit = clock()
        self._lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self.commits: list[str] = []

    def due(self) -> bool:
        if self._source.failure is not None:
            return False  # the recorder stopped: what it holds may not be on the disk
        if self._clock() < self._retry_at:
            return False  # backing off after a failure
        new = self._source.size - max(self._committed_size, 0)
        if new <= 0:
            return False
        return new >= self._settings.every_facts or (
            self._clock() - self._last_commit >= self._settings.every_s
        )

    async def commit(self) -> str | None:
        """Commit the current snapshot if it grew; the new commit's id, or None (nothing
        new, or the branch holds these very files already)."""
        async with self._lock:
            snapshot = self._source.snapshot()
            if snapshot.checkpoint.size == self._committed_size:
                return None
            if self._settings.mode == "api":
                sha = await self._commit_through_api(snapshot)
            elif self._settings.mode == "local":
                sha = await asyncio.to_thread(self._commit_locally, snapshot)
            else:
                return None
            self._committed_size = snapshot.checkpoint.size
            self._last_commit = self._clock()
            if sha is None:
                log.info("facts up to %d are committed already", snapshot.checkpoint.size)
                return None
            self.commits.append(sha)
            log.info("committed facts up to %d as %s", snapshot.checkpoint.size, sha[:12])
            return sha

    async def run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if not self.due():
                continue
            try:
                await self.commit()
            except Exception as exc:  # the committer outlives any failure
                self._failed(exc)
            else:
                self._failures = 0

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        delay = min(RETRY_FIRST_S * 2.0 ** (self._failures - 1), RETRY_MAX_S)
        self._retry_at = self._clock() + delay
        if isinstance(exc, AgoraError):
            log.error("facts not committed: %s; trying again in %.0f s", exc, delay)
        else:
            log.error("facts not committed; trying again in %.0f s", delay, exc_info=exc)

    # -- through the Git Data API -------------------------------------------------------

    async def _commit_through_api(self, snapshot: FactsSnapshot) -> str | None:
        uploaded: set[str] = set()  # blobs already in the repository, across rounds
        for _ in range(MAX_RACES):
            try:
                return await self._one_commit(snapshot, uploaded)
            except GitHubUnavailable as exc:
                if not branch_moved(exc):
                    raise
                log.warning("the branch moved while committing facts; committing again on top")
        raise AgoraError(f"the branch {self._settings.branch!r} kept moving; facts not committed")

    async def _one_commit(self, snapshot: FactsSnapshot, uploaded: set[str]) -> str | None:
        gh, writer, settings = self._api()
        owner, name = settings.repo.split("/", 1)
        head = (
            await writer.read(
                lambda: gh.rest.git.async_get_ref(owner, name, f"heads/{settings.branch}")
            )
        ).parsed_data.object_.sha
        base = (
            await writer.read(lambda: gh.rest.git.async_get_commit(owner, name, head))
        ).parsed_data.tree.sha
        remote = await self._remote_facts(owner, name, base)
        check_extends(remote, snapshot, f"{settings.repo}@{settings.branch}:{settings.path}")
        changed, entries = tree_changes(remote, snapshot.files, settings.path)
        if not changed and not entries:
            return None  # the branch holds these very files: no empty commit
        for relative, data in changed.items():
            blob = await self._upload(owner, name, data, uploaded)
            path = f"{settings.path}/{relative}"
            entries.append({"path": path, "mode": FILE_MODE, "type": "blob", "sha": blob})
        tree = await writer.write(
            _call(
                gh.rest.git.async_create_tree,
                owner,
                name,
                data={"base_tree": base, "tree": entries},
            )
        )
        commit = await writer.write(
            _call(
                gh.rest.git.async_create_commit,
                owner,
                name,
                data={
                    "message": commit_message(snapshot),
                    "tree": tree.parsed_data.sha,
                    "parents": [head],
                },
            )
        )
        sha: str = commit.parsed_data.sha
        await writer.write(
            _call(
                gh.rest.git.async_update_ref,
                owner,
                name,
                f"heads/{settings.branch}",
                data={"sha": sha, "force": False},
            )
        )
        return sha

    async def _upload(self, owner: str, name: str, data: bytes, uploaded: set[str]) -> str:
        known = git_blob_sha(data)
        if known in uploaded:
            return known
        gh, writer, _ = self._api()
        blob = await writer.write(
            _call(
                gh.rest.git.async_create_blob,
                owner,
                name,
                data={"content": base64.b64encode(data).decode(), "encoding": "base64"},
            )
        )
        sha: str = blob.parsed_data.sha
        uploaded.add(sha)
        return sha

    async def _remote_facts(self, owner: str, name: str, base: str) -> dict[str, RemoteFile]:
        """The files under the facts path on the branch, by path inside it: the tree is
        walked down to that folder, which alone is listed whole."""
        gh, writer, settings = self._api()
        tree = base
        for part in settings.path.split("/"):
            listing = await writer.read(_call(gh.rest.git.async_get_tree, owner, name, tree))
            found = [e for e in listing.parsed_data.tree if e.path == part and e.type == "tree"]
            if not found:
                return {}
            tree = found[0].sha or ""
        listing = await writer.read(
            _call(gh.rest.git.async_get_tree, owner, name, tree, recursive="1")
        )
        if listing.parsed_data.truncated:
            raise AgoraError(
                f"GitHub listed {settings.path} on {settings.repo}@{settings.branch} only in "
                "part (a truncated tree); facts not committed"
            )
        return {
            item.path: RemoteFile(item.sha, item.size or 0, item.mode or FILE_MODE)
            for item in listing.parsed_data.tree
            if item.type == "blob" and item.path and item.sha
        }

    def _api(self) -> tuple[GitHub[Any], GitHubWriter, FactsCommit]:
        if self._gh is None or self._writer is None:
            raise AgoraError("facts.commit is api, but the bridge has no GitHub client")
        return self._gh, self._writer, self._settings

    # -- into a local checkout ----------------------------------------------------------

    def _commit_locally(self, snapshot: FactsSnapshot) -> str | None:
        checkout = self._settings.checkout
        if checkout is None or not (checkout / ".git").exists():
            raise AgoraError(f"facts.checkout {checkout} is not a git checkout")
        check_local_target(self._settings, None)
        target = checkout.resolve() / self._settings.path
        refuse_live_directory(target, checkout.resolve())
        replace_directory(target, snapshot.files)
        path = self._settings.path
        _git(checkout, "add", "--all", "--", path)
        if not _git(checkout, "status", "--porcelain", "--untracked-files=no", "--", path):
            return None  # nothing changed: no empty commit
        _git(checkout, "commit", "--quiet", "-m", commit_message(snapshot), "--", path)
        return _git(checkout, "rev-parse", "HEAD").strip()


def branch_moved(exc: GitHubUnavailable) -> bool:
    """Whether GitHub refused a ref update because the branch moved (a genuine
    non-fast-forward), not for any other reason it answers 422."""
    return exc.status == UNPROCESSABLE and NOT_FAST_FORWARD in exc.reason.lower()


def refuse_live_directory(target: Path, checkout: Path) -> None:
    """Refuse a target that is, holds or lies inside a live facts directory (one with a
    lock file: a snapshot never holds one)."""
    above = [target, *(p for p in target.parents if p == checkout or checkout in p.parents)]
    below = target.rglob(LOCK_FILE) if target.is_dir() else iter(())
    live = next((p / LOCK_FILE for p in above if (p / LOCK_FILE).exists()), None) or next(
        below, None
    )
    if live is not None:
        raise AgoraError(
            f"facts.checkout/facts.path {target} overlaps a live facts directory ({live} "
            "exists); nothing committed, nothing removed"
        )


def replace_directory(target: Path, files: Mapping[str, bytes]) -> None:
    """Put exactly ``files`` at ``target``: written into a new folder beside it, then
    swapped in; the old folder is removed only once the new one is in its place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".new", dir=target.parent))
    old = fresh.with_suffix(".old")
    try:
        fresh.chmod(0o755)
        for relative, data in files.items():
            path = fresh / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if target.exists():
            target.rename(old)
        try:
            fresh.rename(target)
        except OSError:
            if old.exists():
                old.rename(target)
            raise
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(old)


def _git(checkout: Path, *arguments: str) -> str:
    git = shutil.which("git")
    if git is None:
        raise AgoraError("facts.commit is local, but git is not installed")
    result = subprocess.run(  # noqa: S603 - fixed program, arguments from our own config
        [git, "-C", str(checkout), *arguments], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AgoraError(f"git {arguments[0]} failed in {checkout}: {result.stderr.strip()[:500]}")
    return result.stdout


def _call(
    function: Callable[..., Awaitable[Any]], *arguments: Any, **keywords: Any
) -> Callable[[], Awaitable[Any]]:
    return lambda: function(*arguments, **keywords)
