"""`python -m pinwatch.healthcheck`: the container image's HEALTHCHECK, without curl or wget.

One image runs every part (deploy/Dockerfile), so the check does not know which one it is in:
it asks `/healthz` of the ingest and the consumer ports (PINWATCH_INGEST_PORT,
PINWATCH_CONSUMER_PORT) on loopback, or the URLs given, and succeeds when one answers 200.
Liveness only: readiness (Kafka, ClickHouse) is each part's `/readyz`, which an orchestrator
asks itself.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

from pinwatch.settings import Settings


def default_urls(settings: Settings) -> list[str]:
    return [
        f"http://127.0.0.1:{settings.ingest_port}/healthz",
        f"http://127.0.0.1:{settings.consumer_port}/healthz",
    ]


def healthy(url: str, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - loopback
            return answer.status == 200, f"{url}: {answer.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {getattr(exc, 'reason', exc)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pinwatch.healthcheck",
        description="Exit 0 when a pinwatch process on this host answers /healthz with 200 "
        "(by default the ingest and consumer ports of the settings), 1 otherwise.",
    )
    parser.add_argument("--url", action="append", help="URL to ask instead (repeatable)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per URL (3)")
    args = parser.parse_args(argv)
    problems = []
    for url in args.url or default_urls(Settings()):
        ok, what = healthy(url, args.timeout)
        if ok:
            return 0
        problems.append(what)
    print("unhealthy: " + "; ".join(problems), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
