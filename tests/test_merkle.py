"""RFC 6962 trees: known roots, and every proof verifies while every altered one fails."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agora.core.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# The eight inputs of the certificate-transparency reference tests, and the roots of
# their first 1..8 leaves.
CT_INPUTS = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
              "606162636465666768696a6b6c6d6e6f"]
]  # fmt: skip
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def _reference_root(leaves: list[bytes]) -> bytes:
    """MTH exactly as RFC 6962 2.1 writes it, recursively."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_the_certificate_transparency_vectors(size: int) -> None:
    leaves = [leaf_hash(entry) for entry in CT_INPUTS[:size]]
    assert root_of(leaves).hex() == CT_ROOTS[size - 1]


def test_empty_tree_root_is_the_hash_of_nothing() -> None:
    assert root_of([]) == EMPTY_ROOT == Frontier().root()


leaf_lists = st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=70).map(
    lambda entries: [leaf_hash(e) for e in entries]
)


@given(leaves=leaf_lists)
def test_frontier_root_equals_the_recursive_definition(leaves: list[bytes]) -> None:
    frontier = Frontier()
    for size, leaf in enumerate(leaves, start=1):
        frontier.append(leaf)
        assert frontier.size == size
        assert frontier.root() == _reference_root(leaves[:size])


@given(leaves=leaf_lists, data=st.data())
def test_every_inclusion_proof_verifies(leaves: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(leaves) - 1))
    root = root_of(leaves)
    proof = inclusion_proof(index, leaves)
    assert verify_inclusion(index, len(leaves), leaves[index], proof, root)


@given(leaves=leaf_lists, data=st.data())
def test_altered_inclusion_proofs_fail(leaves: list[bytes], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(leaves) - 1))
    root = root_of(leaves)
    proof = inclusion_proof(index, leaves)
    wrong_leaf = leaf_hash(b"not in the tree")
    assert not verify_inclusion(index, len(leaves), wrong_leaf, proof, root)
    if proof:
        position = data.draw(st.integers(0, len(proof) - 1))
        bent = [*proof]
        bent[position] = hashlib.sha256(bent[position]).digest()
        assert not verify_inclusion(index, len(leaves), leaves[index], bent, root)


@given(leaves=leaf_lists, data=st.data())
def test_every_consistency_proof_verifies(leaves: list[bytes], data: st.DataObject) -> None:
    old = data.draw(st.integers(1, len(leaves)))
    proof = consistency_proof(old, leaves)
    assert verify_consistency(old, len(leaves), root_of(leaves[:old]), root_of(leaves), proof)


@given(leaves=leaf_lists.filter(lambda x: len(x) > 1), data=st.data())
def test_a_rewritten_history_is_not_consistent(leaves: list[bytes], data: st.DataObject) -> None:
    old = data.draw(st.integers(1, len(leaves) - 1))
    changed = data.draw(st.integers(0, old - 1))
    rewritten = [*leaves]
    rewritten[changed] = leaf_hash(b"rewritten" + leaves[changed])
    proof = consistency_proof(old, rewritten)
    assert not verify_consistency(
        old, len(leaves), root_of(leaves[:old]), root_of(rewritten), proof
    )


def test_proof_requests_outside_the_tree_are_refused() -> None:
    leaves = [leaf_hash(b"a")]
    with pytest.raises(ValueError, match="outside a tree of 1 leaves"):
        inclusion_proof(1, leaves)
    with pytest.raises(ValueError, match="old size 2"):
        consistency_proof(2, leaves)
    assert not verify_inclusion(0, 0, leaves[0], [], EMPTY_ROOT)
