"""Committing the facts directory to the repository, in batches.

The recorder hands over a consistent snapshot (it checkpoints first, so the newest
checkpoint covers the whole log, as ``agora verify`` requires). A batch is committed
when ``facts.every_facts`` new facts have been recorded or ``facts.every_s`` has passed
with at least one; the commit message names the checkpoint (origin, size, root), so the
verify workflow on GitHub checks exactly what it says.

- ``commit: api``: through GitHub's Git Data API: only the files whose blob changed are
  uploaded, then one tree on top of the branch's tree, one commit, and a fast-forward of
  the branch (if someone else moved it meanwhile, the commit is made again on top);
- ``commit: local``: into a local git checkout, with ``git commit``.

Only the facts directory's files are committed: never its lock or the recorder's
position (machine state, listed in its ``.gitignore``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, Protocol

from githubkit import GitHub

from agora.bridge.config import FactsCommit
from agora.bridge.github import GitHubUnavailable, GitHubWriter
from agora.core.errors import AgoraError
from agora.core.factlog import FactsSnapshot

log = logging.getLogger(__name__)

UNPROCESSABLE: Final = 422
MAX_RACES: Final = 5


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


def git_blob_sha(data: bytes) -> str:
    """The id git gives a file's content (SHA-1 of ``blob <size>\\0<content>``)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


class FactsCommitter:
    """Commits the facts in batches; :meth:`run` checks every second whether one is due."""

    def __init__(
        self,
        *,
        settings: FactsCommit,
        source: FactsSource,
        client: GitHub[Any] | None,
        writer: GitHubWriter | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._source = source
        self._gh = client
        self._writer = writer
        self._clock = clock
        self._committed_size = -1
        self._last_commit = clock()
        self.commits: list[str] = []

    def due(self) -> bool:
        if self._source.failure is not None:
            return False  # the recorder stopped: what it holds may not be on the disk
        new = self._source.size - max(self._committed_size, 0)
        if new <= 0:
            return False
        return new >= self._settings.every_facts or (
            self._clock() - self._last_commit >= self._settings.every_s
        )

    async def commit(self) -> str | None:
        """Commit the current snapshot if it grew; the new commit's id, or None."""
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
            except Exception:
                log.exception("facts not committed; trying again with the next batch")

    # -- through the Git Data API -------------------------------------------------------

    async def _commit_through_api(self, snapshot: FactsSnapshot) -> str:
        for _ in range(MAX_RACES):
            try:
                return await self._one_commit(snapshot)
            except GitHubUnavailable as exc:
                if exc.status != UNPROCESSABLE:
                    raise
                log.warning("the branch moved while committing facts; committing again on top")
        raise AgoraError(f"the branch {self._settings.branch!r} kept moving; facts not committed")

    async def _one_commit(self, snapshot: FactsSnapshot) -> str:
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
        existing = await self._existing_blobs(owner, name, base)
        entries: list[dict[str, str]] = []
        for relative, data in sorted(snapshot.files.items()):
            path = f"{settings.path}/{relative}"
            if existing.get(path) == git_blob_sha(data):
                continue
            blob = await writer.write(
                _call(
                    gh.rest.git.async_create_blob,
                    owner,
                    name,
                    data={
                        "content": base64.b64encode(data).decode(),
                        "encoding": "base64",
                    },
                )
            )
            entries.append(
                {"path": path, "mode": "100644", "type": "blob", "sha": blob.parsed_data.sha}
            )
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

    async def _existing_blobs(self, owner: str, name: str, tree: str) -> dict[str, str]:
        gh, writer, _ = self._api()
        response = await writer.read(
            lambda: gh.rest.git.async_get_tree(owner, name, tree, recursive="1")
        )
        return {
            item.path or "": item.sha or ""
            for item in response.parsed_data.tree
            if item.type == "blob"
        }

    def _api(self) -> tuple[GitHub[Any], GitHubWriter, FactsCommit]:
        if self._gh is None or self._writer is None:
            raise AgoraError("facts.commit is api, but the bridge has no GitHub client")
        return self._gh, self._writer, self._settings

    # -- into a local checkout ----------------------------------------------------------

    def _commit_locally(self, snapshot: FactsSnapshot) -> str:
        checkout = self._settings.checkout
        if checkout is None or not (checkout / ".git").exists():
            raise AgoraError(f"facts.checkout {checkout} is not a git checkout")
        target = checkout / self._settings.path
        if target.exists():
            shutil.rmtree(target)
        for relative, data in snapshot.files.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        _git(checkout, "add", "--all", "--", self._settings.path)
        _git(checkout, "commit", "--quiet", "--allow-empty", "-m", commit_message(snapshot))
        return _git(checkout, "rev-parse", "HEAD").strip()


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
