"""What the consumer inserts at once: a `Batch` of `Part`s, one per Kafka message.

A part is one message's reports as decoded (`consumers.decode.Block`: distinct profiles, and per
report its profile's index and its own values) with each profile's classification and metric
labels. Nothing is rewritten per report: the batch's columns are built when it is written, the
per-report ones by concatenating lists, the others by indexing the profiles' values with numpy
and Arrow (`reports_table`), and its metric counts are summed per profile (`tally`). Dropping
client retries found in ClickHouse replaces a part by a smaller one (`drop_stored`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from consumers.classify import Classification
from consumers.decode import Block
from consumers.metrics import BatchCounts
from consumers.schema import (
    EVIDENCE_COLUMN_NAMES,
    ID_DEDUP_FORMATS,
    REPORT_COLUMN_NAMES,
    REPORT_COLUMN_TYPES,
)
from pinwatch.record import NULL_INT, ROW_INDEX
from pinwatch.vocabulary import Kind

TopicPartition = tuple[str, int]
Origin = tuple[str, int, int]  # Kafka (topic, partition, offset)
# A profile's classification, its metric labels and whether they are pin validation labels.
Labels = tuple[Classification, tuple[str, ...], bool]
PIN_VALIDATION = Kind.PIN_VALIDATION.value


@dataclass(slots=True)
class Part:
    """One Kafka message's reports: `labels[i]` classifies `block.profiles[i]`. `store=False`:
    counted, not inserted (stored before a crash, see consumers.dedup.Progress)."""

    origin: Origin
    block: Block
    labels: list[Labels]
    store: bool = True
    evidence: list[tuple[Any, ...]] = field(default_factory=list)  # sampled rows to insert

    def dedup_ids(self) -> tuple[set[str], list[str]]:
        """(apps, ids) of the reports deduplicated by id (consumers/schema.py says which):
        without a tuple per report when, as usual, one app's native reports fill the part."""
        profiles = self.block.profiles
        apps = {p.app_id for p in profiles if p.format in ID_DEDUP_FORMATS}
        if len(apps) == len(profiles) == 1 or all(p.format in ID_DEDUP_FORMATS for p in profiles):
            return apps, self.block.ids
        return apps, [key[1] for key in _all_keys(self) if key is not None]


class _Group(NamedTuple):
    profiles: list[Any]
    labels: list[Labels]
    index: np.ndarray  # per report: its profile's position in `profiles`
    counts: np.ndarray  # per report: its `count`
    parts: int  # how many parts it groups


