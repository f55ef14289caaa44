"""``agora keys``: make named Ed25519 keys and show the registry.

Private keys go to ``KEYS_DIR/NAME.key`` (mode 0600, never printed); the public half is
added to the registry file, which is safe to commit and is what ``agora verify`` reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

from agora.core.errors import ConfigError
from agora.core.keys import KeyRegistry, Role, SigningKey, write_private_key

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

    listing = actions.add_parser("list", help="show the identities in the registry")
    _file_options(listing)
    listing.set_defaults(run=run_list)


def _file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry", type=Path, default=DEFAULT_REGISTRY, help="key registry (default: keys.yaml)"
    )
    parser.add_argument(
        "--keys-dir",
        type=Path,
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
    except OSError as exc:  # the key is of no use unregistered: nothing is left behind
        path.unlink()
        raise ConfigError(f"key registry {arguments.registry} cannot be written: {exc}") from exc
    channels = ", ".join(sorted(identity.channels)) or "none"
    print(f"made key {identity.name!r} ({identity.role.value}; channels: {channels})")
    print(f"  private key: {path} (mode 0600, keep it secret)")
    print(f"  public key id: {identity.keyid}")
    print(f"  registered in: {arguments.registry}")
    return 0


def run_list(arguments: argparse.Namespace) -> int:
    registry = KeyRegistry.load(arguments.registry)
    for identity in registry:
        channels = ", ".join(sorted(identity.channels)) or "-"
        print(f"{identity.name:<24} {identity.role.value:<9} {identity.keyid[:16]}  {channels}")
    return 0


def _protect(keys_dir: Path) -> None:
    """Create the private key folder so that git never picks it up."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ignore = keys_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# private keys: never commit\n*\n", encoding="utf-8")
