"""The `pinwatch` command. Each subcommand lives in the module that owns its concern and exposes
`HELP`, `add_arguments(parser)` and `run(args, settings) -> int`; this file only dispatches."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

# name -> module implementing it. Keep alphabetical; modules are imported only when used.
COMMANDS: dict[str, str] = {
    "consume": "consumers.cli",
    "ct": "prober.ct.cmd",
    "demo": "pinwatch.cmd_demo",
    "ingest": "ingest.cli",
    "kafka": "pinwatch.cmd_kafka",
    "migrate": "consumers.cmd_migrate",
    "pins": "prober.pins_cmd",
    "policy": "pinwatch.cmd_policy",
    "probe": "prober.probe_cmd",
    "rollout": "consumers.rollout.cli",
    "settings": "pinwatch.cmd_settings",
    "simulate": "pinwatch.cmd_simulate",
    "up": "pinwatch.cmd_up",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pinwatch",
        description="Pinning-failure telemetry: TLS pin-validation reports in, pages out.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in sorted(COMMANDS.items()):
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        cmd.add_argument(
            "--policy",
            type=Path,
            default=None,
            help="pin policy YAML (default: $PINWATCH_POLICY_FILE or deploy/policy.example.yaml)",
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.policy is not None:
        # Settings are read from the environment, so the flag simply overrides the variable.
        os.environ["PINWATCH_POLICY_FILE"] = str(args.policy)
    from pinwatch.logs import setup_logging
    from pinwatch.settings import Settings

    settings = Settings()
    setup_logging(settings.log_level, settings.log_format)
    try:
        return int(args._module.run(args, settings) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
