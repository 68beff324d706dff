"""Settings: env with the PINWATCH_ prefix, and every setting documented in
docs/configuration.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pinwatch.resources import EXAMPLE_POLICY
from pinwatch.settings import (
    Settings,
    SettingsError,
    load_settings,
    settings_markdown,
    shown,
    write_docs_table,
)
from tests.support.paths import REPO

CONFIGURATION_DOC = REPO / "docs" / "configuration.md"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINWATCH_INGEST_PORT", "9999")
    monkeypatch.setenv("PINWATCH_MAX_BODY_BYTES", "2048")
    settings = Settings()
    assert settings.ingest_port == 9999 and settings.max_body_bytes == 2048


def test_bad_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINWATCH_KAFKA_PARTITIONS", "zero")
    with pytest.raises(ValueError, match="kafka_partitions"):
        Settings()


def test_docs_settings_table_is_current() -> None:
    """`pinwatch settings --write-docs` regenerates the table; docs/configuration.md must carry it
    as is."""
    assert settings_markdown() in CONFIGURATION_DOC.read_text(), (
        "docs/configuration.md's settings table drifted: run `pinwatch settings --write-docs`"
    )


def test_write_docs_rewrites_only_between_the_markers(tmp_path: Path) -> None:
    doc = tmp_path / "configuration.md"
    doc.write_text("# Settings\n<!-- settings:begin -->\n| stale |\n<!-- settings:end -->\nafter\n")
    assert write_docs_table(doc) is True
    text = doc.read_text()
    assert text == (
        "# Settings\n<!-- settings:begin -->\n"
        + settings_markdown()
        + "<!-- settings:end -->\nafter\n"
    )
    assert write_docs_table(doc) is False  # already current: the file is left alone


SECRET_VALUES = {
    "PINWATCH_DEVICE_HASH_KEY": "device-key-that-must-never-show-0123456789",
    "PINWATCH_ADMIN_TOKEN": "admin-token-that-must-never-show",
    "PINWATCH_CLICKHOUSE_DSN": "https://pinwatch:dsn-password-never-shown@ch.example:8443/db",
    "PINWATCH_ALERT_WEBHOOK_URL": "https://hooks.example/services/T0/B0/webhook-token-never",
    "PINWATCH_ALERT_ONCALL_WEBHOOK_URL": "https://bridge.example/page?token=oncall-token-never",
    "PINWATCH_KAFKA_SASL_PASSWORD": "kafka-sasl-secret-never-shown",
    "PINWATCH_KAFKA_SSL_KEY_PASSWORD": "kafka-key-secret-never-shown",
}


def _cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pinwatch.cli", *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_settings_command_masks_every_secret() -> None:
    done = _cli("settings", env=SECRET_VALUES)
    assert done.returncode == 0, done.stderr
    for value in SECRET_VALUES.values():
        for piece in ("never", "password", "token-"):
            assert piece not in done.stdout, done.stdout
        assert value not in done.stdout
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines())
    # Which server it is stays visible; the credentials do not.
    assert lines["PINWATCH_CLICKHOUSE_DSN"] == "https://pinwatch:***@ch.example:8443/***"
    assert lines["PINWATCH_DEVICE_HASH_KEY"] == "***"
    assert lines["PINWATCH_ALERT_WEBHOOK_URL"] == "https://hooks.example/***"
    for kafka_secret in ("PINWATCH_KAFKA_SASL_PASSWORD", "PINWATCH_KAFKA_SSL_KEY_PASSWORD"):
        assert lines[kafka_secret] == "***"


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        ("", ""),
        ("plain-secret", "***"),
        ("chdb:///var/lib/pinwatch/chdb", "chdb:///var/lib/pinwatch/chdb"),
        ("http://ch:8123", "http://ch:8123"),
        ("http://u:p@ch:8123/?password=x", "http://u:***@ch:8123/***"),
        ("not a url: at all", "***"),
    ],
)
def test_shown_keeps_where_and_hides_what(secret: str, expected: str) -> None:
    assert shown(secret) == expected


def test_production_refuses_local_defaults_naming_each_variable() -> None:
    done = _cli("settings", env={"PINWATCH_ENV": "production"})
    assert done.returncode == 2
    for variable in ("PINWATCH_DEVICE_HASH_KEY", "PINWATCH_ADMIN_TOKEN", "PINWATCH_POLICY_FILE"):
        assert variable in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert "pinwatch-local-development-key" not in done.stderr


def test_production_with_real_secrets_starts_and_never_echoes_them(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(EXAMPLE_POLICY.read_text())
    env = {**SECRET_VALUES, "PINWATCH_ENV": "production", "PINWATCH_POLICY_FILE": str(policy)}
    assert _cli("settings", env=env).returncode == 0
    short = {**env, "PINWATCH_DEVICE_HASH_KEY": "short-but-secret"}
    done = _cli("settings", env=short)
    assert done.returncode == 2 and "32 characters" in done.stderr
    assert "short-but-secret" not in done.stderr + done.stdout


def test_invalid_settings_never_quote_the_input() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(env="production", admin_token="a-secret-admin-token-to-hide")
    assert "a-secret-admin-token-to-hide" not in str(err.value)
    assert "PINWATCH_DEVICE_HASH_KEY" in str(err.value)
