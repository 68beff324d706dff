"""`pinwatch settings`: show the effective settings, or the README's settings table."""

from __future__ import annotations

import argparse

from pinwatch.settings import Settings, settings_markdown

HELP = "print the effective settings (or --markdown: the README table)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="print the README settings table")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print(settings_markdown(), end="")
        return 0
    for name, value in settings.model_dump().items():
        shown = "***" if ("key" in name or "token" in name) and value else value
        print(f"PINWATCH_{name.upper()}={shown}")
    return 0
