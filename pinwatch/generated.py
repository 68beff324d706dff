"""Generated files that are committed (alert rules, Alertmanager config, dashboard JSON):
which ones differ from what their generator makes, and rewriting only those.

The generators (`python -m alerts.generate`, `python -m dashboards.generate`) render every file
as text; a test and their `--check` compare it with what is on disk so the two never drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def out_of_date(files: Mapping[Path, str]) -> list[Path]:
    """The paths (in `files` order) that are missing or hold other text than `files` says."""
    return [path for path, text in files.items() if not path.exists() or path.read_text() != text]


def write_out_of_date(files: Mapping[Path, str]) -> list[Path]:
    """Write the out-of-date files (creating their folders); returns the paths written.
    Files already current are left untouched, so their mtimes (and make/git) stay quiet."""
    stale = out_of_date(files)
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path])
    return stale
