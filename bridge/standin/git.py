"""Git objects as git itself writes them: blobs, trees and commits with their SHA-1 ids.

An object id is ``SHA-1(b"<type> <size>\\0" + body)``, exactly what ``git hash-object``
prints, so a test can check any id the stand-in returns against real git. Trees are
encoded as ``<mode> <name>\\0<20-byte id>`` per entry, ordered the way git orders them
(a subtree sorts as if its name ended in ``/``); commits as the header lines, a blank
line and the message. Everything here is pure: bytes in, bytes and ids out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

ObjectType = Literal["blob", "tree", "commit"]

MODE_FILE: Final = "100644"
MODE_EXECUTABLE: Final = "100755"
MODE_SYMLINK: Final = "120000"
MODE_TREE: Final = "040000"
MODE_SUBMODULE: Final = "160000"
BLOB_MODES: Final = frozenset({MODE_FILE, MODE_EXECUTABLE, MODE_SYMLINK})
MODES: Final = frozenset({*BLOB_MODES, MODE_TREE, MODE_SUBMODULE})
EMPTY_TREE_SHA: Final = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


class GitObjectError(ValueError):
    """A git object that cannot be stored or read as asked (names what is wrong)."""


def object_id(kind: ObjectType, body: bytes) -> str:
    """The id ``git hash-object -t KIND`` gives ``body``."""
    header = f"{kind} {len(body)}\0".encode("ascii")
    return hashlib.sha1(header + body, usedforsecurity=False).hexdigest()


def entry_kind(mode: str) -> ObjectType:
    if mode == MODE_TREE:
        return "tree"
    if mode == MODE_SUBMODULE:
        return "commit"
    return "blob"


@dataclass(frozen=True, slots=True)
class TreeEntry:
    name: str
    mode: str  # as the REST API shows it: "100644", "040000", ...
    sha: str

    @property
    def kind(self) -> ObjectType:
        return entry_kind(self.mode)


def _sort_key(entry: TreeEntry) -> bytes:
    name = entry.name.encode()
    return name + b"/" if entry.mode == MODE_TREE else name


def encode_tree(entries: list[TreeEntry]) -> bytes:
    out = bytearray()
    for entry in sorted(entries, key=_sort_key):
        mode = entry.mode.lstrip("0")  # git writes a tree's mode as "40000"
        out += f"{mode} {entry.name}".encode() + b"\0" + bytes.fromhex(entry.sha)
    return bytes(out)


def decode_tree(body: bytes) -> list[TreeEntry]:
    entries: list[TreeEntry] = []
    at = 0
    while at < len(body):
        space = body.index(b" ", at)
        nul = body.index(b"\0", space)
        mode = body[at:space].decode("ascii").rjust(6, "0")
        name = body[space + 1 : nul].decode()
        entries.append(TreeEntry(name, mode, body[nul + 1 : nul + 21].hex()))
        at = nul + 21
    return entries


@dataclass(frozen=True, slots=True)
class Signature:
    """An author or committer line: name, email, seconds since the epoch, UTC offset."""

    name: str
    email: str
    timestamp: int
    offset_minutes: int = 0

    def encode(self) -> str:
        sign = "-" if self.offset_minutes < 0 else "+"
        hours, minutes = divmod(abs(self.offset_minutes), 60)
        return f"{self.name} <{self.email}> {self.timestamp} {sign}{hours:02d}{minutes:02d}"

    @classmethod
    def decode(cls, line: str) -> Signature:
        name, _, rest = line.partition(" <")
        email, _, when = rest.partition("> ")
        stamp, _, zone = when.partition(" ")
        minutes = int(zone[1:3]) * 60 + int(zone[3:5])
        return cls(name, email, int(stamp), -minutes if zone.startswith("-") else minutes)


@dataclass(frozen=True, slots=True)
class Commit:
    tree: str
    parents: tuple[str, ...]
    author: Signature
    committer: Signature
    message: str

    def encode(self) -> bytes:
        lines = [f"tree {self.tree}", *(f"parent {p}" for p in self.parents)]
        lines += [f"author {self.author.encode()}", f"committer {self.committer.encode()}"]
        return ("\n".join(lines) + "\n\n" + self.message).encode()

    @classmethod
    def decode(cls, body: bytes) -> Commit:
        head, _, message = body.decode().partition("\n\n")
        tree, parents = "", []
        author = committer = Signature("", "", 0)
        for line in head.split("\n"):
            key, _, value = line.partition(" ")
            if key == "tree":
                tree = value
            elif key == "parent":
                parents.append(value)
            elif key == "author":
                author = Signature.decode(value)
            elif key == "committer":
                committer = Signature.decode(value)
        return cls(tree, tuple(parents), author, committer, message)


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of a create-tree request: put ``sha`` (or delete it: None) at ``path``."""

    path: str
    mode: str
    sha: str | None


