"""Offline verification of a facts directory: every check ``agora verify`` makes.

:func:`check_facts` is pure (bytes in, a :class:`Report` out); :func:`verify_directory`
only reads the files first. The checks, in order, stop at the first problem:

* every log line is ``{"index": N, "envelope": ...}`` with N = 0, 1, 2, ...;
* every envelope's signature verifies against the key registry (keyid is only a hint);
* an act is signed by its own sender, and that sender is granted the act's channel;
* events are signed by a host or bridge identity;
* every fact id is unique, and every reply or event points at an earlier fact;
* an entry signed with a key since retired lies within the entries the log held when
  it was retired, and those entries are unchanged (their root is the registry's);
* every checkpoint is signed by a host or bridge key, names one origin, and its root is
  the RFC 6962 root of the log at its size; each is consistent with the one before it
  (checked with an RFC 9162 consistency proof), and the newest covers the whole log;
* ``coordination.yaml`` is exactly the view the log produces;
* if a checkpoint to extend is given (one taken from outside the directory, such as the
  newest one a repository's main branch holds), the log extends it: it holds at least
  its entries, and their root is its root. The directory's own checkpoints cannot show
  that: whoever can change the directory can remove the later ones, or, with a
  checkpoint signer's key, write all of them afresh.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agora.core.checkpoint import (
    Checkpoint,
    SignedCheckpoint,
    open_checkpoint,
)
from agora.core.entries import (
    CheckedEntry,
    EntryProblem,
    check_chunk,
    check_chunk_in_worker,
    init_worker,
)
from agora.core.errors import AgoraError
from agora.core.factlog import (
    CHECKPOINT_DIR,
    CHECKPOINT_SUFFIX,
    LOG_FILE,
    VIEW_FILE,
    checkpoint_name,
    log_lines,
)
from agora.core.keys import KeyRegistry, RetiredKey
from agora.core.merkle import Frontier, consistency_proof, verify_consistency
from agora.core.rivet import VIEW_HEADER

CHUNK_ENTRIES: Final = 2_000
PARALLEL_FROM_ENTRIES: Final = 4 * CHUNK_ENTRIES


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


@dataclass(frozen=True, slots=True)
class Extends:
    """A signed checkpoint the log must extend, and where it came from (for messages)."""

    where: str
    note: bytes


def verify_directory(
    directory: Path, registry: KeyRegistry, *, jobs: int = 1, extends: Extends | None = None
) -> Report:
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
    return check_facts(
        log_path.read_bytes(), checkpoints, view, registry, jobs=jobs, extends=extends
    )


def check_facts(
    log: bytes,
    checkpoints: Sequence[tuple[str, bytes]],
    view: bytes | None,
    registry: KeyRegistry,
    *,
    jobs: int = 1,
    extends: Extends | None = None,
) -> Report:
    """Check a log, its checkpoints and its view, and that the log extends ``extends``;
    ``jobs`` > 1 checks entries in parallel."""
    report = Report()
    try:
        signed = _open_checkpoints(checkpoints, registry, report)
        anchor = _open_anchor(extends, registry) if extends is not None else None
        leaves, view_rest = _check_entries(log, view, registry, report, jobs)
        _check_retired_keys(registry, leaves)
        _check_checkpoints(signed, leaves, report)
        _check_view_ends(view_rest)
        if anchor is not None and extends is not None:
            _check_extends(anchor, extends.where, signed, leaves)
    except _Failed as failed:
        report.problem = failed.problem
    return report


def _check_entries(
    log: bytes, view: bytes | None, registry: KeyRegistry, report: Report, jobs: int
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
    for index, entry in enumerate(_checked_entries(list(log_lines(log)), registry, jobs)):
        if entry.fact_id in seen:
            raise _Failed(Problem(f"entry {index}", f"id {entry.fact_id!r} appears twice", index))
        for reference in entry.references:
            if reference not in seen:
                raise _Failed(
                    Problem(
                        f"entry {index}",
                        f"refers to {reference!r}, which is not an earlier fact in this log",
                        index,
                    )
                )
        seen.add(entry.fact_id)
        signers[entry.signer] = signers.get(entry.signer, 0) + 1
        if entry.is_act:
            report.acts += 1
        else:
            report.events += 1
        leaves.append(entry.leaf)
        if view[view_at : view_at + len(entry.artifact)] != entry.artifact:
            raise _Failed(
                Problem(VIEW_FILE, f"differs from the log at the artifact of entry {index}", index)
            )
        view_at += len(entry.artifact)
    report.entries = len(leaves)
    return leaves, len(view) - view_at


def _checked_entries(
    lines: list[bytes], registry: KeyRegistry, jobs: int
) -> Iterator[CheckedEntry]:
    """Every entry's independent checks, in log order, on ``jobs`` processes."""
    starts = range(0, len(lines), CHUNK_ENTRIES)
    chunks = [lines[start : start + CHUNK_ENTRIES] for start in starts]
    if jobs <= 1 or len(lines) < PARALLEL_FROM_ENTRIES:
        results: Iterable[tuple[list[CheckedEntry], EntryProblem | None]] = (
            check_chunk(chunk, start, registry) for chunk, start in zip(chunks, starts, strict=True)
        )
        yield from _in_order(results)
        return
    with ProcessPoolExecutor(
        max_workers=jobs, initializer=init_worker, initargs=(registry.to_document(),)
    ) as pool:
        yield from _in_order(pool.map(check_chunk_in_worker, chunks, starts))


