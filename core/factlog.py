"""The facts directory: an append-only log of signed envelopes, its checkpoints and its view.

Layout (everything in it is meant to be committed to git)::

    FACTS/
      log.jsonl                 one entry per line: {"index": N, "envelope": <DSSE JSON>}
      checkpoints/<size>.note   C2SP signed notes over the RFC 6962 root at that size
      coordination.yaml         the rivet view, one artifact per fact
      rivet.yaml, schemas/      so that `rivet validate` can read the view

Leaf ``N`` of the Merkle tree is ``SHA-256(0x00 || line N)`` (the line without its
newline). Appending writes one line to the log and one block to the view; nothing is
ever rewritten, and the tree's right edge is kept in memory so a checkpoint costs
O(log n). One process at a time may write a facts directory (an exclusive lock).

Durability: :meth:`FactLog.sync` fsyncs the log, which holds every fact;
:meth:`FactLog.checkpoint` also fsyncs the view, then writes the signed note
atomically. The view is derived from the log, so between checkpoints it is only handed
to the operating system: a crashed process loses none of it, and after a crash of the
machine, :meth:`FactLog.open` compares the view's part since the last checkpoint with
what the log says and rebuilds the view if they differ. Each fsync is a round trip to
the disk: one per group commit instead of two took a recorder's commit from 0.9 to
0.3 ms on the development machine. A crashed process can leave at most an incomplete
last line of the log, which :meth:`FactLog.open` trims: it was never acknowledged. A
crashed machine can leave more of what was never synced spoiled (zeros where a block
never reached the disk, before lines that did): :meth:`FactLog.open` cuts the log at its
first unreadable entry past the newest checkpoint and says how many entries it cut
(:attr:`FactLog.cut_entries`), for the writer to record them again from their source.
An unreadable entry a checkpoint covers is refused: it was synced and signed.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

from agora.core.checkpoint import Checkpoint
from agora.core.envelope import Fact, decode_fact, parse_json
from agora.core.errors import ConfigError, InputError, InternalError, MalformedEnvelope
from agora.core.keys import SigningKey
from agora.core.merkle import Frontier, leaf_hash
from agora.core.rivet import VIEW_HEADER, artifact
from agora.core.rivet_project import write_rivet_project

LOG_FILE: Final = "log.jsonl"
VIEW_FILE: Final = "coordination.yaml"
CHECKPOINT_DIR: Final = "checkpoints"
LOCK_FILE: Final = ".lock"
POSITION_FILE: Final = ".position"  # the recorder's place in the stream (machine state)
CHECKPOINT_SUFFIX: Final = ".note"
DEFAULT_ORIGIN: Final = "agora/facts"
_INDEX_RE: Final = re.compile(rb'\{"index":(-?\d+),')


_MACHINE_STATE: Final = frozenset({LOCK_FILE, POSITION_FILE})


@dataclass(frozen=True, slots=True)
class FactsSnapshot:
    """A facts directory's files at one moment, and the checkpoint that covers them."""

    files: dict[str, bytes]
    checkpoint: Checkpoint


def envelope_digest(envelope: bytes) -> bytes:
    """A short digest of an envelope's exact bytes, to tell a repeat from a reuse of an id."""
    return hashlib.sha256(envelope).digest()[:16]


def checkpoint_name(size: int) -> str:
    return f"{size:016d}{CHECKPOINT_SUFFIX}"


def entry_line(index: int, envelope: bytes) -> bytes:
    """The log line for ``envelope`` at ``index`` (without the newline)."""
    return b'{"index":%d,"envelope":%b}' % (index, envelope)


def log_lines(data: bytes) -> Iterator[bytes]:
    """The complete lines of a log file's bytes."""
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            return
        yield data[start:end]
        start = end + 1


def envelope_of(line: bytes, index: int) -> object:
    """The parsed DSSE envelope in a log line, checking the line's own index.

    A line is exactly what :func:`entry_line` writes; anything else is refused.
    """
    prefix = b'{"index":%d,"envelope":' % index
    if not line.startswith(prefix) or not line.endswith(b"}"):
        found = _INDEX_RE.match(line)
        said = found.group(1).decode() if found else "no index"
        raise MalformedEnvelope(
            f"entry {index} says {said}: each line must be "
            f'{{"index":N,"envelope":...}} with N running 0, 1, 2, ... none missing or moved'
        )
    return parse_json(line[len(prefix) : -1], what=f"entry {index}")


