"""Offline verification of a facts directory: every check ``agora verify`` makes.

:func:`check_facts` is pure (bytes in, a :class:`Report` out); :func:`verify_directory`
only reads the files first. The checks, in order, stop at the first problem:

* every log line is ``{"index": N, "envelope": ...}`` with N = 0, 1, 2, ...;
* every envelope's signature verifies against the key registry (keyid is only a hint);
* an act is signed by its own sender, and that sender is granted the act's channel;
* events are signed by a host or bridge identity;
* every fact id is unique, and every reply or event points at an earlier fact;
* every checkpoint is signed by a host or bridge key, names one origin, and its root is
  the RFC 6962 root of the log at its size; each is consistent with the one before it
  (checked with an RFC 9162 consistency proof), and the newest covers the whole log;
* ``coordination.yaml`` is exactly the view the log produces.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agora.core.checkpoint import (
    CHECKPOINT_SIGNER_ROLES,
    Checkpoint,
    SignedCheckpoint,
    open_checkpoint,
)
from agora.core.envelope import Act
from agora.core.errors import AgoraError
from agora.core.factlog import (
    CHECKPOINT_DIR,
    CHECKPOINT_SUFFIX,
    LOG_FILE,
    VIEW_FILE,
    checkpoint_name,
    envelope_of,
    log_lines,
)
from agora.core.keys import KeyRegistry
from agora.core.merkle import Frontier, consistency_proof, leaf_hash, verify_consistency
from agora.core.rivet import VIEW_HEADER, artifact
from agora.core.signing import Verified, verify_parsed


@dataclass(frozen=True, slots=True)
class Problem:
    """The first thing found wrong: where (entry index, or a file) and what."""

    where: str
    message: str
    index: int | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(slots=True)
class Report:
    entries: int = 0
    acts: int = 0
    events: int = 0
    checkpoints: int = 0
    size: int = 0
    root: str = ""
    origin: str = ""
    problem: Problem | None = None
    signers: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "acts": self.acts,
            "events": self.events,
            "checkpoints": self.checkpoints,
            "tree_size": self.size,
            "root": self.root,
            "origin": self.origin,
            "signers": dict(sorted(self.signers.items())),
            "problem": None
            if self.problem is None
            else {
                "where": self.problem.where,
                "index": self.problem.index,
                "message": self.problem.message,
            },
        }


class _Failed(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def verify_directory(directory: Path, registry: KeyRegistry) -> Report:
    """Read a facts directory and check it (see the module docstring)."""
    log_path = directory / LOG_FILE
    if not log_path.is_file():
        report = Report()
        report.problem = Problem(str(log_path), "there is no fact log here")
        return report
    checkpoints = [
        (path.name, path.read_bytes())
        for path in sorted((directory / CHECKPOINT_DIR).glob(f"*{CHECKPOINT_SUFFIX}"))
    ]
    view_path = directory / VIEW_FILE
    view = view_path.read_bytes() if view_path.is_file() else None
    return check_facts(log_path.read_bytes(), checkpoints, view, registry)


def check_facts(
    log: bytes,
    checkpoints: Sequence[tuple[str, bytes]],
    view: bytes | None,
    registry: KeyRegistry,
) -> Report:
    report = Report()
    try:
        signed = _open_checkpoints(checkpoints, registry, report)
        leaves, view_rest = _check_entries(log, view, registry, report)
        _check_checkpoints(signed, leaves, report)
        _check_view_ends(view_rest)
    except _Failed as failed:
        report.problem = failed.problem
    return report


def _check_entries(
    log: bytes, view: bytes | None, registry: KeyRegistry, report: Report
) -> tuple[list[bytes], int]:
    """Check every entry and its view artifact; return the leaves and any view left over."""
    if log and not log.endswith(b"\n"):
        index = log.count(b"\n")
        raise _Failed(Problem(f"entry {index}", "is incomplete: the log ends mid-line", index))
    header = VIEW_HEADER.encode()
    if view is None:
        raise _Failed(Problem(VIEW_FILE, "is missing: it must be the view of the log"))
    if not view.startswith(header):
        raise _Failed(Problem(VIEW_FILE, "does not start with agora's generated header"))
    view_at = len(header)
    leaves: list[bytes] = []
    seen: set[str] = set()
    signers = report.signers
    for index, line in enumerate(log_lines(log)):
        try:
            verified = verify_parsed(envelope_of(line, index), registry)
        except AgoraError as exc:
            raise _Failed(Problem(f"entry {index}", str(exc), index)) from exc
        fact = verified.fact
        reference = _check_signer(verified, index, report)
        if fact.id in seen:
            raise _Failed(Problem(f"entry {index}", f"id {fact.id!r} appears twice", index))
        if reference is not None and reference not in seen:
            raise _Failed(
                Problem(
                    f"entry {index}",
                    f"refers to {reference!r}, which is not an earlier fact in this log",
                    index,
                )
            )
        seen.add(fact.id)
        signers[verified.signer.name] = signers.get(verified.signer.name, 0) + 1
        leaf = leaf_hash(line)
        leaves.append(leaf)
        expected = artifact(index, leaf.hex(), fact).encode()
        if view[view_at : view_at + len(expected)] != expected:
            raise _Failed(
                Problem(VIEW_FILE, f"differs from the log at the artifact of entry {index}", index)
            )
        view_at += len(expected)
    report.entries = len(leaves)
    return leaves, len(view) - view_at


def _check_view_ends(rest: int) -> None:
    if rest:
        raise _Failed(Problem(VIEW_FILE, "has artifacts after the last entry of the log"))


def _check_signer(verified: Verified, index: int, report: Report) -> str | None:
    """Check the signer may record this fact; return the earlier fact it refers to."""
    fact, signer = verified.fact, verified.signer
    if isinstance(fact, Act):
        if not signer.may_use(fact.channel):
            raise _Failed(
                Problem(
                    f"entry {index}",
                    f"sender {signer.name!r} is not granted channel {fact.channel!r}",
                    index,
                )
            )
        report.acts += 1
        return fact.in_reply_to
    if signer.role not in CHECKPOINT_SIGNER_ROLES:
        raise _Failed(
            Problem(
                f"entry {index}",
                f"event signed by {signer.name!r} ({signer.role.value}): "
                "only host and bridge identities record events",
                index,
            )
        )
    report.events += 1
    return fact.subject


def _open_checkpoints(
    checkpoints: Sequence[tuple[str, bytes]], registry: KeyRegistry, report: Report
) -> list[SignedCheckpoint]:
    opened: list[SignedCheckpoint] = []
    for name, note in checkpoints:
        where = f"{CHECKPOINT_DIR}/{name}"
        try:
            signed = open_checkpoint(note, registry)
        except AgoraError as exc:
            raise _Failed(Problem(where, str(exc))) from exc
        if name != checkpoint_name(signed.checkpoint.size):
            raise _Failed(Problem(where, f"holds a checkpoint of size {signed.checkpoint.size}"))
        if opened and signed.checkpoint.origin != opened[0].checkpoint.origin:
            raise _Failed(
                Problem(
                    where,
                    f"names origin {signed.checkpoint.origin!r}, not "
                    f"{opened[0].checkpoint.origin!r} like the others",
                )
            )
        opened.append(signed)
    report.checkpoints = len(opened)
    return opened


def _check_checkpoints(
    signed: Sequence[SignedCheckpoint], leaves: Sequence[bytes], report: Report
) -> None:
    if not signed:
        if leaves:
            raise _Failed(Problem(CHECKPOINT_DIR, "holds no signed checkpoint over the log"))
        return
    wanted = {s.checkpoint.size: s.checkpoint for s in signed if s.checkpoint.size <= len(leaves)}
    frontier = Frontier()
    for size in range(len(leaves) + 1):
        checkpoint = wanted.get(size)
        if checkpoint is not None and frontier.root() != checkpoint.root:
            raise _Failed(
                Problem(
                    f"{CHECKPOINT_DIR}/{checkpoint_name(size)}",
                    f"root {base64.b64encode(checkpoint.root).decode()} is not the root "
                    f"of the log's first {size} entries: the log was changed",
                )
            )
        if size < len(leaves):
            frontier.append(leaves[size])
    if len(signed) >= 2:
        _check_consistency(signed[-2].checkpoint, signed[-1].checkpoint, leaves)
    latest = signed[-1].checkpoint
    if latest.size > len(leaves):
        raise _Failed(
            Problem(
                f"{CHECKPOINT_DIR}/{checkpoint_name(latest.size)}",
                f"covers {latest.size} entries but the log holds {len(leaves)}: "
                "entries were removed from its end",
                len(leaves),
            )
        )
    if latest.size < len(leaves):
        raise _Failed(
            Problem(
                f"entry {latest.size}",
                f"and the {len(leaves) - latest.size - 1} after it are not covered by a "
                "signed checkpoint",
                latest.size,
            )
        )
    report.size = latest.size
    report.root = base64.b64encode(latest.root).decode()
    report.origin = latest.origin


def _check_consistency(old: Checkpoint, new: Checkpoint, leaves: Sequence[bytes]) -> None:
    """Prove the previous checkpoint's tree is a prefix of the newest one (RFC 9162)."""
    if old.size == 0 or new.size > len(leaves):
        return
    proof = consistency_proof(old.size, leaves[: new.size])
    if not verify_consistency(old.size, new.size, old.root, new.root, proof):
        raise _Failed(
            Problem(
                f"{CHECKPOINT_DIR}/{checkpoint_name(new.size)}",
                f"is not consistent with the previous checkpoint at size {old.size}",
            )
        )
