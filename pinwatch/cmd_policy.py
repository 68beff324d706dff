"""`pinwatch policy`: validate a pin policy file the way every service will at start."""

from __future__ import annotations

import argparse
import sys

from pinwatch.policy import PolicyError, load_policy
from pinwatch.settings import Settings

HELP = "validate the pin policy file and summarize it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["check"], help="check: load and validate")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        policy = load_policy(settings.policy_file)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{settings.policy_file}: {len(policy.app_ids)} apps, {len(policy.hosts)} hosts")
    for host in policy.hosts:
        roles = ", ".join(f"{p.role}:{p.label or p.sha256[:8]}" for p in host.pins)
        sub = " (+subdomains)" if host.include_subdomains else ""
        print(f"  {host.host}{sub}  phase={host.phase}  pins=[{roles}]")
    return 0