@dataclass
class Batch:
    """Parts of consecutive Kafka messages, and what committing them will count."""

    parts: list[Part] = field(default_factory=list)
    evidence: list[tuple[Any, ...]] = field(default_factory=list)
    first: dict[TopicPartition, int] = field(default_factory=dict)
    last: dict[TopicPartition, int] = field(default_factory=dict)
    # Kafka timestamps of the first and last message per partition (see `token`).
    stamps: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    rows: int = 0  # reports to insert
    nbytes: int = 0
    started: float = 0.0
    messages: int = 0
    duplicates: int = 0  # reports dropped as client retries
    # `reports_table()` and `tally()` once built (the batch is complete): built while the
    # insert before it runs, so the next insert never waits for them; forgotten on a change.
    table: pa.Table | None = None
    counts: BatchCounts | None = None
    group: _Group | None = None

    @property
    def empty(self) -> bool:
        return not self.last

    def add_message(self, origin: Origin, timestamp: int, nbytes: int, started: float) -> None:
        """A Kafka message was handled into this batch (whatever it held)."""
        topic, partition, offset = origin
        key = (topic, partition)
        self._changed()
        if self.empty:
            self.started = started
        self.first.setdefault(key, offset)
        self.last[key] = offset
        stamps = self.stamps.get(key)
        self.stamps[key] = (stamps[0] if stamps else timestamp, timestamp)
        self.nbytes += nbytes
        self.messages += 1

    def add(self, part: Part) -> None:
        self._changed()
        self.evidence.extend(part.evidence)
        if len(part.block):
            self.parts.append(part)
            if part.store:
                self.rows += len(part.block)

    def ids(self) -> list[str]:
        """Report ids to insert, in order."""
        return list(chain.from_iterable(p.block.ids for p in self.parts if p.store))

    def token(self) -> str:
        """Insert deduplication token: the exact offset ranges this batch holds, and the
        timestamps of their ends. A replay after a crash has the same messages, so the same
        token; a topic deleted and created again reuses the offsets, not the timestamps (with
        offsets alone, its first batches were dropped as copies of the old topic's)."""
        spans = ",".join(
            f"{t}:{p}:{self.first[(t, p)]}-{o}@{self.stamps.get((t, p), '')}"
            for (t, p), o in sorted(self.last.items())
        )
        return hashlib.sha256(spans.encode()).hexdigest()[:40]

    def commit_offsets(self) -> dict[TopicPartition, int]:
        return {tp: offset + 1 for tp, offset in self.last.items()}

    def dedup_ids(self) -> tuple[set[str], list[str]]:
        """(apps, ids) of the reports to insert that are deduplicated by id; a report of another
        app with the same id may be among them (`dedup_keys` tells exactly)."""
        apps: set[str] = set()
        ids: list[str] = []
        for part in self.parts:
            if part.store:
                more_apps, more_ids = part.dedup_ids()
                apps |= more_apps
                ids.extend(more_ids)
        return apps, ids

    def dedup_keys(self) -> set[tuple[str, str]]:
        """(app_id, id) of the reports to insert that are deduplicated by id."""
        return {k for part in self.parts if part.store for k in _all_keys(part) if k is not None}

    def newest_received(self) -> int:
        return max((p.block.span()[1] for p in self.parts if len(p.block)), default=0)

    def drop_stored(self, stored: set[tuple[str, str]]) -> int:
        """Remove the reports (and evidence) already in ClickHouse, (app_id, id) in `stored`:
        they are client retries. Returns how many."""
        if not stored:
            return 0
        self._changed()
        dropped = 0
        for n, part in enumerate(self.parts):
            if not part.store:
                continue
            keep = [k not in stored for k in _all_keys(part)]
            if all(keep):
                continue
            gone = keep.count(False)
            dropped += gone
            self.parts[n] = Part(part.origin, part.block.take(keep), part.labels, part.store)
            # (part.evidence is in self.evidence already, filtered below)
        self.parts = [p for p in self.parts if len(p.block)]
        self.rows -= dropped
        self.duplicates += dropped
        self.evidence = [
            e for e in self.evidence if (e[_EVIDENCE_APP], e[_EVIDENCE_ID]) not in stored
        ]
        return dropped

    def _changed(self) -> None:
        # (an aged batch the writer could not take yet may still grow)
        self.table = self.counts = self.group = None

    def tally(self) -> BatchCounts:
        """The metric increments committing this batch causes, summed per profile (built once;
        call it only once the batch is complete)."""
        if self.counts is None:
            self.counts = self._count()
        return self.counts

    def _count(self) -> BatchCounts:
        counts = BatchCounts()
        counts.messages, counts.duplicates = self.messages, self.duplicates
        group = self._group(self.parts)
        sizes, sums = _per_profile(group.index, group.counts, len(group.profiles))
        for labels, profile, n, total in zip(
            group.labels, group.profiles, sizes, sums, strict=True
        ):
            if not n:
                continue
            _, key, pin = labels
            (counts.pins if pin else counts.network)[key] += total
            counts.kinds[profile.kind] += n
        return counts

    def _group(self, parts: list[Part]) -> _Group:
        """The distinct profiles of `parts` (all of the batch's, or those to store), their
        labels, and each report's index among them: consecutive messages repeat the same few,
        so per-profile work (values, counts) is done once per batch, not once per message.
        Built once for the table and the counts alike when every part is stored."""
        if self.group is not None and self.group.parts == len(parts):
            return self.group
        distinct: dict[Any, int] = {}
        profiles: list[Any] = []
        labels: list[Labels] = []
        codes = []
        for part in parts:
            remap = []
            for profile, lab in zip(part.block.profiles, part.labels, strict=True):
                code = distinct.get(profile) if lab is not None else None
                if code is None:
                    code = len(profiles)
                    profiles.append(profile)
                    # A profile that did not classify has no report left in its block.
                    labels.append(_UNUSED if lab is None else lab)
                    if lab is not None:
                        distinct[profile] = code
                remap.append(code)
            codes.append(np.asarray(remap, dtype=np.int32)[part.block.codes()])
        index = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int32)
        group = _Group(profiles, labels, index, _ints(parts, ROW_INDEX["count"]), len(parts))
        if len(parts) == len(self.parts):
            self.group = group
        return group

    def reports_table(self) -> pa.Table:
        """The `reports` rows (consumers.schema.REPORT_COLUMNS) as an Arrow table (built once;
        call it only once the batch is complete)."""
        if self.table is None:
            self.table = self._build_table()
        return self.table

    def _build_table(self) -> pa.Table:
        parts = [p for p in self.parts if p.store]
        profiles, labels, index, counts, _ = self._group(parts)
        sizes = [len(p.block) for p in parts]
        columns = {
            "id": _strings(parts, ROW_INDEX["id"]),
            "received_at": _times(parts, ROW_INDEX["received_at_ms"]),
            "event_at": _times(parts, ROW_INDEX["event_at_ms"]),
            "sent_at": _times(parts, ROW_INDEX["sent_at_ms"]),
            "device": _strings(parts, ROW_INDEX["device"]),
            "client_network": _strings(parts, ROW_INDEX["client_network"]),
            "count": pa.array(counts.astype(np.uint32), pa.uint32()),
            "kafka_topic": _repeat([p.origin[0] for p in parts], sizes, None),
            "kafka_partition": _repeat([p.origin[1] for p in parts], sizes, pa.uint32()),
            "kafka_offset": _repeat([p.origin[2] for p in parts], sizes, pa.uint64()),
        }
        positions = _Positions(index)
        for name, value in _BY_PROFILE.items():
            values = [value(p, c) for p, (c, _, _) in zip(profiles, labels, strict=True)]
            columns[name] = _expand(values, positions, _ARROW[name])
        return pa.Table.from_arrays(
            [columns[name] for name in REPORT_COLUMN_NAMES], names=list(REPORT_COLUMN_NAMES)
        )


