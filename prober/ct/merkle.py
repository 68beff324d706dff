"""RFC 6962 Merkle tree hashing and proof verification (the verification algorithms of RFC 9162
section 2.1), plus the compact "frontier" of a tree prefix: the roots of the perfect subtrees
that make up its first n leaves, which is all a watcher needs to keep to extend a verified
prefix entry by entry and recompute its root."""

from __future__ import annotations

import hashlib


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


def append(frontier: list[bytes], size: int, leaf: bytes) -> list[bytes]:
    """The frontier of `size + 1` leaves from that of `size` leaves and the next leaf hash.
    Like a binary counter: each carry merges two perfect subtrees of equal size."""
    out = list(frontier)
    merged = leaf
    k = size
    while k & 1:
        merged = node_hash(out.pop(), merged)
        k >>= 1
    out.append(merged)
    return out


def root(frontier: list[bytes]) -> bytes:
    """The tree head of the prefix a frontier describes: in RFC 6962's tree every left subtree
    is perfect, so the root folds the perfect subtrees from the smallest up."""
    if not frontier:
        return EMPTY_ROOT
    head = frontier[-1]
    for subtree in reversed(frontier[:-1]):
        head = node_hash(subtree, head)
    return head


def _inclusion(
    leaf: bytes, index: int, size: int, proof: list[bytes]
) -> tuple[bytes, list[bytes]] | None:
    """RFC 9162 2.1.3.2: the root the audit path leads to, and the left siblings met on the way
    (bottom up), or None when the path has the wrong length for index and size."""
    if index >= size:
        return None
    fn, sn = index, size - 1
    head = leaf
    lefts = []
    for sibling in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            head = node_hash(sibling, head)
            lefts.append(sibling)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            head = node_hash(head, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None
    return head, lefts


def verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], head: bytes) -> bool:
    found = _inclusion(leaf, index, size, proof)
    return found is not None and found[0] == head


def frontier_from_inclusion(
    leaf: bytes, index: int, size: int, proof: list[bytes], head: bytes
) -> list[bytes] | None:
    """The frontier of the first `index` leaves, read off a verified audit path of leaf
    `index`: its left siblings are exactly the perfect subtrees covering [0, index). None when
    the proof does not verify."""
    found = _inclusion(leaf, index, size, proof)
    if found is None or found[0] != head:
        return None
    return list(reversed(found[1]))


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> bool:
    """RFC 9162 2.1.4.2: does the tree of `size2` leaves extend the one of `size1`?"""
    if size1 > size2:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if size1 == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # a power of two: the old root is itself a node of the path
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == root1 and sr == root2 and sn == 0
