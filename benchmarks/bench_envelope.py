"""What the Kafka envelope costs each side: ingest encoding a message, the consumer turning it into
the columns of an insert, version 3 (per-report columns as buffers) against version 2 (the same
columns as msgpack lists) in the same process. Ingest writes version 3 from
`pinwatch.record.BUFFERS_FROM` records a message on, version 2 below: this is how that line was
drawn.

For messages of 1 to 1,000 reports (the benchmark's realistic mix of
`bench_consumer.py`: successes and failures with real chains, network errors), best of five
repeats of each, microseconds a report:

- encode: `pinwatch.record.encode_batch_v3` and `encode_batch_v2` (ingest encodes once per
  Kafka message);
- decode + columns: the consumer's `decode` of each message, then one batch of all of them into
  the `reports` Arrow table and its metric counts (`Batch.reports_table`, `Batch.tally`), as the
  consumer does between Kafka and the insert (classification taken from a fixed label, the same
  for both).

Also the bytes a report takes on Kafka. No broker and no ClickHouse: the rest of either path is
the same for both versions (benchmarks/bench_consumer.py measures it whole).

    .venv/bin/python benchmarks/bench_envelope.py
    .venv/bin/python benchmarks/bench_envelope.py --reports 50000 --repeat 9

Figures: benchmarks/README.md ("Consumer").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_consumer import HOST, make_records  # noqa: E402
from consumers.batch import Batch, Part  # noqa: E402
from consumers.classify import Classification  # noqa: E402
from consumers.decode import decode  # noqa: E402
from devstack.certs import CertificateAuthority  # noqa: E402
from pinwatch.record import BUFFERS_FROM, Record, encode_batch_v2, encode_batch_v3  # noqa: E402
from pinwatch.vocabulary import Kind  # noqa: E402

SIZES = (1, 10, 20, 50, 100, 1000)
VERSIONS: dict[str, Callable[[list[Record]], bytes]] = {
    "v2": encode_batch_v2,
    "v3": encode_batch_v3,
}


def best(fn: Callable[[], Any], repeat: int) -> float:
    """The fastest of `repeat` runs of fn, in seconds (the least disturbed by the machine)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _labels(profile: Any) -> Any:
    pin = profile.kind == Kind.PIN_VALIDATION.value
    c = Classification("", [], pin, "", False, "", "", False, False, "")
    return c, (profile.app_id, profile.host), pin


def to_columns(values: list[bytes]) -> None:
    """What the consumer does with messages between Kafka and the insert, less the lookups."""
    batch = Batch()
    for offset, value in enumerate(values):
        block, _ = decode(value)
        batch.add(Part(("t", 0, offset), block, [_labels(p) for p in block.profiles]))
    batch.reports_table()
    batch.tally()


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="pinwatch-bench-") as work:
        records = make_records(CertificateAuthority.load(Path(work), host=HOST), args.reports)
    print(
        f"{args.reports:,} reports, best of {args.repeat}, microseconds a report "
        "(v3 / v2: the new envelope's cost as a share of the old one's)\n"
    )
    header = (
        f"{'reports a message':>18}{'encode v2':>11}{'v3':>7}{'v3/v2':>7}"
        f"{'decode+columns v2':>19}{'v3':>7}{'v3/v2':>7}{'bytes v2':>10}{'v3':>6}"
    )
    print(header)
    print(f"(ingest writes v3 from {BUFFERS_FROM} reports a message on)")
    for size in SIZES:
        messages = [records[i : i + size] for i in range(0, len(records), size)]
        encode: dict[str, float] = {}
        columns: dict[str, float] = {}
        size_of: dict[str, float] = {}
        for name, encoder in VERSIONS.items():
            values = [encoder(m) for m in messages]
            encode[name] = best(lambda e=encoder, ms=messages: [e(m) for m in ms], args.repeat)
            columns[name] = best(lambda v=values: to_columns(v), args.repeat)
            size_of[name] = sum(map(len, values)) / len(records)
        us = {k: v / len(records) * 1e6 for k, v in encode.items()}
        cs = {k: v / len(records) * 1e6 for k, v in columns.items()}
        print(
            f"{size:>18,}{us['v2']:>11.2f}{us['v3']:>7.2f}{us['v3'] / us['v2']:>7.2f}"
            f"{cs['v2']:>19.2f}{cs['v3']:>7.2f}{cs['v3'] / cs['v2']:>7.2f}"
            f"{size_of['v2']:>10.0f}{size_of['v3']:>6.0f}",
            flush=True,
        )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Envelope v3 against v2: ingest's encode and the consumer's decode + "
        "columns, microseconds a report, by reports a message."
    )
    parser.add_argument("--reports", type=int, default=20_000, help="reports in all (20000)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats of each (best kept)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
