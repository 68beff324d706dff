"""Settings: env with the PINWATCH_ prefix, and every setting documented in the README."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinwatch.settings import Settings, settings_markdown

README = Path(__file__).parent.parent / "README.md"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINWATCH_INGEST_PORT", "9999")
    monkeypatch.setenv("PINWATCH_MAX_BODY_BYTES", "2048")
    settings = Settings()
    assert settings.ingest_port == 9999 and settings.max_body_bytes == 2048


def test_bad_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PINWATCH_KAFKA_PARTITIONS", "zero")
    with pytest.raises(ValueError, match="kafka_partitions"):
        Settings()


def test_readme_settings_table_is_current() -> None:
    """`pinwatch settings --markdown` regenerates the table; the README must carry it as is."""
    assert settings_markdown() in README.read_text(), (
        "README settings table drifted: paste `pinwatch settings --markdown` into README.md"
    )
