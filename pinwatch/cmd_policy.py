"""`pinwatch policy`: check the pin policy file, and pull the live policy's levers.

The levers (`status`, `set-phase`, `kill`, `unkill`, `history`) go through the process that owns
the live state, the consumer's admin API (PINWATCH_POLICY_OWNER_URL, the admin token): it checks
the change, records it with its audit row in ClickHouse, and the ingest edges serve the new
signed document within seconds. `check` and `public-key` read local files only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from pinwatch.jose import JoseError, public_pem
from pinwatch.livepolicy import Change
from pinwatch.policy import PolicyError, load_policy
from pinwatch.policyclient import AdminError, PolicyAdmin, default_actor
from pinwatch.policykeys import load_signing_keys
from pinwatch.settings import Settings

HELP = "check the pin policy; show and change the live policy (phase, percentage, kill switch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n", 1)[1].replace("\n", " ")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="load and validate the policy file, and summarize it")
    # `pinwatch policy check --policy FILE` as well as `pinwatch policy --policy FILE check`;
    # SUPPRESS keeps the subcommand from resetting a --policy given before it.
    check.add_argument("--policy", type=Path, default=argparse.SUPPRESS, help="pin policy YAML")

    status = actions.add_parser("status", help="phase, percentage and kill switches served now")
    status.add_argument("--json", action="store_true", help="the owner's answer as JSON")

    phase = actions.add_parser("set-phase", help="a host's phase and enforcement percentage")
    phase.add_argument("host", help="a host of the policy")
    phase.add_argument("phase", choices=["report_only", "enforce"])
    phase.add_argument(
        "--percent",
        type=float,
        default=None,
        help="enforce only: share of devices that enforce, 0 to 100 in 0.01 steps (default 100)",
    )
    _change_arguments(phase, reason_required=False)

    kill = actions.add_parser("kill", help="stop enforcement for an app (or one of its hosts)")
    kill.add_argument("app", help="an app id of the policy")
    kill.add_argument("--host", default="", help="only this host (default: every host)")
    _change_arguments(kill, reason_required=True)

    unkill = actions.add_parser("unkill", help="lift a kill switch set by `kill`")
    unkill.add_argument("app", help="an app id of the policy")
    unkill.add_argument("--host", default="", help="the host the kill was set for, if one")
    _change_arguments(unkill, reason_required=False)

    history = actions.add_parser("history", help="the audit log of changes, newest first")
    history.add_argument("--limit", type=int, default=20, help="most changes shown (default 20)")
    history.add_argument("--app", default=None, help="changes that reach this app")
    history.add_argument("--host", default=None, help="changes that reach this host")
    history.add_argument("--json", action="store_true", help="as JSON")

    public_key = actions.add_parser(
        "public-key", help="the JWK Set that verifies policy documents (from the local keys)"
    )
    public_key.add_argument("--pem", action="store_true", help="the signing key's public PEM")


def _change_arguments(parser: argparse.ArgumentParser, *, reason_required: bool) -> None:
    parser.add_argument(
        "--reason", required=reason_required, default="", help="why (kept in the audit log)"
    )
    parser.add_argument(
        "--actor", default=None, help="who (default: user@hostname), kept in the audit log"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "check":
        return _check(settings)
    if args.action == "public-key":
        return _public_key(args, settings)
    admin = PolicyAdmin(settings)
    try:
        if args.action == "status":
            answer = admin.status()
            print(orjson.dumps(answer).decode() if args.json else render_status(answer))
        elif args.action == "history":
            records = admin.history(args.limit, args.app, args.host)
            print(orjson.dumps(records).decode() if args.json else render_history(records))
        else:
            record = admin.change(_change(args))
            print(describe_change(record))
    except AdminError as exc:
        print(f"pinwatch policy {args.action}: {exc}", file=sys.stderr)
        return 2 if exc.refused else 1
    return 0


def _change(args: argparse.Namespace) -> Change:
    actor = args.actor or default_actor()
    if args.action == "set-phase":
        return Change(
            "set_phase", actor, args.reason, host=args.host, phase=args.phase, percent=args.percent
        )
    return Change(args.action, actor, args.reason, app=args.app, host=args.host)


def _check(settings: Settings) -> int:
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


def _public_key(args: argparse.Namespace, settings: Settings) -> int:
    try:
        keys = load_signing_keys(settings)
    except JoseError as exc:
        print(f"pinwatch policy public-key: {exc}", file=sys.stderr)
        return 1
    if args.pem:
        print(public_pem(keys.signing.public_key()).decode(), end="")
    else:
        print(orjson.dumps(keys.jwk_set(), option=orjson.OPT_INDENT_2).decode())
    return 0


def _percent(value: float) -> str:
    return f"{value:g} %"


def describe_change(record: dict[str, Any]) -> str:
    what = record.get("what", {})
    action, app, host = record["action"], record["app"], record["host"]
    if action == "set_phase":
        (p0, p1), (c0, c1) = what["phase"], what["percent"]
        text = f"{host}: {p1} at {_percent(c1)} (was {p0} at {_percent(c0)})"
    elif action in ("kill", "unkill"):
        scope = f"{app} on {host}" if host else f"{app} on every host"
        text = f"kill switch {'ON' if action == 'kill' else 'off'} for {scope}"
    else:  # policy_file: the owner started with another policy file
        old, new = (sha[:12] or "-" for sha in what.get("policy_sha256", ["", ""]))
        dropped = what.get("dropped_host_settings", []) + what.get("dropped_kills", [])
        text = f"policy file {old} -> {new}" + (
            f", dropped {', '.join(dropped)}" if dropped else ""
        )
    reason = f" (reason: {record['reason']})" if record.get("reason") else ""
    return f"version {record['version']}: {text}{reason}; by {record['actor']}"


def render_status(answer: dict[str, Any]) -> str:
    lines = [f"live policy version {answer['version']} (changed {answer['changed_at'] or '-'})"]
    width = max((len(h["host"]) for h in answer["hosts"]), default=4)
    for h in answer["hosts"]:
        percent = f"{h['enforce_percent']:g} %" if h["phase"] == "enforce" else ""
        killed = f"  KILLED for {', '.join(h['killed_for'])}" if h["killed_for"] else ""
        lever = "" if h["set_by_lever"] else "  (from the policy file)"
        lines.append(f"  {h['host']:<{width}}  {h['phase']:<11} {percent:>8}{killed}{lever}")
    for k in answer["kills"]:
        scope = k["host"] or "every host"
        lines.append(
            f"  kill switch: {k['app']} on {scope} since {k['at']} by {k['actor']}: {k['reason']}"
        )
    return "\n".join(lines)


def render_history(records: list[dict[str, Any]]) -> str:
    if not records:
        return "no changes recorded"
    return "\n".join(f"{r['changed_at']}  {describe_change(r)}" for r in records)