class FactLog:
    """The writer of one facts directory. Use :meth:`open`, and close it when done."""

    def __init__(self, directory: Path, *, origin: str, signer: SigningKey, lock_fd: int) -> None:
        self.directory = directory
        self.origin = origin
        self._signer = signer
        self._lock_fd = lock_fd
        self._frontier = Frontier()
        self._log = (directory / LOG_FILE).open("ab")
        self._view = (directory / VIEW_FILE).open("ab")
        self._last_checkpoint_size = -1
        self.cut_entries = 0  # how many unreadable entries the opening cut from the end

    @classmethod
    def open(cls, directory: Path, *, signer: SigningKey, origin: str = DEFAULT_ORIGIN) -> FactLog:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CHECKPOINT_DIR).mkdir(exist_ok=True)
        write_rivet_project(directory)
        ignore = directory / ".gitignore"
        if not ignore.exists():
            ignore.write_text(f"{LOCK_FILE}\n{POSITION_FILE}\n*.tmp\n", encoding="utf-8")
        lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(lock_fd)
            raise ConfigError(
                f"facts directory {directory} is being written by another process"
            ) from exc
        try:
            return cls._read(directory, signer=signer, origin=origin, lock_fd=lock_fd)
        except BaseException as exc:
            os.close(lock_fd)  # the lock goes with it: the directory can be opened again
            if isinstance(exc, InputError) and not isinstance(exc, ConfigError):
                raise ConfigError(
                    f"facts directory {directory}: its log cannot be read ({exc}); "
                    "`agora verify` says more"
                ) from exc
            raise

    @classmethod
    def _read(cls, directory: Path, *, signer: SigningKey, origin: str, lock_fd: int) -> FactLog:
        """The writer of a locked directory, its log read (a torn last line cut)."""
        data = _trim_incomplete_line(directory / LOG_FILE)
        last_checkpoint_size = _latest_checkpoint_size(directory)
        data, cut = _cut_unreadable_tail(directory / LOG_FILE, data, after=last_checkpoint_size)
        entries = data.count(b"\n")
        if entries < last_checkpoint_size:
            raise ConfigError(
                f"facts directory {directory}: its log holds {entries} entries, but a "
                f"checkpoint was signed over {last_checkpoint_size}: the log was cut short "
                "or rolled back; put the whole log back, or move the directory aside"
            )
        view_is_current = _view_is_current(
            directory / VIEW_FILE, data, synced=max(0, last_checkpoint_size)
        )
        log = cls(directory, origin=origin, signer=signer, lock_fd=lock_fd)
        try:
            for line in log_lines(data):
                log._frontier.append(leaf_hash(line))
            if not view_is_current:
                log._rebuild_view()
        except BaseException:
            log._log.close()
            log._view.close()
            raise
        log._last_checkpoint_size = last_checkpoint_size
        log.cut_entries = cut
        return log

    # -- appending --------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._frontier.size

    def root(self) -> bytes:
        return self._frontier.root()

    def append(self, envelope: bytes, fact: Fact) -> int:
        """Append a signed envelope carrying ``fact``; return its index.

        The caller has verified the envelope (the host and bridge verify everything
        they receive); ``agora verify`` checks it again, offline.
        """
        if b"\n" in envelope:
            raise InternalError("an envelope in the log must be one line of JSON")
        index = self._frontier.size
        line = entry_line(index, envelope)
        leaf = leaf_hash(line)
        self._log.write(line + b"\n")
        self._view.write(artifact(index, leaf.hex(), fact).encode())
        self._frontier.append(leaf)
        return index

    def fact_ids(self) -> dict[str, bytes]:
        """Every fact's id in the log, with the digest of its envelope (read from the
        file; for a writer's start-up)."""
        data = (self.directory / LOG_FILE).read_bytes()
        found: dict[str, bytes] = {}
        for index, line in enumerate(log_lines(data)):
            envelope = line[len(b'{"index":%d,"envelope":' % index) : -1]
            found[_fact_in(line, index).id] = envelope_digest(envelope)
        return found

    def sync(self) -> None:
        """Make every append so far durable (the view too is handed to the system)."""
        self.flush()
        self.fsync()

    def flush(self) -> None:
        """Hand every append so far to the operating system (not yet durable)."""
        for file in (self._log, self._view):
            file.flush()

    def fsync(self) -> None:
        """Make the log as flushed durable (the view waits for the next checkpoint).
        Safe to run in another thread than appends: it touches only the file
        descriptor, never the buffers."""
        os.fsync(self._log.fileno())

    def checkpoint(self) -> Checkpoint:
        """Sync, then sign and write a checkpoint over the whole log (if it grew)."""
        checkpoint = Checkpoint(origin=self.origin, size=self.size, root=self.root())
        if checkpoint.size == self._last_checkpoint_size:
            return checkpoint
        self.sync()
        os.fsync(self._view.fileno())
        path = self.directory / CHECKPOINT_DIR / checkpoint_name(checkpoint.size)
        _write_atomically(path, checkpoint.sign(self._signer))
        self._last_checkpoint_size = checkpoint.size
        return checkpoint

    def snapshot(self) -> FactsSnapshot:
        """Checkpoint, then every committed file of the directory, consistent at this moment.

        Machine state (the lock, the recorder's position, temporary files) is left out.
        """
        checkpoint = self.checkpoint()
        for file in (self._log, self._view):
            file.flush()
        files: dict[str, bytes] = {}
        for path in sorted(self.directory.rglob("*")):
            relative = path.relative_to(self.directory).as_posix()
            if path.is_file() and relative not in _MACHINE_STATE and not relative.endswith(".tmp"):
                files[relative] = path.read_bytes()
        return FactsSnapshot(files=files, checkpoint=checkpoint)

    def close(self) -> None:
        """Checkpoint, then :meth:`release`; once only (a second close does nothing)."""
        if self._lock_fd < 0:
            return
        try:
            self.checkpoint()
        finally:
            self.release()

    def release(self) -> None:
        """Close the files and let go of the directory, with no checkpoint. The lock goes
        whatever closing a file raises (a flush that fails again on a full disk); once
        only, so that a descriptor number the system has since reused is never closed."""
        lock_fd, self._lock_fd = self._lock_fd, -1
        if lock_fd < 0:
            return
        try:
            try:
                self._log.close()
            finally:
                self._view.close()
        finally:
            os.close(lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- recovery ---------------------------------------------------------------------

    def _rebuild_view(self) -> None:
        """Write the view again from the log (after a crash between the two writes)."""
        self._view.close()
        path = self.directory / VIEW_FILE
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("wb") as view:
            view.write(VIEW_HEADER.encode())
            for index, line in enumerate(log_lines((self.directory / LOG_FILE).read_bytes())):
                fact = _fact_in(line, index)
                view.write(artifact(index, leaf_hash(line).hex(), fact).encode())
            view.flush()
            os.fsync(view.fileno())
        temporary.replace(path)
        fsync_directory(self.directory)
        self._view = path.open("ab")


def read_facts(directory: Path) -> list[Fact]:
    """Every fact in a facts directory's log, in order, *without* checking signatures.

    For reading one's own log back (the demo, tests); ``agora verify`` is the check.
    """
    data = (directory / LOG_FILE).read_bytes()
    return [_fact_in(line, index) for index, line in enumerate(log_lines(data))]


def _fact_in(line: bytes, index: int) -> Fact:
    """The fact in a log line, without checking its signature (the writer's own line)."""
    envelope = envelope_of(line, index)
    if not isinstance(envelope, dict):
        raise MalformedEnvelope(f"entry {index} holds no envelope object")
    payload_type, payload = envelope.get("payloadType"), envelope.get("payload")
    if not (isinstance(payload_type, str) and isinstance(payload, str)):
        raise MalformedEnvelope(f"entry {index}'s envelope has no payloadType and payload")
    try:
        body = base64.b64decode(payload, validate=True)
    except ValueError as exc:
        raise MalformedEnvelope(f"entry {index}'s payload is not base64: {exc}") from exc
    return decode_fact(payload_type, body)


def _trim_incomplete_line(path: Path) -> bytes:
    """Cut an incomplete last line left by a crash (it was never synced or acknowledged);
    return the log's complete lines."""
    if not path.exists():
        path.touch()
        return b""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with path.open("r+b") as file:
            file.truncate(end)
            os.fsync(file.fileno())
    return data[:end]


def _cut_unreadable_tail(path: Path, data: bytes, *, after: int) -> tuple[bytes, int]:
    """Cut the log at its first unreadable entry from index ``after`` on (no checkpoint
    covers them: a crashed machine may have spoiled them); return the log's bytes kept
    and how many entries were cut."""
    offset = 0
    for index, line in enumerate(log_lines(data)):
        if index >= after:
            try:
                _fact_in(line, index)
            except InputError:
                with path.open("r+b") as file:
                    file.truncate(offset)
                    os.fsync(file.fileno())
                return data[:offset], data.count(b"\n") - index
        offset += len(line) + 1
    return data, 0


def _view_is_current(view_path: Path, data: bytes, *, synced: int) -> bool:
    """Whether the view ends with exactly the artifacts of the log's entries from index
    ``synced`` on, and at least the last one's (the whole view, header included, when
    ``synced`` is 0).

    A checkpoint fsyncs the view up to its size; what was appended since was only handed
    to the system, and after a crash of the machine any of it may be missing or, on
    some filesystems, zeros: all of it is compared, never just its last block.
    """
    if not view_path.exists():
        return False
    entries = data.count(b"\n")
    start = min(synced, entries - 1) if entries else 0
    expected = bytearray(VIEW_HEADER.encode() if start == 0 else b"")
    for index, line in enumerate(log_lines(data)):
        if index >= start:
            expected += artifact(index, leaf_hash(line).hex(), _fact_in(line, index)).encode()
    with view_path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        length = file.tell()
        if length < len(expected) or (start == 0 and length != len(expected)):
            return False
        file.seek(length - len(expected))
        return file.read() == expected


def _latest_checkpoint_size(directory: Path) -> int:
    """The size of the newest checkpoint, -1 for none (a note not named by its size is
    not a checkpoint of the writer's)."""
    sizes = [
        int(stem)
        for path in (directory / CHECKPOINT_DIR).glob(f"*{CHECKPOINT_SUFFIX}")
        if (stem := path.name.removesuffix(CHECKPOINT_SUFFIX)).isascii() and stem.isdigit()
    ]
    return max(sizes, default=-1)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
