"""Named Ed25519 identities: private key files and the public key registry.

Every agent, the host, the bridge and each human operator has one named key. The
registry (a YAML file that is safe to commit) maps each name to its public key, its role
and the channels it is granted, much like an A2A agent card. Private keys are PKCS#8 PEM
files created with mode 0600; they are never printed or logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Final

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agora.core import ed25519
from agora.core.acts import check_channel, check_name
from agora.core.document import parse_yaml
from agora.core.errors import ConfigError, InvalidChannel, InvalidName, UnknownKey, shown

ALL_CHANNELS: Final = "*"
PRIVATE_KEY_MODE: Final = 0o600
PUBLIC_KEY_BYTES: Final = ed25519.PUBLIC_KEY_BYTES
MAX_ENTRY_INDEX: Final = 2**63  # past any log
ROOT_BYTES: Final = 32  # a SHA-256 Merkle root


class Role(StrEnum):
    """What an identity is allowed to sign."""

    AGENT = "agent"  # speech acts on its granted channels
    HOST = "host"  # events and checkpoints; acts for nobody but itself
    BRIDGE = "bridge"  # acts injected from GitHub, and events
    OPERATOR = "operator"  # a person at the command line


def key_id(public_key: bytes) -> str:
    """The DSSE ``keyid`` of a raw public key: its SHA-256, in hex. A hint, never trusted."""
    return hashlib.sha256(public_key).hexdigest()


@dataclass(frozen=True, slots=True)
class RetiredKey:
    """An earlier public key of an identity's, valid for the fact log's entries up to
    ``last_entry`` as they were when it was retired (``root``: their RFC 6962 root), for
    nothing after them, and for nothing a host is handed now; ``retired_at_ms``: when it
    was retired, by the clock of the machine that retired it."""

    public_key: bytes
    last_entry: int  # -1: none
    root: bytes
    retired_at_ms: int

    @property
    def keyid(self) -> str:
        return key_id(self.public_key)


@dataclass(frozen=True, slots=True)
class Identity:
    """A name bound to a public key, a role and the channels it may speak on, and the
    keys it had before (see :class:`RetiredKey`)."""

    name: str
    role: Role
    public_key: bytes
    channels: frozenset[str]
    retired: tuple[RetiredKey, ...] = ()

    @property
    def keyid(self) -> str:
        return key_id(self.public_key)

    def __post_init__(self) -> None:
        check_name(self.name, field="identity name")
        for channel in self.channels:
            if channel == ALL_CHANNELS and self.role is not Role.AGENT:
                continue
            check_channel(channel)
        if len(self.public_key) != PUBLIC_KEY_BYTES:
            raise ConfigError(f"public key of {self.name!r} must be {PUBLIC_KEY_BYTES} bytes")
        for retired in self.retired:
            if (
                len(retired.public_key) != PUBLIC_KEY_BYTES
                or len(retired.root) != ROOT_BYTES
                or retired.last_entry < -1
            ):
                raise ConfigError(
                    f"a retired key of {self.name!r} must be {PUBLIC_KEY_BYTES} bytes, "
                    f"with a {ROOT_BYTES}-byte root and an entry index of -1 (none) or more"
                )

    def retire_key(
        self, public_key: bytes, *, last_entry: int, root: bytes, at_ms: int
    ) -> Identity:
        """This identity under ``public_key`` from now on, its key until now valid for
        the log's entries up to ``last_entry`` (-1: none, but a checkpoint of none) as
        they are now (``root``)."""
        kept = RetiredKey(self.public_key, last_entry, root, at_ms)
        return replace(self, public_key=public_key, retired=(*self.retired, kept))

    def as_retired(self, retired: RetiredKey) -> Identity:
        """This identity as it was under ``retired``, for checking what it signed then."""
        return replace(self, public_key=retired.public_key, retired=())

    def may_use(self, channel: str) -> bool:
        return channel in self.channels or ALL_CHANNELS in self.channels


class KeyRegistry:
    """Names to identities, and key ids to names. Immutable once built."""

    def __init__(self, identities: Iterable[Identity]) -> None:
        self._by_name: dict[str, Identity] = {}
        self._by_keyid: dict[str, Identity] = {}  # the keys in use
        self._retired: dict[str, tuple[Identity, RetiredKey]] = {}
        holders: dict[str, str] = {}  # every key id, in use or retired, to its name
        for identity in identities:
            if identity.name in self._by_name:
                raise ConfigError(f"identity {identity.name!r} is registered twice")
            for keyid in (identity.keyid, *(r.keyid for r in identity.retired)):
                if keyid in holders:
                    raise ConfigError(
                        f"identities {holders[keyid]!r} and {identity.name!r} share one "
                        "public key (in use or retired): each name needs its own key"
                        if holders[keyid] != identity.name
                        else f"identity {identity.name!r} lists one public key twice"
                    )
                holders[keyid] = identity.name
            self._by_name[identity.name] = identity
            self._by_keyid[identity.keyid] = identity
            for retired in identity.retired:
                self._retired[retired.keyid] = (identity, retired)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Identity]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def get(self, name: str) -> Identity:
        identity = self._by_name.get(name)
        if identity is None:
            raise UnknownKey(
                f"identity {shown(name)} is not in the key registry: "
                f"known names are {', '.join(self.names) or 'none'}"
            )
        return identity

    def by_keyid(self, keyid: str) -> Identity | None:
        """The identity whose key in use has ``keyid`` (never a retired key)."""
        return self._by_keyid.get(keyid)

    def retired_key(self, keyid: str) -> tuple[Identity, RetiredKey] | None:
        """The identity one of whose retired keys has ``keyid``, and that key."""
        return self._retired.get(keyid)

    def with_identity(self, identity: Identity) -> KeyRegistry:
        """A new registry with ``identity`` added, or replaced if the name exists."""
        others = [i for i in self._by_name.values() if i.name != identity.name]
        return KeyRegistry([*others, identity])

    # -- files ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> KeyRegistry:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(
                f"key registry {path} does not exist: create it with `agora keys new NAME`"
            ) from exc
        except (OSError, UnicodeDecodeError) as exc:  # a folder, unreadable, not UTF-8
            raise ConfigError(f"key registry {path} cannot be read: {exc}") from exc
        # an identity given twice is refused, not the first silently replaced
        document = parse_yaml(text, source=f"key registry {path}")
        return cls.from_document(document, source=str(path))

    @classmethod
    def from_document(cls, document: object, *, source: str = "key registry") -> KeyRegistry:
        if document is None:
            return cls([])
        if not isinstance(document, Mapping) or set(document) != {"identities"}:
            raise ConfigError(f"{source}: expected one top-level key 'identities'")
        entries = document["identities"] or {}
        if not isinstance(entries, Mapping):
            raise ConfigError(f"{source}: 'identities' must map names to identities")
        return cls(_identity_from(name, entry, source) for name, entry in entries.items())

    def to_document(self) -> dict[str, object]:
        return {
            "identities": {
                identity.name: _identity_document(identity)
                for identity in sorted(self._by_name.values(), key=lambda i: i.name)
            }
        }

    def save(self, path: Path) -> None:
        header = "# agora key registry: who may sign, and on which channels. Safe to commit.\n"
        text = header + yaml.safe_dump(self.to_document(), sort_keys=False)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)


def _identity_document(identity: Identity) -> dict[str, object]:
    document: dict[str, object] = {
        "role": identity.role.value,
        "public_key": base64.b64encode(identity.public_key).decode(),
        "channels": sorted(identity.channels),
    }
    if identity.retired:
        document["retired"] = [
            {
                "public_key": base64.b64encode(r.public_key).decode(),
                "last_entry": int(r.last_entry),  # as a plain int: YAML writes no other
                "root": base64.b64encode(r.root).decode(),
                "retired_at_ms": int(r.retired_at_ms),
            }
            for r in identity.retired
        ]
    return document


def _identity_from(name: object, entry: object, source: str) -> Identity:
    where = f"{source}: identities.{name}"
    try:
        name = check_name(name, field="identity name")
    except InvalidName as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping with role, public_key, channels")
    unexpected = set(entry) - {"role", "public_key", "channels", "retired"}
    if unexpected:
        raise ConfigError(f"{where}: unexpected keys {sorted(map(str, unexpected))}")
    try:
        role = Role(str(entry.get("role")))
    except ValueError as exc:
        raise ConfigError(
            f"{where}.role is {shown(entry.get('role'))}: expected one of "
            f"{', '.join(r.value for r in Role)}"
        ) from exc
    public_key = _decode_public_key(entry.get("public_key"), f"{where}.public_key")
    channels = entry.get("channels", [])
    if not isinstance(channels, list):
        raise ConfigError(f"{where}.channels must be a list of channel names")
    retired = _retired_from(entry.get("retired", []), f"{where}.retired")
    try:
        return Identity(
            name=name,
            role=role,
            public_key=public_key,
            channels=frozenset(channels),
            retired=retired,
        )
    except (InvalidChannel, TypeError) as exc:
        raise ConfigError(f"{where}.channels: {exc}") from exc


def _retired_from(value: object, where: str) -> tuple[RetiredKey, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list of mappings with {', '.join(_RETIRED_KEYS)}")
    retired: list[RetiredKey] = []
    for position, item in enumerate(value):
        here = f"{where}[{position}]"
        if not isinstance(item, Mapping) or set(item) != set(_RETIRED_KEYS):
            raise ConfigError(f"{here}: expected a mapping with {', '.join(_RETIRED_KEYS)}")
        last = _whole(
            item["last_entry"],
            -1,
            f"{here}.last_entry",
            "the index of the last log entry the key signed, -1 (none) or more",
        )
        at_ms = _whole(item["retired_at_ms"], 0, f"{here}.retired_at_ms", "milliseconds since 1970")
        public_key = _decode_public_key(item["public_key"], f"{here}.public_key")
        root = _decode_bytes(
            item["root"], ROOT_BYTES, f"{here}.root", "the 32 bytes of a Merkle root"
        )
        retired.append(RetiredKey(public_key, last, root, at_ms))
    return tuple(retired)


_RETIRED_KEYS: Final = ("public_key", "last_entry", "root", "retired_at_ms")


def _whole(value: object, low: int, where: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < MAX_ENTRY_INDEX:
        raise ConfigError(f"{where} is {shown(value)}: expected {what}, an integer")
    return int(value)  # not the reader's subclass, which YAML cannot write back


def _decode_public_key(value: object, where: str) -> bytes:
    return _decode_bytes(value, PUBLIC_KEY_BYTES, where, f"{PUBLIC_KEY_BYTES} raw Ed25519 bytes")


def _decode_bytes(value: object, size: int, where: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{where} is not base64: {exc}") from exc
    if not isinstance(value, str) or len(raw) != size:
        raise ConfigError(f"{where} must be {what} in base64")
    return raw


# -- private keys ---------------------------------------------------------------------

DIGEST_KEY_LABEL: Final = b"agora keyed digest v1\0"  # keeps the digest key apart from others


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A named private key. Its ``repr`` never shows the key."""

    name: str
    private_key: Ed25519PrivateKey
    # derived once: every signature names the key it was made with
    public_key: bytes = field(init=False, compare=False)
    keyid: str = field(init=False, compare=False)
    _secret: bytes = field(init=False, compare=False, repr=False)  # libsodium's form
    _digest_key: bytes = field(init=False, compare=False, repr=False)  # see keyed_digest

    def __post_init__(self) -> None:
        seed = self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        public, secret = ed25519.secret_from_seed(seed)
        object.__setattr__(self, "public_key", public)
        object.__setattr__(self, "keyid", key_id(public))
        object.__setattr__(self, "_secret", secret)
        object.__setattr__(self, "_digest_key", hashlib.sha256(DIGEST_KEY_LABEL + seed).digest())

    def __repr__(self) -> str:
        return f"SigningKey(name={self.name!r}, keyid={self.keyid[:16]}...)"

    def sign(self, message: bytes) -> bytes:
        return ed25519.sign(self._secret, message)

    def keyed_digest(self, data: bytes) -> str:
        """HMAC-SHA256 of ``data`` (hex) under a key drawn from this private key: a fact
        id made from what the fact is about (the messages a refusal names) is the same
        each time this key's holder makes it, so a repeat is recorded once, and no one
        else can work it out in advance and publish something under it first (the
        stream would then drop the real fact as a repeat of its ``Nats-Msg-Id``)."""
        return hmac.new(self._digest_key, data, hashlib.sha256).hexdigest()

    def identity(self, role: Role, channels: Iterable[str] = ()) -> Identity:
        return Identity(self.name, role, self.public_key, frozenset(channels))

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        return cls(check_name(name, field="key name"), Ed25519PrivateKey.generate())


