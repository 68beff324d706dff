"""The RFC 6962 HTTP API of one log (section 4): get-sth, get-entries, get-proof-by-hash,
get-sth-consistency, and the verification of the signed tree head with the log's key. Every
failure is a CtError with a message naming the log."""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from prober.ct import CtError
from prober.ct.loglist import Log
from prober.ct.tls import Reader, Truncated

SHA256, ECDSA, RSA = 4, 3, 1  # RFC 5246 HashAlgorithm and SignatureAlgorithm numbers


@dataclass(frozen=True)
class TreeHead:
    tree_size: int
    timestamp: int
    root_hash: bytes


class LogClient:
    def __init__(self, log: Log, http: httpx.AsyncClient, max_bytes: int) -> None:
        self.log = log
        self.http = http
        self.max_bytes = max_bytes  # a log's answer is read up to this, never further

    async def _get(self, path: str, **params: Any) -> Any:
        url = f"{self.log.url}ct/v1/{path}"
        body = bytearray()
        try:
            async with self.http.stream("GET", url, params=params) as response:
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise CtError(
                            "bad_response",
                            f"{url}: answer larger than {self.max_bytes} bytes "
                            "(PINWATCH_CT_MAX_RESPONSE_BYTES)",
                        )
        except httpx.TimeoutException:
            raise CtError("unreachable", f"{url}: no answer in time") from None
        except httpx.HTTPError as exc:
            raise CtError("unreachable", f"cannot reach {url}: {exc}") from None
        if response.status_code != 200:
            text = bytes(body[:200]).decode(errors="replace")
            raise CtError("http", f"{url} answered {response.status_code}: {text}")
        try:
            return json.loads(body)
        except ValueError:
            raise CtError("bad_response", f"{url} did not answer JSON") from None

    async def get_sth(self) -> TreeHead:
        body = await self._get("get-sth")
        try:
            head = TreeHead(
                int(body["tree_size"]), int(body["timestamp"]), _b64(body["sha256_root_hash"])
            )
            signature = _b64(body["tree_head_signature"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CtError("bad_response", f"{self.log.url}: malformed get-sth: {exc}") from None
        if len(head.root_hash) != 32 or head.tree_size < 0:
            raise CtError("bad_response", f"{self.log.url}: malformed get-sth root hash or size")
        self.verify(head, signature)
        return head

    def verify(self, head: TreeHead, signature: bytes) -> None:
        """RFC 6962 3.5: the log's signature over version, type, timestamp, size and root."""
        signed = struct.pack(">BBQQ", 0, 1, head.timestamp, head.tree_size) + head.root_hash
        bad = CtError(
            "bad_signature",
            f"{self.log.url}: the tree head signature (size {head.tree_size}) does not verify "
            "with the log's key from the log list",
        )
        try:
            r = Reader(signature, "tree_head_signature")
            hash_alg, sig_alg = r.uint(1, "hash"), r.uint(1, "signature algorithm")
            sig = r.vector(2, "signature")
        except Truncated:
            raise bad from None
        key = self.log.key
        try:
            if hash_alg != SHA256:
                raise bad
            if sig_alg == ECDSA and isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(sig, signed, ec.ECDSA(hashes.SHA256()))
            elif sig_alg == RSA and isinstance(key, rsa.RSAPublicKey):
                key.verify(sig, signed, padding.PKCS1v15(), hashes.SHA256())
            else:
                raise bad
        except InvalidSignature:
            raise bad from None

    async def get_entries(self, start: int, end: int) -> list[tuple[bytes, bytes]]:
        """Entries [start, end] inclusive as the API has it; a log may return fewer."""
        body = await self._get("get-entries", start=start, end=end)
        try:
            entries = [(_b64(e["leaf_input"]), _b64(e["extra_data"])) for e in body["entries"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CtError(
                "bad_response", f"{self.log.url}: malformed get-entries from {start}: {exc}"
            ) from None
        if len(entries) > end - start + 1:
            raise CtError("bad_response", f"{self.log.url}: more entries than asked for")
        return entries

    async def get_proof_by_hash(self, leaf: bytes, tree_size: int) -> tuple[int, list[bytes]]:
        body = await self._get(
            "get-proof-by-hash", hash=base64.b64encode(leaf).decode(), tree_size=tree_size
        )
        try:
            return int(body["leaf_index"]), [_b64(p) for p in body["audit_path"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CtError("bad_response", f"{self.log.url}: malformed proof: {exc}") from None

    async def get_consistency(self, first: int, second: int) -> list[bytes]:
        body = await self._get("get-sth-consistency", first=first, second=second)
        try:
            return [_b64(p) for p in body["consistency"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CtError(
                "bad_response", f"{self.log.url}: malformed consistency proof: {exc}"
            ) from None


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None
