"""What `ct watch` keeps between runs, in ct_state_dir: per log the next entry to read and the
frontier of the verified prefix (prober.ct.merkle), so a restart resumes where the last verified
poll ended and still verifies what it reads next against the log's signed tree; and the
findings (certificates on unpinned keys), capped. Files are replaced atomically (write, then
rename), so a crash mid-write leaves the previous state."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class StateError(ValueError):
    pass


@dataclass
class LogState:
    url: str
    next_index: int
    # Perfect-subtree roots of entries [0, next_index); None when the watcher started in the
    # middle of the log and has not yet proven where it stands (an inclusion proof does that).
    frontier: list[bytes] | None
    tree_size: int = 0
    root_hash: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "next_index": self.next_index,
            "frontier": None if self.frontier is None else [_b64(h) for h in self.frontier],
            "tree_size": self.tree_size,
            "root_hash": _b64(self.root_hash),
        }


@dataclass(frozen=True)
class Finding:
    host: str
    log: str
    index: int
    kind: str
    not_before: str  # ISO 8601
    not_after: str
    pin: str
    pins: list[str] = field(default_factory=list)  # leaf and proven issuers
    names: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.log, self.index, self.host)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StateError(
            f"cannot read CT watch state {path}: {exc}; move it away to start that log afresh"
        ) from None


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def load_log(self, name: str) -> LogState | None:
        path = self.directory / f"log-{name}.json"
        raw = _read(path)
        if raw is None:
            return None
        try:
            frontier = raw["frontier"]
            return LogState(
                url=str(raw["url"]),
                next_index=int(raw["next_index"]),
                frontier=None
                if frontier is None
                else [base64.b64decode(h, validate=True) for h in frontier],
                tree_size=int(raw["tree_size"]),
                root_hash=base64.b64decode(raw["root_hash"], validate=True),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"CT watch state {path} is damaged ({exc}); move it away") from None

    def save_log(self, name: str, state: LogState) -> None:
        _write(self.directory / f"log-{name}.json", state.to_json())

    def load_findings(self) -> list[Finding]:
        raw = _read(self.directory / "findings.json") or []
        try:
            return [Finding(**item) for item in raw]
        except TypeError as exc:
            raise StateError(f"CT findings in {self.directory} are damaged: {exc}") from None

    def save_findings(self, findings: list[Finding]) -> None:
        _write(self.directory / "findings.json", [asdict(f) for f in findings])
