"""The `pinwatch` command. Subcommands register themselves as entry points of the
`pinwatch.commands` group (pyproject.toml): a module exposing `HELP`, `add_arguments(parser)` and
`run(args, settings) -> int`. This file only dispatches, so the runtime never imports the local
stack that adds its own commands (`up`, `demo`, ...) from beside it."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

GROUP = "pinwatch.commands"


def commands() -> dict[str, ModuleType]:
    """name -> the module implementing it, for every installed subcommand."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if not found:
        raise SystemExit(
            "pinwatch: no subcommands are registered; install the package "
            "(`pip install -e .` from a checkout) so its entry points exist"
        )
    loaded = {}
    for name in sorted(found):
        package = found[name].value.split(".", 1)[0]
        try:
            loaded[name] = found[name].load()
        except ModuleNotFoundError as exc:
            # The production image leaves the local stack (devstack) out: its commands are
            # simply not offered there. Any other missing module is a real error.
            if exc.name != package:
                raise
    return loaded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pinwatch",
        description="Pinning-failure telemetry: TLS pin-validation reports in, pages out.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in commands().items():
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        cmd.add_argument(
            "--policy",
            type=Path,
            default=None,
            help="pin policy YAML (default: $PINWATCH_POLICY_FILE, else the packaged example)",
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
    from pinwatch.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"pinwatch {args.command}: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    try:
        return int(args._module.run(args, settings) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
