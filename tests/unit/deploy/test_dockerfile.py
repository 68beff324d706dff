"""deploy/Dockerfile, checked offline: no container engine runs here or in CI, so the image is
never built in the tests. What stands in for a build: the instructions a reviewer checks by
hand (non-root USER, a HEALTHCHECK on /healthz, multi-stage, the locked dependencies installed
with their hashes), every COPY source present and not excluded by .dockerignore (the commonest
way a Dockerfile that never ran is broken), and the lock files covering every runtime
dependency pyproject.toml declares, at versions it allows."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.paths import REPO

ROOT = REPO
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCKS = {
    "": ROOT / "deploy" / "requirements.lock",
    "chdb": ROOT / "deploy" / "requirements-chdb.lock",
}
BUILD_LOCK = ROOT / "deploy" / "build.lock"
# The image: CPython 3.11 on Linux (deploy/Dockerfile's PYTHON_IMAGE).
IMAGE_ENV = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux"}


# --- the Dockerfile, as instructions ------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def test_multi_stage_build_then_slim_runtime() -> None:
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert len(froms) == 2, froms
    assert froms[0].endswith("AS build") and froms[1].endswith("AS runtime")
    runtime = stages()[-1]
    # The runtime stage takes the built virtualenv and installs nothing itself.
    assert ("COPY", "--from=build /opt/pinwatch /opt/pinwatch") in runtime
    assert not any("pip install" in rest for keyword, rest in runtime if keyword == "RUN")


def test_runs_as_a_non_root_user() -> None:
    users = [rest for keyword, rest in stages()[-1] if keyword == "USER"]
    assert users, "the runtime stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # The numeric id is the one deploy/k8s runs with (runAsUser), and the user is created.
    assert user == "10001"
    assert any("useradd" in rest and "--uid 10001" in rest for _, rest in stages()[-1])


def test_healthcheck_asks_healthz() -> None:
    checks = [rest for keyword, rest in stages()[-1] if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert '["python", "-m", "pinwatch.healthcheck"]' in checks[0]
    from pinwatch.healthcheck import default_urls
    from pinwatch.settings import Settings

    assert all(url.endswith("/healthz") for url in default_urls(Settings()))


def test_one_image_the_command_chooses_the_part() -> None:
    runtime = dict(stages()[-1])
    assert runtime["ENTRYPOINT"] == '["pinwatch"]'
    text = DOCKERFILE.read_text()
    for command in ("ingest", "consume", "migrate", "probe"):
        assert f"docker run pinwatch:0.1.0 {command}" in text
    from pinwatch.cli import commands

    assert {"ingest", "consume", "migrate"} <= set(commands())


def test_dependencies_come_from_the_hashed_lock_files() -> None:
    runs = " ".join(rest for keyword, rest in stages()[0] if keyword == "RUN")
    assert "--require-hashes --no-deps -r deploy/build.lock" in runs
    assert '--require-hashes --no-deps -r "$lock"' in runs
    assert "lock=deploy/requirements.lock" in runs and "lock=deploy/requirements-chdb.lock" in runs
    # pinwatch itself goes in without pulling anything the lock did not pin, then pip checks.
    assert "pip install --no-deps /dist/pinwatch-*.whl" in runs and "pip check" in runs
    # chDB is not in the default image: only the build argument selects its lock.
    assert re.search(r'case "\$PINWATCH_EXTRAS" in\s+""\) lock=deploy/requirements\.lock', runs)
    for path in [*LOCKS.values(), BUILD_LOCK]:
        assert all("--hash=sha256:" in block for block in _lock_blocks(path)), path


# --- COPY sources and the build context -----------------------------------------------------------


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(excluded, regex) per .dockerignore line, in order (the last match decides), with
    Docker's rules: `!` re-includes, `*` stays within a path segment, `**` spans segments, and
    a pattern that matches a directory matches everything under it."""
    out = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        excluded = not line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        out.append((excluded, re.compile(regex + "(?:/.*)?")))
    return out


def ignored(path: str) -> bool:
    verdict = False
    for excluded, regex in _ignore_patterns():
        if regex.fullmatch(path):
            verdict = excluded
    return verdict


def test_dockerignore_matcher_follows_docker_rules() -> None:
    # The rules the checks below rely on, on paths whose fate is plain.
    assert (
        ignored(".venv/bin/python")
        and ignored("tests/integration/ingest/test_ingest.py")
        and ignored(".git")
    )
    assert not ignored("pinwatch/settings.py") and not ignored("deploy/requirements.lock")
    assert ignored("pinwatch/__pycache__/settings.cpython-311.pyc")
    assert ignored("devstack/demo_pki/primary.key.pem") and ignored("alerts/tests/pinning.test.yml")


