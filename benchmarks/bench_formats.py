"""How fast are the client-format parsers, next to the native batch parser in the same run?

Decodes and parses, in-process (no HTTP, no Kafka), the request bodies of reports
tests/support/payloads.py builds from real certificates, and prints reports per second and the ratio
to the native baseline:

- baseline: a native batch of pin validations, each with a 3-certificate DER chain,
- TrustKit iOS (3 PEM certificates, 64-column CRLF), TrustKit-Android (served and validated
  chains, 76-column), HPKP (both chains), one report per document as the clients send them,
- NEL: a batch of network-error items (no certificates).

Certificates repeat in real traffic (one chain per server key and CDN edge), and the parser
remembers recent ones; "unseen chain" clears that memory before every report.

    .venv/bin/python benchmarks/bench_formats.py               # quick
    .venv/bin/python benchmarks/bench_formats.py --seconds 5   # steadier numbers
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.certs import CertificateAuthority  # noqa: E402
from devstack.clients import (  # noqa: E402
    hpkp_report,
    native_batch,
    nel_report,
    pin_validation,
    trustkit_android,
    trustkit_ios,
)
from ingest.formats import FORMATS  # noqa: E402
from ingest.formats.base import FormatSpec, IngestContext  # noqa: E402
from ingest.formats.pem import _parse_pem  # noqa: E402
from pinwatch.policy import parse_policy  # noqa: E402
from pinwatch.privacy import DeviceHasher  # noqa: E402
from pinwatch.settings import Settings  # noqa: E402

HOST = "api.bench.test"
APP = "com.example.bench"


def _context(ca: CertificateAuthority) -> IngestContext:
    policy = parse_policy(
        f"""apps: [{{id: {APP}, ingest_keys: ["bench-ingest-key-0123456789"]}}]
hosts:
  - host: {HOST}
    pins:
      - {{sha256: "{ca.pin("primary")}", role: primary}}
      - {{sha256: "{ca.pin("backup")}", role: backup}}
"""
    )
    return IngestContext(
        app_id=APP,
        received_at_ms=int(time.time() * 1000),
        client_network="203.0.113.0/24",
        hash_device=DeviceHasher("bench"),
        settings=Settings(),
        policy=policy,
    )


def _rate(spec: FormatSpec, body: bytes, per_doc: int, ctx: IngestContext, seconds: float,
          forget: Callable[[], None]) -> float:  # fmt: skip
    """Reports per second from the body as sent, best of three rounds of `seconds` / 3."""
    best = 0.0
    for _ in range(3):
        n, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds / 3:
            forget()
            spec.parse(spec.decode(body, ctx.settings), ctx)
            n += 1
        best = max(best, n * per_doc / elapsed)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="time per case (default 1.5)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ca = CertificateAuthority.load(Path(tmp), HOST)
    ctx = _context(ca)
    rotated, known = ca.chain("rotated"), [ca.pin("primary"), ca.pin("backup")]
    batch = 100
    cases = [
        ("native (baseline)", "native",
         native_batch([pin_validation(HOST, rotated, result="pin_mismatch")] * batch, app=APP),
         batch),
        ("trustkit ios", "trustkit",
         trustkit_ios(HOST, rotated, known_pins=known, bundle_id=APP), 1),
        ("trustkit android", "trustkit",
         trustkit_android(HOST, rotated, known_pins=known, package=APP), 1),
        ("trustkit ios, unseen chain", "trustkit-uncached",
         trustkit_ios(HOST, rotated, known_pins=known, bundle_id=APP), 1),
        ("hpkp", "hpkp", hpkp_report(HOST, rotated, known_pins=known), 1),
        ("nel", "nel", [nel_report(f"https://{HOST}/", "tcp.reset")] * batch, batch),
    ]  # fmt: skip
    baseline = 0.0
    print(f"{'case':<28} {'reports/s':>12} {'vs native':>10}")
    for label, fmt, document, per_doc in cases:
        # "unseen chain": every chain as if never seen before (parsers remember certificates)
        forget = _parse_pem.cache_clear if fmt.endswith("-uncached") else lambda: None
        spec = FORMATS[fmt.removesuffix("-uncached")]
        rate = _rate(spec, orjson.dumps(document), per_doc, ctx, args.seconds, forget)
        baseline = baseline or rate
        print(f"{label:<28} {rate:>12,.0f} {rate / baseline:>9.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