def _in_order(
    results: Iterable[tuple[list[CheckedEntry], EntryProblem | None]],
) -> Iterator[CheckedEntry]:
    for checked, problem in results:
        yield from checked
        if problem is not None:
            raise _Failed(Problem(f"entry {problem.index}", problem.message, problem.index))


def _check_retired_keys(registry: KeyRegistry, leaves: Sequence[bytes]) -> None:
    """A retired key is valid for the entries the log held when it was retired, those
    very entries: a log that holds that many must hold them (their root is the one
    the registry keeps), or whoever still had the old key could have signed other
    facts in their place."""
    wanted: dict[int, list[tuple[str, RetiredKey]]] = {}
    for identity in registry:
        for retired in identity.retired:
            size = retired.last_entry + 1
            if size <= len(leaves):
                wanted.setdefault(size, []).append((identity.name, retired))
    roots = _roots_at(leaves, wanted)
    for size in sorted(wanted):
        for name, retired in wanted[size]:
            if roots[size] != retired.root:
                raise _Failed(
                    Problem(
                        f"entry {max(size - 1, 0)}",
                        f"the log's first {size} entries are not those it held when the key "
                        f"{retired.keyid[:16]} of {name!r} was retired (their root differs "
                        "from the registry's): facts in them were written again since",
                        max(size - 1, 0),
                    )
                )


def _roots_at(leaves: Sequence[bytes], sizes: Iterable[int]) -> dict[int, bytes]:
    """The RFC 6962 root of the log's first ``size`` entries for each of ``sizes`` that
    the log holds, in one pass over its leaves."""
    wanted = {size for size in sizes if size <= len(leaves)}
    roots: dict[int, bytes] = {}
    frontier = Frontier()
    for size in range(max(wanted, default=-1) + 1):
        if size in wanted:
            roots[size] = frontier.root()
        if size < len(leaves):
            frontier.append(leaves[size])
    return roots


def _check_view_ends(rest: int) -> None:
    if rest:
        raise _Failed(Problem(VIEW_FILE, "has artifacts after the last entry of the log"))


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
    roots = _roots_at(leaves, wanted)
    for size in sorted(wanted):
        checkpoint = wanted[size]
        if roots[size] != checkpoint.root:
            raise _Failed(
                Problem(
                    f"{CHECKPOINT_DIR}/{checkpoint_name(size)}",
                    f"root {base64.b64encode(checkpoint.root).decode()} is not the root "
                    f"of the log's first {size} entries: the log was changed",
                )
            )
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


def _open_anchor(extends: Extends, registry: KeyRegistry) -> Checkpoint:
    try:
        return open_checkpoint(extends.note, registry).checkpoint
    except AgoraError as exc:
        raise _Failed(Problem(extends.where, f"is not a checkpoint to extend: {exc}")) from exc


def _check_extends(
    anchor: Checkpoint, where: str, signed: Sequence[SignedCheckpoint], leaves: Sequence[bytes]
) -> None:
    """The log holds the anchor's entries, unchanged, under the same origin."""
    if signed and signed[-1].checkpoint.origin != anchor.origin:
        raise _Failed(
            Problem(
                where,
                f"names origin {anchor.origin!r}, but the log's checkpoints name "
                f"{signed[-1].checkpoint.origin!r}: it is another log",
            )
        )
    if anchor.size > len(leaves):
        raise _Failed(
            Problem(
                where,
                f"covers {anchor.size} entries but the log holds {len(leaves)}: the log was "
                "cut back, and it must extend this checkpoint",
                len(leaves),
            )
        )
    if _roots_at(leaves, [anchor.size])[anchor.size] != anchor.root:
        raise _Failed(
            Problem(
                where,
                f"root {base64.b64encode(anchor.root).decode()} is not the root of the log's "
                f"first {anchor.size} entries: the log does not extend it (its history was "
                "changed)",
            )
        )


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
