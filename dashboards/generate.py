"""Write the dashboards' JSON from the Python that defines them.

    python -m dashboards.generate            # rewrite dashboards/json/*.json
    python -m dashboards.generate --check    # exit 1 when the committed JSON differs

The JSON is committed so Grafana's file provisioning (deploy/grafana) can load it as is; a test
runs `--check`'s comparison so the two never drift.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards import overview, pipeline, rollout
from dashboards.common import DEFAULT_RUNBOOK_URL
from pinwatch.generated import out_of_date, write_out_of_date
from pinwatch.resources import package_path
from pinwatch.settings import Settings

JSON_DIR = package_path("dashboards", "json")

# file name -> builder; the file name is the dashboard uid.
DASHBOARDS: dict[str, Callable[[str], Any]] = {
    overview.UID: overview.build,
    rollout.UID: rollout.build,
    pipeline.UID: pipeline.build,
}


def render(runbook_url: str = DEFAULT_RUNBOOK_URL) -> dict[str, str]:
    """file name -> JSON text of every dashboard."""
    out = {}
    for uid, build in DASHBOARDS.items():
        model = build(runbook_url).build()
        out[f"{uid}.json"] = json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
    return out


def files(directory: Path = JSON_DIR, runbook_url: str = DEFAULT_RUNBOOK_URL) -> dict[Path, str]:
    """path in `directory` -> JSON text of every dashboard."""
    return {directory / name: text for name, text in render(runbook_url).items()}


def drift(directory: Path = JSON_DIR, runbook_url: str = DEFAULT_RUNBOOK_URL) -> list[str]:
    """Names of the files that differ from (or are missing next to) what the generator makes."""
    expected = files(directory, runbook_url)
    changed = [path.name for path in out_of_date(expected)]
    stale = [p.name for p in directory.glob("*.json") if p not in expected]
    return sorted(changed + stale)


def write(directory: Path = JSON_DIR, runbook_url: str = DEFAULT_RUNBOOK_URL) -> list[str]:
    return [path.name for path in write_out_of_date(files(directory, runbook_url))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dashboards.generate",
        description="Generate pinwatch's Grafana dashboards (JSON) from dashboards/*.py.",
    )
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if the JSON is out of date"
    )
    parser.add_argument(
        "--out", type=Path, default=JSON_DIR, help=f"output directory (default: {JSON_DIR})"
    )
    parser.add_argument(
        "--runbook-url",
        default=None,
        help="where docs/runbook.md is published; dashboards link to it "
        f"(default: PINWATCH_RUNBOOK_URL, else {DEFAULT_RUNBOOK_URL})",
    )
    args = parser.parse_args(argv)
    if args.runbook_url is None:
        args.runbook_url = Settings().runbook_url
    if args.check:
        stale = drift(args.out, args.runbook_url)
        for name in stale:
            print(f"out of date: {args.out / name} (run python -m dashboards.generate)")
        return 1 if stale else 0
    for name in write(args.out, args.runbook_url):
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
