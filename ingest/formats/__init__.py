"""Input formats, each normalized into `pinwatch.record.Record`. The HTTP layer creates one
route per entry in `FORMATS`; adding a format means adding a module and a line here."""

from __future__ import annotations

from ingest.formats.base import FormatSpec

FORMATS: dict[str, FormatSpec] = {}


def register(spec: FormatSpec) -> FormatSpec:
    FORMATS[spec.name] = spec
    return spec


# Each module registers its FormatSpec on import; the order is the order of routes.
from ingest.formats import hpkp, native, nel, trustkit  # noqa: E402,F401