def _all_keys(part: Part) -> list[tuple[str, str] | None]:
    """Per report of the part: (app_id, id) when deduplicated by id, else None."""
    profiles = part.block.profiles
    apps = [p.app_id if p.format in ID_DEDUP_FORMATS else None for p in profiles]
    return [
        (apps[code], i) if apps[code] is not None else None  # type: ignore[misc]
        for code, i in zip(part.block.profile, part.block.ids, strict=True)
    ]


def _per_profile(index: np.ndarray, counts: np.ndarray, n: int) -> tuple[list[int], list[int]]:
    """(reports, sum of `count`) per profile index."""
    if n == 1:
        return [len(index)], [int(counts.sum())]
    if not len(index):
        return [0] * n, [0] * n
    sizes = np.bincount(index, minlength=n)
    if len(counts) * int(counts.max()) < 2**53:  # float64 sums are exact below it
        sums = np.bincount(index, weights=counts, minlength=n).astype(np.int64)
    else:  # (np.add.at is exact at any size, and ten times slower)
        sums = np.zeros(n, dtype=np.int64)
        np.add.at(sums, index, counts)
    return sizes.tolist(), sums.tolist()


def _chunks(parts: list[Part], i: int) -> list[Any]:
    """Per-report column `i` of the parts in as few pieces as it takes: a version 3 block's
    buffer as it is, the lists of consecutive other blocks joined into one."""
    chunks: list[Any] = []
    pending: list[list[Any]] = []
    for part in parts:
        arrays = part.block.arrays
        if arrays is None:
            pending.append(part.block.column(i))
            continue
        if pending:
            chunks.append(list(chain.from_iterable(pending)))
            pending = []
        chunks.append(arrays[i])
    if pending or not chunks:
        chunks.append(list(chain.from_iterable(pending)))
    return chunks


def _strings(parts: list[Part], i: int) -> pa.Array:
    chunks = [c if isinstance(c, pa.Array) else pa.array(c, pa.string()) for c in _chunks(parts, i)]
    return chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)


def _ints(parts: list[Part], i: int) -> np.ndarray:
    """A number column as int64, `NULL_INT` for None."""
    chunks = [c if isinstance(c, np.ndarray) else _int64(c) for c in _chunks(parts, i)]
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def _int64(values: list[int | None]) -> np.ndarray:
    """Through numpy's iterator (12 ns a value, against 28 straight from the list) unless some
    are None."""
    try:
        return np.fromiter(values, dtype=np.int64, count=len(values))
    except TypeError:
        return np.asarray([NULL_INT if v is None else v for v in values], dtype=np.int64)


def _times(parts: list[Part], i: int) -> pa.Array:
    """Milliseconds as a timestamp column (nullable)."""
    values = _ints(parts, i)
    nulls = values == NULL_INT
    return pa.array(values, _MS, mask=nulls if nulls.any() else None)


