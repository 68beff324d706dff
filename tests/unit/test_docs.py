"""The documentation holds together: README.md stays short, and every relative link and every
repository path the docs name (`ingest/app.py`, `docs/runbook.md#pinwatchrotationbreakage`)
exists, so a file that moves takes its mentions with it or a test says where they are."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.paths import REPO

README_MAX_LINES = 300

DOCS = sorted(
    [REPO / "README.md", REPO / "benchmarks" / "README.md", *(REPO / "docs").glob("*.md")]
)

# A backticked token is read as a repository path when its first part is one of these.
TOP_LEVEL = {
    ".ci",
    "alerts",
    "benchmarks",
    "consumers",
    "dashboards",
    "deploy",
    "devstack",
    "docs",
    "ingest",
    "pinwatch",
    "tests",
}
TOP_FILES = {"README.md", "pyproject.toml"}

# Files the operator creates beside the shipped ones (Compose reads them), never committed.
USER_CREATED = {"deploy/.env", "deploy/alertmanager-secrets"}

# docs/alerting.md is being rewritten on another branch (wip/alerts), which also names the
# tiered test files; until it lands, its older text names the flat test files of before the
# restructure. Nothing else may name a missing path.
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`((?:[^`\n]|\n(?![ \t]*\n))+)`")  # may wrap, within a paragraph
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
PATHLIKE = re.compile(r"[\w.*-]+(/[\w.*-]*)*")


def prose(text: str) -> str:
    """The text outside fenced code blocks (commands there run in a user's shell, not ours)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(path.read_text()).splitlines():
        if line.startswith("#"):
            base = slug(line.lstrip("#"))
            name, n = base, 0
            while name in found:  # repeated headings get -1, -2, ...
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def repo_paths(text: str) -> set[str]:
    """Repository paths named in inline code, e.g. `consumers/steps.py`, `dashboards/json/*.json`,
    `tests/unit/pinwatch/test_settings.py::test_x`, `docs/runbook.md#anchor`."""
    found = set()
    for code in INLINE_CODE.findall(prose(text)):
        for token in code.split():
            token = token.strip(",;:()'\"").split("::", 1)[0]
            if not PATHLIKE.fullmatch(token.split("#", 1)[0]):
                continue
            first = token.split("/", 1)[0]
            if ("/" in token and first in TOP_LEVEL) or token.split("#", 1)[0] in TOP_FILES:
                found.add(token)
    return found


def missing(doc: Path, target: str, base: Path) -> str | None:
    """Why `target` (a path, maybe with #anchor, relative to `base`) does not resolve, or None."""
    where, _, anchor = target.partition("#")
    if where:
        if "*" in where:
            if not list(base.glob(where)):
                return "matches no file"
            return None
        path = (base / where).resolve()
        if not path.exists():
            return "no such file"
    else:
        path = doc
    if anchor and path.suffix == ".md" and "<" not in anchor and anchor not in anchors(path):
        return f"no heading #{anchor} in {path.relative_to(REPO)}"
    return None


def test_readme_fits_in_300_lines() -> None:
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = {}
    for target in LINK.findall(prose(doc.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        why = missing(doc, target, doc.parent)
        if why:
            broken[target] = why
    assert broken == {}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_named_repository_paths_exist(doc: Path) -> None:
    broken = {}
    for target in sorted(repo_paths(doc.read_text())):
        if target.rstrip("/") in USER_CREATED:
            continue
        why = missing(doc, target, REPO)
        if why:
            broken[target] = why
    assert broken == {}


def test_the_checks_see_what_they_check(tmp_path: Path) -> None:
    """The scanner finds paths in prose, not in fenced commands, and resolves anchors."""
    text = (
        "See `ingest/app.py` and `pinwatch consume --policy\ndeploy/nowhere.yaml`,\n"
        "`tests/unit/test_docs.py::test_x`, `docs/runbook.md#pinwatchrotationbreakage`, a\n"
        "`dashboards/json/*.json` glob, but not `app.id` or `application/json`.\n"
        "```sh\ncat ingest/absent.py\n```\n"
    )
    assert repo_paths(text) == {
        "ingest/app.py",
        "deploy/nowhere.yaml",
        "tests/unit/test_docs.py",
        "docs/runbook.md#pinwatchrotationbreakage",
        "dashboards/json/*.json",
    }
    assert missing(tmp_path, "deploy/nowhere.yaml", REPO) == "no such file"
    assert missing(tmp_path, "docs/runbook.md#pinwatchrotationbreakage", REPO) is None
    assert missing(tmp_path, "docs/runbook.md#no-such-alert", REPO) is not None
    assert missing(tmp_path, "dashboards/json/*.json", REPO) is None
    assert slug("Running the stack: `pinwatch up`") == "running-the-stack-pinwatch-up"
