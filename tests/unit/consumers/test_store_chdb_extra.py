"""chDB is an optional extra: with a chdb:// DSN (or none, which means chDB in the data
directory) and chDB not importable, `pinwatch migrate` and `pinwatch consume` stop with an error
that names the extra to install and the server alternative, not an ImportError traceback.

`sys.modules["chdb"] = None` is how Python itself marks a module as not importable: the import
system (and so clickhouse-connect) sees chDB as missing, as in a server-only install."""

from __future__ import annotations

import sys

import pytest

from pinwatch import cli


@pytest.fixture
def no_chdb(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "chdb", None)
    monkeypatch.setenv("PINWATCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PINWATCH_LOG_LEVEL", "ERROR")
    monkeypatch.delenv("PINWATCH_CLICKHOUSE_DSN", raising=False)


@pytest.mark.parametrize("argv", [["migrate"], ["migrate", "--check"], ["consume"]])
def test_missing_chdb_names_the_extra(
    no_chdb: None, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "pip install 'pinwatch[chdb]'" in err, err
    assert "PINWATCH_CLICKHOUSE_DSN" in err and "http(s)://" in err
    assert "Traceback" not in err


def test_a_server_dsn_does_not_need_chdb(no_chdb: None) -> None:
    from consumers.store import Store

    store = Store("http://127.0.0.1:1", "pinwatch")  # constructing touches nothing yet
    assert not store.embedded
