"""Unit tests of the native format's pieces that need no broker."""

from __future__ import annotations

import base64
import hashlib
import os
import re

import orjson

from ingest.formats.native import PIN_PATTERN
from ingest.producer import envelope
from pinwatch.policy import is_spki_pin
from pinwatch.record import Format, Kind, Record, encode_batch


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


def test_envelope_is_exactly_encode_batch() -> None:
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
    joined = envelope([orjson.dumps(records)[1:-1]])
    assert joined == encode_batch(records)
    assert envelope([orjson.dumps(r) for r in records]) == encode_batch(records)