def _repeat(values: list[Any], sizes: list[int], kind: pa.DataType | None) -> pa.Array:
    """`values[i]` repeated `sizes[i]` times; `kind` None: a dictionary of strings."""
    if kind is None:
        distinct = {v: n for n, v in enumerate(dict.fromkeys(values))}
        index = np.repeat(np.asarray([distinct[v] for v in values], dtype=np.int32), sizes)
        return pa.DictionaryArray.from_arrays(index, pa.array(list(distinct), pa.string()))
    return pa.array(np.repeat(np.asarray(values, dtype=np.uint64), sizes), kind)


class _Positions:
    """Per report, the position of its value among a column's distinct values, from the
    per-profile positions (`codes`). Columns share them: most hold one value in a batch, or a
    value per profile, so most need no per-report work of their own."""

    def __init__(self, index: np.ndarray) -> None:
        self.index = index  # the profile per report
        self._known: dict[tuple[int, ...], np.ndarray] = {}

    def __call__(self, codes: list[int]) -> np.ndarray:
        key = tuple(codes)
        found = self._known.get(key)
        if found is None:
            if not any(codes):
                found = np.zeros(len(self.index), dtype=np.int32)
            elif key == tuple(range(len(codes))):
                found = self.index
            else:
                found = np.asarray(codes, dtype=np.int32)[self.index]
            self._known[key] = found
        return found


def _expand(values: list[Any], positions: _Positions, kind: pa.DataType | None) -> pa.Array:
    """Each report's value of a per-profile column: numbers by numpy indexing; strings and
    lists of strings as an Arrow dictionary (the distinct values once, an index per report: no
    value copied per report), which ClickHouse reads into LowCardinality, String and
    Array(String) columns alike. `kind` None: LowCardinality."""
    distinct: dict[Any, int] = {}
    codes = [
        distinct.setdefault(tuple(v) if isinstance(v, list) else v, len(distinct)) for v in values
    ]
    at = positions(codes)
    if kind is not None and kind in _NUMPY:
        return pa.array(np.asarray(list(distinct), dtype=_NUMPY[kind])[at], kind)
    dictionary = pa.array(
        [list(v) if kind is not None and pa.types.is_list(kind) else v for v in distinct],
        kind or pa.string(),
    )
    return pa.DictionaryArray.from_arrays(pa.array(at, pa.int32()), dictionary)


_NUMPY = {pa.uint8(): np.uint8, pa.uint16(): np.uint16}
_MS = pa.timestamp("ms", tz="UTC")
_UNUSED: Labels = (Classification("", [], True, "", False, "", "", False, False, ""), (), False)
# Per-profile columns: the value from the profile and its classification.
_BY_PROFILE: dict[str, Callable[[Any, Classification], Any]] = {
    "app_id": lambda p, c: p.app_id,
    "app_version": lambda p, c: p.app_version,
    "platform": lambda p, c: p.platform,
    "os_version": lambda p, c: p.os_version,
    "network": lambda p, c: p.network,
    "host": lambda p, c: p.host,
    "policy_host": lambda p, c: c.policy_host,
    "port": lambda p, c: p.port,
    "kind": lambda p, c: p.kind,
    "format": lambda p, c: p.format,
    "result": lambda p, c: p.result or "",
    "pin_match": lambda p, c: c.pin_match,
    "enforced": lambda p, c: 1 if c.enforced else 0,
    "phase": lambda p, c: c.phase,
    "cause": lambda p, c: c.cause,
    "observed_pins": lambda p, c: c.observed_pins,
    "client_pins": lambda p, c: list(p.observed_pins),
    "client_pins_consistent": lambda p, c: 1 if c.client_pins_consistent else 0,
    "leaf_pin": lambda p, c: c.leaf_pin,
    "chain_public_root": lambda p, c: 1 if c.public_root else 0,
    "error": lambda p, c: p.error or "",
    "detail": lambda p, c: p.detail,
}
_ARROW_TYPES = {
    "String": pa.string(),
    "UInt8": pa.uint8(),
    "UInt16": pa.uint16(),
    "Array(String)": pa.list_(pa.string()),
}
_ARROW: dict[str, pa.DataType | None] = {
    name: None if kind.startswith("LowCardinality") else _ARROW_TYPES[kind]
    for name, kind in zip(REPORT_COLUMN_NAMES, REPORT_COLUMN_TYPES, strict=True)
    if name in _BY_PROFILE
}
assert set(_BY_PROFILE) | {
    "id",
    "received_at",
    "event_at",
    "sent_at",
    "device",
    "client_network",
    "count",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
} == set(REPORT_COLUMN_NAMES), "every reports column is built"

_EVIDENCE_APP = EVIDENCE_COLUMN_NAMES.index("app_id")
_EVIDENCE_ID = EVIDENCE_COLUMN_NAMES.index("report_id")
