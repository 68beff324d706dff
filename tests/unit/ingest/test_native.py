"""Unit tests of the native format's pieces that need no broker."""

from __future__ import annotations

import base64
import hashlib
import os
import re

import pytest

from ingest.formats.native import PIN_PATTERN
from pinwatch.policy import is_spki_pin
from pinwatch.record import (
    Record,
    decode_batch,
    encode_batch,
    encode_batch_v1,
    encode_batch_v2,
    encode_batch_v3,
    encode_json,
    envelope,
)
from pinwatch.vocabulary import Format, Kind


def test_pin_pattern_agrees_with_policy_check() -> None:
    pins = [base64.b64encode(hashlib.sha256(os.urandom(8)).digest()).decode() for _ in range(500)]
    not_pins = [
        base64.b64encode(os.urandom(31)).decode(),  # 31 bytes
        base64.b64encode(os.urandom(33)).decode(),  # 33 bytes
        base64.b64encode(os.urandom(32)).decode().rstrip("="),  # unpadded
        "B" * 43 + "=",  # bits after the 256th not zero: no SHA-256 encodes like this
        "%" * 43 + "=",
        "",
    ]
    for pin in pins:
        assert re.fullmatch(PIN_PATTERN, pin) and is_spki_pin(pin), pin
    for value in not_pins:
        assert not re.fullmatch(PIN_PATTERN, value), value


def test_every_envelope_decodes_to_the_records_encoded() -> None:
    records = [
        Record(
            id=f"r{i}",
            kind=Kind.NETWORK_ERROR,
            format=Format.NATIVE,
            app_id="a",
            host="h",
            received_at_ms=i,
            detail='é\u2028"quoted"',
        )
        for i in range(3)
    ]
    assert decode_batch(encode_batch(records)) == records
    assert decode_batch(encode_batch_v3(records)) == records
    assert decode_batch(encode_batch_v2(records)) == records
    assert decode_batch(encode_batch_v1(records)) == records
    # version 1: records encoded one by one join into the same envelope
    assert envelope([encode_json(records)[1:-1]]) == encode_batch_v1(records)


class _Chunks:
    """A request body arriving in chunks, counting how many the reader pulled."""

    def __init__(self, data: bytes, size: int) -> None:
        self.chunks = [data[i : i + size] for i in range(0, len(data), size)]
        self.pulled = 0

    async def __aiter__(self):  # noqa: ANN204 - an async generator
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk


async def test_gzip_bomb_stops_reading_and_inflating_at_the_limit() -> None:
    import gzip

    from ingest.body import _gunzip_limited
    from ingest.errors import ApiError

    bomb = gzip.compress(b"\0" * (256 << 20), compresslevel=9)  # 256 MiB inflated, ~250 KiB sent
    body = _Chunks(bomb, 4096)
    with pytest.raises(ApiError) as caught:
        await _gunzip_limited(body, max_body=1 << 20, max_out=1 << 20)
    assert caught.value.status == 413
    assert "decompressed" in caught.value.detail
    assert body.pulled < len(body.chunks) // 10  # stopped long before the end of the upload


async def test_plain_body_stops_reading_at_the_limit() -> None:
    from ingest.body import _read_limited
    from ingest.errors import ApiError

    body = _Chunks(b"x" * (8 << 20), 65_536)
    with pytest.raises(ApiError) as caught:
        await _read_limited(body, 1 << 20)
    assert caught.value.status == 413
    assert body.pulled == 17  # 16 chunks fill the limit, the 17th crosses it
