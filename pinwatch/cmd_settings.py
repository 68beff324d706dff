"""`pinwatch settings`: show the effective settings, or the README's settings table."""

from __future__ import annotations

import argparse

from pinwatch.settings import Settings, settings_markdown, write_readme_table

HELP = "print the effective settings (or --markdown: the README table)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="print the README settings table")
    parser.add_argument(
        "--write-readme", action="store_true", help="rewrite README.md's settings table in place"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.write_readme:
        print("README.md updated" if write_readme_table() else "README.md already current")
        return 0
    if args.markdown:
        print(settings_markdown(), end="")
        return 0
    for name, value in settings.shown().items():
        print(f"{name}={value}")
    return 0