def copy_sources() -> list[str]:
    sources = []
    for keyword, rest in instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        words = [w for w in shlex.split(rest) if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def tracked_files(path: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources = copy_sources()
    assert {"pyproject.toml", "pinwatch", "deploy/requirements.lock"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
        if (ROOT / source).is_dir():
            modules = [f for f in tracked_files(source) if f.endswith(".py")]
            assert modules, source
            dropped = [f for f in modules if ignored(f)]
            assert not dropped, f"COPY {source}: .dockerignore drops {dropped}"


def test_package_data_reaches_the_image() -> None:
    """What setuptools packages as data (pyproject's package-data: yaml, yml, json, sql) must
    be in the build context too, or the wheel built there lacks it."""
    for package in ("pinwatch", "ingest", "consumers", "dashboards", "alerts"):
        data = [
            f
            for f in tracked_files(package)
            if f.endswith((".yaml", ".yml", ".json", ".sql")) and "/tests/" not in f
        ]
        assert not [f for f in data if ignored(f)], package


def test_nothing_secret_or_bulky_enters_the_build_context() -> None:
    for path in (".venv", ".pinwatch", "tests", "benchmarks", "devstack", ".git", "docs"):
        assert ignored(path), path


# --- the lock files cover pyproject.toml ---------------------------------------------------------


def _lock_blocks(path: Path) -> list[str]:
    text = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("#"))
    return [block for block in re.split(r"\n(?=\S)", text) if block.strip()]


def locked(path: Path) -> dict[str, list[tuple[str, str]]]:
    """name -> [(version, marker)] as pinned in a lock (a universal lock may pin two versions
    under different markers)."""
    pins: dict[str, list[tuple[str, str]]] = {}
    for block in _lock_blocks(path):
        head = block.split("\\", 1)[0].strip()
        spec, _, marker = head.partition(";")
        name, _, version = spec.strip().partition("==")
        pins.setdefault(canonicalize_name(name.split("[")[0]), []).append(
            (version.strip(), marker.strip())
        )
    return pins


def version_for_image(pins: dict[str, list[tuple[str, str]]], name: str) -> str | None:
    from packaging.markers import Marker

    for version, marker in pins.get(canonicalize_name(name), []):
        if not marker or Marker(marker).evaluate(IMAGE_ENV):
            return version
    return None


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _extra_requirements(requirement: Requirement) -> list[Requirement]:
    """What `requirement`'s extras add (from the installed distribution's metadata)."""
    try:
        declared = requires(requirement.name) or []
    except PackageNotFoundError:
        pytest.fail(f"{requirement.name} is not installed, its extras cannot be checked")
    out = []
    for text in declared:
        dependency = Requirement(text)
        if dependency.marker is None:
            continue
        for extra in requirement.extras:
            if dependency.marker.evaluate({**IMAGE_ENV, "extra": extra}) and (
                not dependency.marker.evaluate({**IMAGE_ENV, "extra": ""})
            ):
                # Its marker is settled for the image: what remains is name and versions.
                out.append(Requirement(f"{dependency.name}{dependency.specifier}"))
    return out


@pytest.mark.parametrize("extra", sorted(LOCKS), ids=lambda e: e or "default")
def test_lock_covers_pyprojects_runtime_dependencies(extra: str) -> None:
    project = pyproject()["project"]
    wanted = [Requirement(text) for text in project["dependencies"]]
    if extra:
        wanted += [Requirement(text) for text in project["optional-dependencies"][extra]]
    pins = locked(LOCKS[extra])
    for requirement in list(wanted):
        wanted += _extra_requirements(requirement)
    assert {"cramjam", "uvloop", "httptools"} <= {canonicalize_name(r.name) for r in wanted}
    for requirement in wanted:
        if requirement.marker is not None and not requirement.marker.evaluate(IMAGE_ENV):
            continue
        version = version_for_image(pins, requirement.name)
        assert version is not None, f"{LOCKS[extra].name} does not pin {requirement.name}"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{LOCKS[extra].name} pins {requirement.name}=={version}, pyproject wants "
            f"{requirement.specifier}"
        )


def test_chdb_only_in_the_chdb_lock() -> None:
    assert version_for_image(locked(LOCKS["chdb"]), "chdb") is not None
    default = locked(LOCKS[""])
    # pyarrow is not among them: the consumer inserts Arrow tables (consumers/batch.py).
    for heavy in ("chdb", "chdb-core", "pandas"):
        assert heavy not in default, f"{heavy} is in the default image's lock"


def test_development_tools_stay_out_of_the_image() -> None:
    pins = locked(LOCKS[""])
    for tool in ("grafana-foundation-sdk", "pytest", "ruff", "uv", "kubernetes-validate"):
        assert canonicalize_name(tool) not in pins, tool


def test_each_lock_says_how_to_regenerate_it() -> None:
    for path in [*LOCKS.values(), BUILD_LOCK]:
        head = path.read_text().splitlines()[:2]
        assert head[0].startswith("# This file was autogenerated by uv"), path
        assert "uv pip compile" in head[1] and "--generate-hashes" in head[1], path
        assert f"-o deploy/{path.name}" in head[1], path