@dataclass(slots=True)
class ObjectStore:
    """A repository's object database: id -> (type, body)."""

    objects: dict[str, tuple[ObjectType, bytes]] = field(default_factory=dict)

    def put(self, kind: ObjectType, body: bytes) -> str:
        sha = object_id(kind, body)
        self.objects.setdefault(sha, (kind, body))
        return sha

    def kind(self, sha: str) -> ObjectType | None:
        found = self.objects.get(sha)
        return found[0] if found else None

    def body(self, sha: str, kind: ObjectType) -> bytes:
        found = self.objects.get(sha)
        if found is None or found[0] != kind:
            raise GitObjectError(f"{kind} {sha} does not exist")
        return found[1]

    def tree(self, sha: str) -> list[TreeEntry]:
        return decode_tree(self.body(sha, "tree"))

    def commit(self, sha: str) -> Commit:
        return Commit.decode(self.body(sha, "commit"))

    def put_tree(self, entries: list[TreeEntry]) -> str:
        return self.put("tree", encode_tree(entries))

    def put_commit(self, commit: Commit) -> str:
        return self.put("commit", commit.encode())

    def entries(self, tree_sha: str) -> list[TreeEntry]:
        return sorted(self.tree(tree_sha), key=_sort_key)

    def walk(self, tree_sha: str, prefix: str = "") -> Iterator[tuple[str, TreeEntry]]:
        """Every entry under a tree, parents before children, in git's order."""
        for entry in self.entries(tree_sha):
            path = f"{prefix}{entry.name}"
            yield path, entry
            if entry.mode == MODE_TREE:
                yield from self.walk(entry.sha, path + "/")

    def files(self, tree_sha: str) -> dict[str, bytes]:
        return {
            path: self.body(entry.sha, "blob")
            for path, entry in self.walk(tree_sha)
            if entry.kind == "blob"
        }

    def build_tree(self, base_tree: str | None, changes: list[Change]) -> str:
        """Apply changes (nested paths allowed) on top of ``base_tree``; empty dirs vanish."""
        nested = self._nest(base_tree)
        for change in changes:
            parts = split_path(change.path)
            node = nested
            for part in parts[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    if change.sha is None:
                        break
                    child = {}
                    node[part] = child
                node = child
            else:
                if change.sha is None:
                    node.pop(parts[-1], None)
                elif change.mode == MODE_TREE:
                    node[parts[-1]] = self._nest(change.sha)
                else:
                    node[parts[-1]] = TreeEntry(parts[-1], change.mode, change.sha)
        sha = self._store_nested(nested)
        return sha if sha is not None else self.put_tree([])

    def _nest(self, tree_sha: str | None) -> Nested:
        if tree_sha is None:
            return {}
        nested: Nested = {}
        for entry in self.tree(tree_sha):
            nested[entry.name] = self._nest(entry.sha) if entry.mode == MODE_TREE else entry
        return nested

    def _store_nested(self, nested: Nested) -> str | None:
        entries: list[TreeEntry] = []
        for name, node in nested.items():
            if isinstance(node, TreeEntry):
                entries.append(node)
            elif (sub := self._store_nested(node)) is not None:
                entries.append(TreeEntry(name, MODE_TREE, sub))
        return self.put_tree(entries) if entries else None

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        seen: set[str] = set()
        todo = [descendant]
        while todo:
            sha = todo.pop()
            if sha == ancestor:
                return True
            if sha in seen or self.kind(sha) != "commit":
                continue
            seen.add(sha)
            todo.extend(self.commit(sha).parents)
        return False


Nested = dict[str, "TreeEntry | Nested"]


def split_path(path: str) -> list[str]:
    parts = path.split("/")
    if not path or any(part in ("", ".", "..", ".git") for part in parts):
        raise GitObjectError(f"tree.path {path!r} contains a malformed path component")
    return parts


def initial_tree(store: ObjectStore, files: Mapping[str, bytes]) -> str:
    changes = [Change(path, MODE_FILE, store.put("blob", data)) for path, data in files.items()]
    return store.build_tree(None, changes)
