"""Version 3 envelopes (what ingest writes for large messages: the per-report columns as
buffers). The consumer takes them whole when every report is valid, and otherwise sinks only
the bad reports, as it does for the other versions; a batch of any mix of versions builds the
same `reports` rows. Each test runs with a small message and a large one."""

from __future__ import annotations

import sys
from array import array
from typing import Any

import msgspec
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumers.batch import Batch, Part
from consumers.classify import Classification
from consumers.decode import decode
from pinwatch.record import (
    BUFFERS_FROM,
    NULL_INT,
    PROFILE_FIELDS,
    ROW_INDEX,
    ROW_NUMBERS,
    Record,
    decode_batch,
    encode_batch,
    encode_batch_v2,
    encode_batch_v3,
)
from pinwatch.vocabulary import ErrorCategory, Kind, Result
from tests.support.names import TEST_APP, TEST_HOST
from tests.support.payloads import kafka_record

EVENT = ROW_INDEX["event_at_ms"]
_PORT = PROFILE_FIELDS.index("port")


SIZES = pytest.mark.parametrize("n", [4, 4 * (BUFFERS_FROM // 4 + 1)])


def records(n: int = 4) -> list[Record]:
    """`n` (a multiple of 4) reports: two pin validations of one profile, a network error, a
    success, again and again."""
    return [r for _ in range(n // 4) for r in four()]


def four() -> list[Record]:
    return [
        kafka_record(app_id=TEST_APP, host=TEST_HOST, device="d1", count=3, event_at_ms=5),
        kafka_record(app_id=TEST_APP, host=TEST_HOST, device="dévice ü", client_network="::/48"),
        kafka_record(
            app_id=TEST_APP,
            host=TEST_HOST,
            kind=Kind.NETWORK_ERROR,
            result=None,
            error=ErrorCategory.TIMEOUT,
            count=0,
        ),
        kafka_record(app_id=TEST_APP, host=TEST_HOST, result=Result.OK, count=2**32 - 1),
    ]


def ints(buffer: bytes, kind: str) -> array[int]:
    values = array(kind, buffer)
    if sys.byteorder != "little":
        values.byteswap()
    return values


def packed(values: array[int]) -> bytes:
    if sys.byteorder != "little":
        values.byteswap()
    return values.tobytes()


def set_number(envelope: dict[str, Any], name: str, row: int, value: int) -> None:
    """Report `row`'s `name` (a number column) in an envelope as msgpack decodes it."""
    n = len(envelope["profile"]) // 4
    values = ints(envelope["numbers"], "q")
    values[ROW_NUMBERS.index(name) * n + row] = value
    envelope["numbers"] = packed(values)


def spoil_first_id_of_row(envelope: dict[str, Any], row: int) -> None:
    """The last byte of report `row`'s id, not UTF-8 any more."""
    offsets, data = envelope["strings"]
    end = ints(offsets, "i")[row + 1]
    envelope["strings"][1] = data[: end - 1] + b"\xff" + data[end:]


@SIZES
def test_buffers_decode_to_the_same_reports_as_lists(n: int) -> None:
    sent = records(n)
    v3, rejected = decode(encode_batch_v3(sent))
    v2, _ = decode(encode_batch_v2(sent))
    assert not rejected and v3.arrays is not None and v2.arrays is None
    assert v3.rows == v2.rows and v3.profile == v2.profile and v3.profiles == v2.profiles
    assert v3.span() == v2.span() and v3.ids == [r.id for r in sent]
    assert v3.rows[EVENT] == [5, None, None, None] * (n // 4)
    assert decode_batch(encode_batch_v3(sent)) == sent


@SIZES
def test_a_batch_of_either_version_builds_the_same_rows(n: int) -> None:
    sent = records(n)
    tables = []
    for blocks in (
        [decode(encode_batch_v3(sent))[0]],
        [decode(encode_batch_v2(sent))[0]],
        [decode(encode_batch_v3(sent[:2]))[0], decode(encode_batch_v2(sent[2:]))[0]],
        [decode(encode_batch_v3(sent[:-2]))[0], decode(encode_batch_v3(sent[-2:]))[0]],
        [decode(encode_batch(sent[:-2]))[0], decode(encode_batch(sent[-2:]))[0]],
    ):
        batch = Batch()
        for offset, block in enumerate(blocks):
            labels = [_labels(p) for p in block.profiles]
            batch.add(Part(("t", 0, offset), block, labels))
        tables.append(batch.reports_table())
        counts = batch.tally()
        assert counts.kinds == {"pin_validation": 3 * n // 4, "network_error": n // 4}
        assert sum(counts.pins.values()) == (3 + 1 + 2**32 - 1) * n // 4
    columns = ["id", "received_at", "event_at", "device", "client_network", "count"]
    first = tables[0].select(columns)
    assert all(t.select(columns).equals(first) for t in tables[1:])
    assert first.column("count").to_pylist() == [3, 1, 0, 2**32 - 1] * (n // 4)
    assert first.column("event_at").null_count == 3 * n // 4
    assert first.column("device").to_pylist()[:2] == ["d1", "dévice ü"]
    assert first.schema.field("count").type == pa.uint32()


@SIZES
def test_a_bad_value_sinks_its_report_only(n: int) -> None:
    good, _, _, bad = four()  # (of two profiles)
    rest = records(n)[2:]
    for spoil, field_named in [
        (lambda e: e["profiles"][1].__setitem__(_PORT, "x"), "port"),  # a profile's field
        (lambda e: set_number(e, "count", 1, 2**32), "count"),
        (lambda e: set_number(e, "count", 1, -1), "count"),
        (lambda e: set_number(e, "received_at_ms", 1, NULL_INT), "received_at_ms"),
        (lambda e: set_number(e, "event_at_ms", 1, 2**62), "event_at_ms"),
        (lambda e: spoil_first_id_of_row(e, 1), "id"),
    ]:
        envelope = msgspec.msgpack.decode(encode_batch_v3([good, bad, *rest]))
        spoil(envelope)
        block, rejected = decode(msgspec.msgpack.encode(envelope))
        if field_named == "port":  # every report of the bad one's profile
            kept = [r for r in [good, *rest] if r.result != Result.OK]
        else:
            kept = [good, *rest]
        assert block.ids == [r.id for r in kept]
        assert rejected[0].reason == "invalid_record" and rejected[0].index == 1
        assert rejected[0].detail.startswith(field_named), rejected[0].detail
        # the dead letter is a one-report envelope that decodes
        assert len(decode(rejected[0].value)[1]) == 1


@SIZES
def test_broken_buffers_sink_the_message_and_a_bad_profile_its_report(n: int) -> None:
    sent = records(n)
    envelope = msgspec.msgpack.decode(encode_batch_v3(sent))
    envelope["profile"] = (7).to_bytes(4, "little") + envelope["profile"][4:]
    block, rejected = decode(msgspec.msgpack.encode(envelope))
    assert block.ids == [r.id for r in sent[1:]] and "profile" in rejected[0].detail
    for spoil, named in [
        (lambda e: e["strings"].__setitem__(0, e["strings"][0][:-4]), "strings"),
        (lambda e: e.__setitem__("numbers", e["numbers"][:-8]), "numbers"),
        (lambda e: e.__setitem__("profile", e["profile"][:-1]), "profile"),
        (lambda e: e["strings"].__setitem__(0, bytes(reversed(e["strings"][0]))), "strings"),
    ]:
        envelope = msgspec.msgpack.decode(encode_batch_v3(sent))
        spoil(envelope)
        block, rejected = decode(msgspec.msgpack.encode(envelope))
        assert not len(block) and [r.reason for r in rejected] == ["undecodable_message"]
        assert named in rejected[0].detail, rejected[0].detail


def test_ingest_writes_large_messages_as_buffers_and_small_ones_as_lists() -> None:
    sent = records(BUFFERS_FROM + 2)
    assert encode_batch(sent[: BUFFERS_FROM - 1]) == encode_batch_v2(sent[: BUFFERS_FROM - 1])
    assert encode_batch(sent[:BUFFERS_FROM]) == encode_batch_v3(sent[:BUFFERS_FROM])
    block, rejected = decode(encode_batch_v3([]))  # (ingest writes none; another producer may)
    assert not len(block) and not rejected


def _labels(profile: Any) -> Any:
    pin = profile.kind == Kind.PIN_VALIDATION.value
    c = Classification("", [], pin, "", False, "", "", False, False, "")
    return c, (profile.app_id, profile.host), pin


MESSAGE = encode_batch_v3(records(8))
# Where each buffer lies in the message (and the rest), so every one gets corrupted: integers
# drawn over the whole message would favour its first bytes.
_PARTS = msgspec.msgpack.decode(MESSAGE)
REGIONS = [(0, len(MESSAGE))] + [
    (MESSAGE.index(b), MESSAGE.index(b) + len(b))
    for b in (_PARTS["profile"], *_PARTS["strings"], _PARTS["numbers"])
]


@hsettings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(REGIONS), st.integers(0, 10**6), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ),
    cut=st.integers(1, len(MESSAGE)).map(lambda n: len(MESSAGE) + 1 - n),  # mostly whole
)
def test_no_corruption_of_a_message_escapes_decoding(
    edits: list[tuple[tuple[int, int], int, int]], cut: int
) -> None:
    """Whatever bytes a v3 message holds, decoding answers without raising: the message is
    dead-lettered whole, or each of its reports is kept or dead-lettered, once."""
    value = bytearray(MESSAGE)
    for (start, end), at, byte in edits:
        value[start + at % (end - start)] = byte
    block, rejected = decode(bytes(value[:cut]))
    if any(r.index is None for r in rejected):
        assert len(rejected) == 1 and not len(block)
        return
    kept, dropped = list(block.index), [r.index for r in rejected]
    assert sorted(kept + dropped) == list(range(len(kept) + len(dropped)))
    table_of(block)  # and what is kept builds an insert


def table_of(block: Any) -> None:
    batch = Batch()
    batch.add(Part(("t", 0, 0), block, [_labels(p) for p in block.profiles]))
    batch.reports_table()
    batch.tally()
