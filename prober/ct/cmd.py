"""`pinwatch ct watch`: follow Certificate Transparency logs for certificates issued to policy
hosts on keys nothing pins; metrics on its own /metrics port, `--once` for one poll."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import httpx

from pinwatch.policy import PolicyError, load_policy
from pinwatch.settings import Settings
from prober.ct.loglist import Log, LogListError, parse_log_list
from prober.ct.state import StateError
from prober.ct.watch import Watcher
from prober.service import serve

HELP = "follow Certificate Transparency logs for certificates on keys the policy does not pin"

log = logging.getLogger("pinwatch.ct")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    watch = sub.add_parser(
        "watch",
        help="poll the logs until stopped (or --once)",
        description="Poll every followed CT log: verify its signed tree head, read new entries "
        "(at most PINWATCH_CT_MAX_ENTRIES_PER_POLL per log and poll), prove them against the "
        "tree, and report certificates for policy hosts whose key no app version pins.",
    )
    watch.add_argument(
        "--log-list",
        type=Path,
        metavar="FILE",
        help="log list JSON (v3) to use (default: PINWATCH_CT_LOG_LIST_FILE, else fetched "
        "from PINWATCH_CT_LOG_LIST_URL)",
    )
    watch.add_argument(
        "--policy",
        type=Path,
        default=argparse.SUPPRESS,  # `pinwatch ct --policy FILE watch` works too
        help="pin policy YAML (default: $PINWATCH_POLICY_FILE)",
    )
    watch.add_argument(
        "--state-dir", type=Path, metavar="DIR", help="resume state (default: data_dir/ct)"
    )
    watch.add_argument("--port", type=int, help="metrics port (default: PINWATCH_CT_PORT, 9789)")
    watch.add_argument(
        "--once", action="store_true", help="poll every log once and exit (1 if a log failed)"
    )


def fail(message: str) -> int:
    print(f"pinwatch ct watch: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace, settings: Settings) -> int:
    updates: dict[str, object] = {}
    if args.log_list is not None:
        updates["ct_log_list_file"] = args.log_list
    if args.state_dir is not None:
        updates["ct_state_dir"] = args.state_dir
    settings = settings.model_copy(update=updates)
    try:
        policy = load_policy(settings.policy_file)
        logs = load_logs(settings)
        watcher = Watcher(policy, settings, logs)
    except (PolicyError, LogListError, StateError) as exc:
        return fail(str(exc))
    if not logs:
        return fail("the log list has no usable, qualified or readonly log to follow")
    if args.once:
        outcomes = asyncio.run(watcher.poll_all())
        for url, error in outcomes.items():
            if error is not None:
                print(f"pinwatch ct watch: {url}: {error}", file=sys.stderr)
        findings = watcher.current_findings()
        for f in findings:
            print(
                f"{f.host}: {f.kind} at {f.log} index {f.index}, valid from {f.not_before}, "
                f"key {f.pin} is not pinned"
            )
        print(f"{len(logs)} log(s) polled, {len(findings)} certificate(s) on unpinned keys")
        return 1 if any(outcomes.values()) else 0
    port = settings.ct_port if args.port is None else args.port
    return serve(
        "ct watch",
        watcher.run,
        watcher.metrics.registry,
        settings.ct_host,
        port,
        log,
        logs=len(logs),
        interval=settings.ct_poll_interval_seconds,
    )


def load_logs(settings: Settings) -> list[Log]:
    if settings.ct_log_list_file is not None:
        source = str(settings.ct_log_list_file)
        try:
            text = settings.ct_log_list_file.read_text()
        except OSError as exc:
            raise LogListError(f"cannot read the log list {source}: {exc.strerror}") from None
    else:
        source = settings.ct_log_list_url
        try:
            response = httpx.get(source, timeout=settings.ct_timeout_seconds)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise LogListError(
                f"cannot fetch the log list from {source}: {exc} (set PINWATCH_CT_LOG_LIST_FILE "
                "to a copy)"
            ) from None
        text = response.text
    return parse_log_list(text, source, settings.ct_logs)
