"""The checks on one log entry that need nothing but the entry and the key registry.

They are the expensive part of verification (an Ed25519 verify each), and independent
of each other, so :mod:`agora.core.verify` can run them on several cores and then make
the checks that need the order of the log (unique ids, earlier references, the view,
the checkpoints) in one pass over the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agora.core.admission import check_signer_may_say
from agora.core.envelope import Act, references_of
from agora.core.errors import AgoraError, InternalError
from agora.core.factlog import envelope_of
from agora.core.keys import KeyRegistry
from agora.core.merkle import leaf_hash
from agora.core.rivet import artifact
from agora.core.signing import verify_parsed


@dataclass(frozen=True, slots=True)
class CheckedEntry:
    """What the ordered checks need to know of one entry that verified on its own."""

    fact_id: str
    references: tuple[str, ...]
    is_act: bool
    signer: str
    leaf: bytes
    artifact: bytes


@dataclass(frozen=True, slots=True)
class EntryProblem:
    index: int
    message: str


def check_entry(line: bytes, index: int, registry: KeyRegistry) -> CheckedEntry:
    """Verify one entry's framing, signature, fact and grant. Raises AgoraError."""
    verified = verify_parsed(envelope_of(line, index), registry, entry=index)
    fact, signer = verified.fact, verified.signer
    check_signer_may_say(signer, fact)
    leaf = leaf_hash(line)
    return CheckedEntry(
        fact_id=fact.id,
        references=references_of(fact),
        is_act=isinstance(fact, Act),
        signer=signer.name,
        leaf=leaf,
        artifact=artifact(index, leaf.hex(), fact).encode(),
    )


def check_chunk(
    lines: Sequence[bytes], start: int, registry: KeyRegistry
) -> tuple[list[CheckedEntry], EntryProblem | None]:
    """Check consecutive entries from ``start``; stop at the first that fails."""
    checked: list[CheckedEntry] = []
    for offset, line in enumerate(lines):
        try:
            checked.append(check_entry(line, start + offset, registry))
        except AgoraError as exc:
            return checked, EntryProblem(start + offset, str(exc))
    return checked, None


# -- worker processes -----------------------------------------------------------------

_worker_registry: KeyRegistry | None = None


def init_worker(registry_document: dict[str, object]) -> None:
    global _worker_registry  # noqa: PLW0603 - one registry per worker process, set once
    _worker_registry = KeyRegistry.from_document(registry_document)


def check_chunk_in_worker(
    lines: Sequence[bytes], start: int
) -> tuple[list[CheckedEntry], EntryProblem | None]:
    if _worker_registry is None:
        raise InternalError("a verify worker ran before init_worker")
    return check_chunk(lines, start, _worker_registry)
