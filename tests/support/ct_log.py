"""A Certificate Transparency log on loopback, built from real certificates: RFC 6962 leaves
(x509 and precert entries, with their chains in extra_data), a real Merkle tree with inclusion
and consistency proofs computed by the RFC's own recursive definitions (independent of the
client's iterative verification), and tree heads signed with the log's ECDSA key. It can grow
between polls, and misbehave on request: sign with the wrong key, truncate an entry, serve an
entry that is not the one in the tree.

Also writes a log list (JSON v3) naming it, the way a real list names real logs.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack.certs import CertificateAuthority

MAX_PER_RESPONSE = 3  # real logs cap get-entries too: the client must ask again


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 2.1 Merkle Tree Hash, recursively, over leaf *inputs*."""
    n = len(leaves)
    if n == 0:
        return _sha(b"")
    if n == 1:
        return _sha(b"\x00" + leaves[0])
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two below n
    return _sha(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 2.1.1 PATH(m, D[n])."""
    n = len(leaves)
    if n <= 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def proof(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 2.1.2 PROOF(m, D[n])."""
    return _subproof(m, leaves, True)


def _subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return _subproof(m, leaves[:k], complete) + [mth(leaves[k:])]
    return _subproof(m - k, leaves[k:], False) + [mth(leaves[:k])]


def _u24(data: bytes) -> bytes:
    return len(data).to_bytes(3, "big") + data


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def x509_entry(
    leaf: x509.Certificate, chain: list[x509.Certificate], ts: int
) -> tuple[bytes, bytes]:
    leaf_input = struct.pack(">BBQH", 0, 0, ts, 0) + _u24(_der(leaf)) + b"\x00\x00"
    extra = _u24(b"".join(_u24(_der(c)) for c in chain))
    return leaf_input, extra


def precert_entry(
    precert: x509.Certificate, tbs: bytes, chain: list[x509.Certificate], ts: int
) -> tuple[bytes, bytes]:
    """The leaf holds the precertificate's TBS without the poison extension (`tbs`: that of
    the same certificate built without it) and the hash of its issuer's key (RFC 6962 3.2)."""
    issuer_spki = (
        chain[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    leaf_input = struct.pack(">BBQH", 0, 0, ts, 1) + _sha(issuer_spki) + _u24(tbs) + b"\x00\x00"
    extra = _u24(_der(precert)) + _u24(b"".join(_u24(_der(c)) for c in chain))
    return leaf_input, extra


def issue(
    ca: CertificateAuthority, names: list[str], key: str, *, precert: bool = False
) -> tuple[x509.Certificate, bytes]:
    """A leaf for `names` on the test PKI's key `key`, issued by its intermediate, and the
    TBS of the same certificate without the precertificate poison."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.intermediate.subject)
        .public_key(ca.keys[key].public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    )
    final = builder.sign(ca.keys["intermediate"], hashes.SHA256())
    if not precert:
        return final, final.tbs_certificate_bytes
    poisoned = builder.add_extension(x509.PrecertPoison(), critical=True)
    return poisoned.sign(ca.keys["intermediate"], hashes.SHA256()), final.tbs_certificate_bytes


def cert(ca: CertificateAuthority, names: list[str], key: str, ts: int) -> tuple[bytes, bytes]:
    return x509_entry(issue(ca, names, key)[0], [ca.intermediate, ca.public_root], ts)


def pre(ca: CertificateAuthority, names: list[str], key: str, ts: int) -> tuple[bytes, bytes]:
    precert, tbs = issue(ca, names, key, precert=True)
    return precert_entry(precert, tbs, [ca.intermediate], ts)


@dataclass
class LoopbackLog:
    entries: list[tuple[bytes, bytes]] = field(default_factory=list)
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    sign_with: ec.EllipticCurvePrivateKey | None = None  # another key: a bad signature
    truncate: int | None = None  # index of an entry served cut short
    swap: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # served != logged
    padding: int = 0  # bytes of junk added to every answer: an oversized response
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        log = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                parts = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(parts.query).items()}
                log.requests.append((parts.path, params))
                status, body = log.answer(parts.path, params)
                if log.padding:
                    body = {**body, "padding": "x" * log.padding}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/log/"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, entry: tuple[bytes, bytes]) -> int:
        self.entries.append(entry)
        return len(self.entries) - 1

    def leaves(self) -> list[bytes]:
        return [leaf for leaf, _ in self.entries]

    def sth(self) -> dict[str, Any]:
        size = len(self.entries)
        root = mth(self.leaves())
        ts = int(time.time() * 1000)
        signed = struct.pack(">BBQQ", 0, 1, ts, size) + root
        signature = (self.sign_with or self.key).sign(signed, ec.ECDSA(hashes.SHA256()))
        digitally_signed = bytes([4, 3]) + len(signature).to_bytes(2, "big") + signature
        return {
            "tree_size": size,
            "timestamp": ts,
            "sha256_root_hash": base64.b64encode(root).decode(),
            "tree_head_signature": base64.b64encode(digitally_signed).decode(),
        }

    def answer(self, route: str, params: dict[str, str]) -> tuple[int, Any]:
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        if route == "/log/ct/v1/get-sth":
            return 200, self.sth()
        if route == "/log/ct/v1/get-entries":
            start, end = int(params["start"]), int(params["end"])
            if start > end or start >= len(self.entries):
                return 400, {"error": "bad range"}
            end = min(end, len(self.entries) - 1, start + MAX_PER_RESPONSE - 1)
            out = []
            for i in range(start, end + 1):
                leaf, extra = self.swap.get(i, self.entries[i])
                if i == self.truncate:
                    leaf = leaf[: len(leaf) // 2]
                out.append({"leaf_input": b64(leaf), "extra_data": b64(extra)})
            return 200, {"entries": out}
        if route == "/log/ct/v1/get-proof-by-hash":
            wanted, size = base64.b64decode(params["hash"]), int(params["tree_size"])
            leaves = self.leaves()[:size]
            for i, leaf in enumerate(leaves):
                if _sha(b"\x00" + leaf) == wanted:
                    return 200, {"leaf_index": i, "audit_path": [b64(p) for p in path(i, leaves)]}
            return 400, {"error": "no such leaf"}
        if route == "/log/ct/v1/get-sth-consistency":
            first, second = int(params["first"]), int(params["second"])
            proof_hashes = proof(first, self.leaves()[:second])
            return 200, {"consistency": [b64(p) for p in proof_hashes]}
        return 404, {"error": "no such route"}

    def log_list(self, path_: Path, *, url: str | None = None) -> Path:
        """A v3 log list with this log (usable), plus a retired one that must be ignored."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        entry = {
            "description": "pinwatch loopback test log",
            "log_id": base64.b64encode(_sha(der)).decode(),
            "key": base64.b64encode(der).decode(),
            "url": url or self.url,
            "mmd": 86400,
            "state": {"usable": {"timestamp": "2026-01-01T00:00:00Z"}},
        }
        retired = {
            **entry,
            "description": "retired",
            "url": "http://127.0.0.1:9/gone/",
            "state": {"retired": {"timestamp": "2026-06-01T00:00:00Z"}},
        }
        path_.write_text(
            json.dumps(
                {
                    "version": "1.0",
                    "log_list_timestamp": "2026-12-01T00:00:00Z",
                    "operators": [
                        {"name": "pinwatch tests", "email": [], "logs": [entry, retired]}
                    ],
                }
            )
        )
        return path_
