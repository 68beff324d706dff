"""`pinwatch rollout HOST`: ask the consumer's query API, print a table, JSON or an HTML report.

An HTTP client on purpose: in embedded mode only the consumer process may open ClickHouse, so the
question goes to where the data is (settings.consumer_host/port, bearer settings.admin_token).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from pinwatch.settings import Settings

HELP = "which pins clients see for HOST and what would fail if a pin set were enforced"

# Exit codes a script can branch on: 0 ready, 3 not ready, 1 the question could not be answered.
EXIT_READY, EXIT_NOT_READY, EXIT_ERROR = 0, 3, 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", help="host name as reported (e.g. api.acme.com)")
    parser.add_argument("--since", help="window: 30m, 24h, 7d or an ISO 8601 time (default 7d)")
    parser.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="[ROLE:]SHA256",
        help="candidate pin (repeat); without a role the first is primary, the rest backups",
    )
    parser.add_argument("--pin-set", help="a pin set named in the host's policy (default: current)")
    parser.add_argument("--app", help="only this app id")
    parser.add_argument("--app-version", help="only this app version")
    parser.add_argument("--platform", help="only this platform (ios, android, ...)")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report")
    parser.add_argument("--url", help="query API base URL (default: the consumer's host/port)")


def _params(args: argparse.Namespace) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = [("pin", p) for p in args.pin]
    for name in ("since", "pin_set", "app", "app_version", "platform"):
        value = getattr(args, name)
        if value:
            params.append((name, value))
    return params


class Progress:
    """A one-line elapsed-time indicator on stderr while the query runs (only at a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self.enabled = sys.stderr.isatty()

    def _spin(self) -> None:
        started, frames, i = time.monotonic(), "|/-\\", 0
        while not self._stop.wait(0.2):
            elapsed = time.monotonic() - started
            sys.stderr.write(f"\r{frames[i % 4]} {self.label} {elapsed:5.1f}s")
            sys.stderr.flush()
            i += 1
        sys.stderr.write("\r" + " " * (len(self.label) + 12) + "\r")

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread.start()
        else:
            print(f"{self.label} ...", file=sys.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()


def fetch(settings: Settings, host: str, params: list[tuple[str, str]], url: str | None) -> Any:
    base = url or f"http://{settings.consumer_host}:{settings.consumer_port}"
    response = httpx.get(
        f"{base.rstrip('/')}/v1/rollout/{host}",
        params=params,
        headers={"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"},
        timeout=settings.rollout_query_timeout_seconds,
    )
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise RuntimeError(f"query API answered {response.status_code}: {detail}")
    return response.json()


def run(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.rollout.html import render_html
    from consumers.rollout.text import render_text

    try:
        with Progress(f"querying rollout of {args.host}"):
            answer = fetch(settings, args.host, _params(args), args.url)
    except httpx.HTTPError as exc:
        where = args.url or f"{settings.consumer_host}:{settings.consumer_port}"
        print(
            f"cannot reach the query API at {where} (is `pinwatch consume` running?): {exc}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_text(answer))
    if args.html:
        args.html.write_text(render_html(answer), encoding="utf-8")
        print(f"HTML report written to {args.html}", file=sys.stderr)
    return EXIT_READY if answer["verdict"]["ready"] else EXIT_NOT_READY
