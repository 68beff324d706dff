"""`pinwatch settings`: show the effective settings, or the settings table of
docs/configuration.md."""

from __future__ import annotations

import argparse

from pinwatch.settings import Settings, settings_markdown, write_docs_table

HELP = "print the effective settings (or --markdown: the table of docs/configuration.md)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--markdown", action="store_true", help="print the settings table of the docs"
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="rewrite docs/configuration.md's settings table in place",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.write_docs:
        changed = write_docs_table()
        print("docs/configuration.md " + ("updated" if changed else "already current"))
        return 0
    if args.markdown:
        print(settings_markdown(), end="")
        return 0
    for name, value in settings.shown().items():
        print(f"{name}={value}")
    return 0
