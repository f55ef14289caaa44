"""``agora keys``: make named Ed25519 keys and show the registry.

Private keys go to ``KEYS_DIR/NAME.key`` (mode 0600, never printed); the public half is
added to the registry file, which is safe to commit and is what ``agora verify`` reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

from agora.cli.session import folder_argument
from agora.core.errors import AgoraError, ConfigError
from agora.core.factlog import LOG_FILE, FactLog
from agora.core.ids import now_ms
from agora.core.keys import (
    KeyRegistry,
    Role,
    SigningKey,
    private_key_path,
    write_private_key,
)

DEFAULT_REGISTRY: Final = Path("keys.yaml")
DEFAULT_KEYS_DIR: Final = Path(".agora/keys")


def register(commands: Any) -> None:
    keys = commands.add_parser("keys", help="make keys and list the key registry")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    new = actions.add_parser("new", help="make a named key and register its public half")
    new.add_argument("name", help="identity name: letters, digits, '-' and '_'")
    new.add_argument(
        "--role",
        choices=[r.value for r in Role],
        default=Role.AGENT.value,
        help="what the identity may sign (default: agent)",
    )
    new.add_argument(
        "--channel",
        action="append",
        default=[],
        dest="channels",
        help="a channel the identity is granted (repeat for more; '*' for all, not agents)",
    )
    _file_options(new)
    new.set_defaults(run=run_new)

    rotate = actions.add_parser(
        "rotate",
        help="give an identity a new key; the old one stays valid for what it signed",
        description=(
            "Make a new key for NAME and register it; its old public key is kept in the "
            "registry as retired, valid for the fact log's entries so far (so `agora "
            "verify` still checks them) and for nothing after. Stop every host and the "
            "bridge first (what they sign with the old key from now on is refused); the "
            "old private key is moved aside in the keys folder."
        ),
    )
    rotate.add_argument("name", help="the identity whose key is replaced")
    rotate.add_argument(
        "--facts-dir",
        type=Path,
        default=Path("facts"),
        help="the facts directory the old key's facts are recorded in (default: facts)",
    )
    _file_options(rotate)
    rotate.set_defaults(run=run_rotate)

    listing = actions.add_parser("list", help="show the identities in the registry")
    _file_options(listing)
    listing.set_defaults(run=run_list)


def _file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry", type=Path, default=DEFAULT_REGISTRY, help="key registry (default: keys.yaml)"
    )
    parser.add_argument(
        "--keys-dir",
        type=folder_argument,
        default=DEFAULT_KEYS_DIR,
        help="where private keys are kept (default: .agora/keys)",
    )


def run_new(arguments: argparse.Namespace) -> int:
    registry = (
        KeyRegistry.load(arguments.registry) if arguments.registry.exists() else KeyRegistry([])
    )
    if arguments.name in registry:
        raise ConfigError(
            f"identity {arguments.name!r} is already in {arguments.registry}: pick another name"
        )
    key = SigningKey.generate(arguments.name)
    identity = key.identity(Role(arguments.role), arguments.channels)
    updated = registry.with_identity(identity)  # validates before anything is written
    if not arguments.registry.parent.is_dir():
        raise ConfigError(
            f"key registry {arguments.registry}: its folder {arguments.registry.parent} "
            "does not exist"
        )
    try:
        _protect(arguments.keys_dir)
    except OSError as exc:
        raise ConfigError(f"private keys cannot be kept in {arguments.keys_dir}: {exc}") from exc
    path = write_private_key(key, arguments.keys_dir)
    try:
        updated.save(arguments.registry)
    except BaseException as exc:  # the key is of no use unregistered: nothing is left behind
        path.unlink()
        if isinstance(exc, OSError):
            raise ConfigError(
                f"key registry {arguments.registry} cannot be written: {exc}"
            ) from exc
        raise
    channels = ", ".join(sorted(identity.channels)) or "none"
    print(f"made key {identity.name!r} ({identity.role.value}; channels: {channels})")
    print(f"  private key: {path} (mode 0600, keep it secret)")
    print(f"  public key id: {identity.keyid}")
    print(f"  registered in: {arguments.registry}")
    return 0


def run_rotate(arguments: argparse.Namespace) -> int:
    registry = KeyRegistry.load(arguments.registry)
    identity = registry.get(arguments.name)
    old_path = private_key_path(arguments.keys_dir, identity.name)
    if not (arguments.facts_dir / LOG_FILE).is_file():
        raise ConfigError(
            f"there is no fact log in {arguments.facts_dir}: give the facts directory "
            f"{identity.name!r}'s facts are recorded in (--facts-dir), so its old key stays "
            "valid for them"
        )
    key = SigningKey.generate(identity.name)
    # the directory's lock, held until the registry is saved: no recorder appends meanwhile
    log = FactLog.open(arguments.facts_dir, signer=key)
    try:
        last_entry = log.size - 1
        retired = identity.retire_key(
            key.public_key, last_entry=last_entry, root=log.root(), at_ms=now_ms()
        )
        updated = registry.with_identity(retired)
        aside = old_path.with_name(f"{old_path.name}.retired-{identity.keyid[:16]}")
        if old_path.exists():
            old_path.replace(aside)
        try:
            path = write_private_key(key, arguments.keys_dir)
            updated.save(arguments.registry)
        except BaseException as exc:  # as it was, whatever failed: the old key in use
            private_key_path(arguments.keys_dir, identity.name).unlink(missing_ok=True)
            if aside.exists():
                aside.replace(old_path)
            if isinstance(exc, OSError | AgoraError):
                raise ConfigError(f"the key of {identity.name!r} was not replaced: {exc}") from exc
            raise
    finally:
        log.release()
    print(f"new key for {identity.name!r}: {path} (mode 0600, keep it secret)")
    print(f"  public key id: {key.identity(identity.role).keyid}")
    valid = f"entries 0-{last_entry}" if last_entry >= 0 else "no entry (the log is empty)"
    print(
        f"  the old key {identity.keyid[:16]} stays valid for {valid} of {arguments.facts_dir} only"
    )
    if aside.exists():
        print(f"  the old private key is kept as {aside}: delete it once no host needs it")
    print(f"  registered in: {arguments.registry} (commit it); restart the hosts and the bridge")
    return 0


def run_list(arguments: argparse.Namespace) -> int:
    registry = KeyRegistry.load(arguments.registry)
    for identity in registry:
        channels = ", ".join(sorted(identity.channels)) or "-"
        retired = f"  ({len(identity.retired)} retired)" if identity.retired else ""
        print(
            f"{identity.name:<24} {identity.role.value:<9} {identity.keyid[:16]}  {channels}"
            f"{retired}"
        )
    return 0


def _protect(keys_dir: Path) -> None:
    """Create the private key folder so that git never picks it up."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ignore = keys_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# private keys: never commit\n*\n", encoding="utf-8")
