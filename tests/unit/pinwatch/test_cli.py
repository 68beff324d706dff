"""The `pinwatch` command: subcommands come from the `pinwatch.commands` entry points; a package
that is not installed (the production image leaves the local stack out) just offers no commands,
while a broken command module is an error, not a silently missing command."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from pinwatch import cli


def _entry_points(*pairs: tuple[str, str]) -> list[EntryPoint]:
    return [EntryPoint(name, value, cli.GROUP) for name, value in pairs]


def test_every_runtime_and_local_stack_command_is_registered() -> None:
    names = set(cli.commands())
    assert {"ingest", "consume", "migrate", "policy", "rollout", "settings", "topics"} <= names
    assert {"pins", "probe", "ct"} <= names  # the prober
    assert {"up", "demo", "kafka", "simulate"} <= names  # the local stack, from beside it


def test_a_package_left_out_offers_no_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    found = _entry_points(("settings", "pinwatch.cmd_settings"), ("up", "notinstalled.cmd_up"))
    monkeypatch.setattr(cli, "entry_points", lambda group: found)
    assert list(cli.commands()) == ["settings"]


def test_a_broken_command_module_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # the package is there, the module it names is not: a packaging bug to hear about
    found = _entry_points(("settings", "pinwatch.cmd_settings"), ("gone", "pinwatch.cmd_gone"))
    monkeypatch.setattr(cli, "entry_points", lambda group: found)
    with pytest.raises(ModuleNotFoundError, match="pinwatch.cmd_gone"):
        cli.commands()