def private_key_path(keys_dir: Path, name: str) -> Path:
    return keys_dir / f"{check_name(name, field='key name')}.key"


def write_private_key(key: SigningKey, keys_dir: Path) -> Path:
    """Write ``key`` to ``keys_dir/NAME.key`` with mode 0600, refusing to overwrite."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = private_key_path(keys_dir, key.name)
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_KEY_MODE)
    except FileExistsError as exc:
        raise ConfigError(
            f"private key {path} already exists: choose another name or remove it first"
        ) from exc
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    return path


def read_private_key(keys_dir: Path, name: str) -> SigningKey:
    """Load ``keys_dir/NAME.key``, refusing a file that others can read."""
    path = private_key_path(keys_dir, name)
    try:
        return read_private_key_file(path, name)
    except UnknownKey as exc:
        raise UnknownKey(f"{exc}: create it with `agora keys new {name}`") from exc


def read_private_key_file(path: Path, name: str) -> SigningKey:
    """Load the private key of ``name`` from ``path``, refusing a file others can read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise UnknownKey(f"private key {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"private key {path} cannot be read: {exc.strerror}") from exc
    if not stat.S_ISREG(mode):
        raise ConfigError(f"private key {path} is not a file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"private key {path} has mode {stat.S_IMODE(mode):04o}: it must be readable by "
            f"its owner only (chmod 600 {path})"
        )
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"private key {path} cannot be read: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"private key {path} is not a PKCS#8 PEM key") from exc
    except TypeError as exc:  # encrypted: a password would be needed
        raise ConfigError(
            f"private key {path} is encrypted: agora reads unencrypted PKCS#8 keys, kept "
            "safe by the file's mode (0600)"
        ) from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ConfigError(f"private key {path} is not an Ed25519 key")
    return SigningKey(name, loaded)
