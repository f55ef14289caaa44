"""A self-contained agora folder: keys, a key registry and an ``agora.yaml``.

The demo makes one, and so do the tests and the benchmarks: the same files a user
would make with ``agora keys new`` and an editor, written in one go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from agora.core.keys import KeyRegistry, Role, SigningKey, write_private_key

SOURCE_ROOT: Final = Path(__file__).resolve().parent.parent
SOURCE_AGENTS: Final = SOURCE_ROOT / "agents"


@dataclass(frozen=True, slots=True)
class AgentPlan:
    component: str
    channels: tuple[str, ...]
    settings: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, int] = field(default_factory=dict)


def create_workspace(
    root: Path,
    *,
    channels: Sequence[str],
    agents: Mapping[str, AgentPlan],
    agents_dir: Path = SOURCE_AGENTS,
    extra: Mapping[str, Any] | None = None,
    others: Mapping[str, tuple[Role, Sequence[str]]] | None = None,
) -> Path:
    """Write keys for the host, the operator ``maintainer`` and every agent, a registry,
    and an ``agora.yaml``; return the configuration's path.

    ``others`` adds identities (e.g. a bridge) by role and channels; ``extra`` adds or
    replaces top-level configuration keys.
    """
    root.mkdir(parents=True, exist_ok=True)
    keys_dir = root / ".agora" / "keys"
    identities: dict[str, tuple[Role, Sequence[str]]] = {
        "host": (Role.HOST, ["*"]),
        "maintainer": (Role.OPERATOR, list(channels)),
        **{name: (Role.AGENT, plan.channels) for name, plan in agents.items()},
        **(others or {}),
    }
    registry = KeyRegistry([])
    for name, (role, granted) in identities.items():
        key = SigningKey.generate(name)
        write_private_key(key, keys_dir)
        registry = registry.with_identity(key.identity(role, granted))
    registry.save(root / "keys.yaml")
    document: dict[str, Any] = {
        "facts": "facts",
        "agents_dir": str(agents_dir),
        "build_dir": str(agents_dir / "build"),
        "nats": {"data_dir": ".agora/nats"},
        "channels": {name: {} for name in channels},
        "agents": {
            name: {
                "component": plan.component,
                "channels": list(plan.channels),
                **({"settings": dict(plan.settings)} if plan.settings else {}),
                **({"limits": dict(plan.limits)} if plan.limits else {}),
            }
            for name, plan in agents.items()
        },
        **(extra or {}),
    }
    path = root / "agora.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path
