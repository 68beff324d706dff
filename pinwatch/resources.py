"""Files shipped inside the packages (example policy, generated rules and dashboards, the local
stack's Kafka build file and demo PKI), found through `importlib.resources` so every command works
from any directory of an installed wheel, not only from a checkout."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def package_path(package: str, *parts: str) -> Path:
    """A real filesystem path to `parts` inside `package`. Wheels are installed unpacked, so
    the Traversable is a Path; a zipped install (which pinwatch does not support: engines read
    these files by path) fails here with a clear message instead of later."""
    resource = files(package).joinpath(*parts)
    if not isinstance(resource, Path):
        raise RuntimeError(f"{package}/{'/'.join(parts)} is not on the filesystem ({resource!r})")
    return resource


EXAMPLE_POLICY = package_path("pinwatch", "examples", "policy.example.yaml")
