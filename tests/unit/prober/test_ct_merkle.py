"""RFC 6962 Merkle hashing and proof verification (prober.ct.merkle) against the published
reference vectors, and against proofs computed by the RFC's recursive definitions
(tests/support/ct_log.py) for every pair of tree sizes up to 40; tampered proofs fail.

Tier: unit.
"""

from __future__ import annotations

from prober.ct import merkle
from tests.support.ct_log import mth, path, proof

# RFC 6962's reference leaves and the root of each prefix (sizes 0..8), as every CT
# implementation's tests carry them.
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
# Audit paths from the same reference data: leaf 0 and leaf 5 in the tree of 8.
INCLUSION = {
    0: [
        bytes.fromhex(h)
        for h in (
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        )
    ],
    5: [
        bytes.fromhex(h)
        for h in (
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        )
    ],
}


def frontier_of(leaves: list[bytes]) -> list[bytes]:
    frontier: list[bytes] = []
    for i, leaf in enumerate(leaves):
        frontier = merkle.append(frontier, i, merkle.leaf_hash(leaf))
    return frontier


def test_roots_match_the_reference_vectors() -> None:
    for size, expected in enumerate(ROOTS):
        assert merkle.root(frontier_of(LEAVES[:size])) == expected, size
        assert mth(LEAVES[:size]) == expected, size  # the test log's tree agrees too


def test_reference_inclusion_proofs() -> None:
    for index, audit in INCLUSION.items():
        leaf = merkle.leaf_hash(LEAVES[index])
        assert path(index, LEAVES) == audit
        assert merkle.verify_inclusion(leaf, index, 8, audit, ROOTS[8])
        assert not merkle.verify_inclusion(leaf, index, 4, audit, ROOTS[8])
        assert not merkle.verify_inclusion(leaf, (index + 1) % 8, 8, audit, ROOTS[8])
        assert not merkle.verify_inclusion(leaf, index, 8, audit[:-1], ROOTS[8])


def test_every_size_pair_proves_and_tampering_fails() -> None:
    leaves = [bytes([i, i * 7 % 256]) for i in range(40)]
    for n in range(1, len(leaves) + 1):
        head = mth(leaves[:n])
        for m in range(n):
            audit = path(m, leaves[:n])
            leaf = merkle.leaf_hash(leaves[m])
            # The frontier of [0, m) read off leaf m's audit path is the one built entry by
            # entry: a watcher that starts mid-log continues exactly as one that read it all.
            assert merkle.frontier_from_inclusion(leaf, m, n, audit, head) == frontier_of(
                leaves[:m]
            ), (m, n)
        for m in range(0, n + 1):
            consistency = proof(m, leaves[:n]) if m else []
            old = mth(leaves[:m])
            assert merkle.verify_consistency(m, n, old, head, consistency), (m, n)
            if consistency:
                bent = [consistency[0][::-1], *consistency[1:]]
                assert not merkle.verify_consistency(m, n, old, head, bent), (m, n)
                assert not merkle.verify_consistency(m, n, head, head, consistency) or m == n
            if 0 < m < n:  # the proof is for the tree of n, not of n - 1
                assert not merkle.verify_consistency(m, n, old, mth(leaves[: n - 1]), consistency)
