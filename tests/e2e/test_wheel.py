"""The built wheel works anywhere: installed into a fresh virtualenv in a temporary directory,
outside the checkout, its commands find everything they need inside the installed packages
(example policy, rules, dashboards, Kafka build file, demo PKI) and `pinwatch demo` plays a
rotation through to a delivered page from there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from consumers.migrations import LATEST
from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(900)


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINWATCH_")}
    env.pop("PYTHONPATH", None)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh virtualenv holding the wheel built from this checkout (and its chdb
    extra, as the README's commands install it)."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds.
    source = root / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".pinwatch", "build", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root), str(source)],
        root,
        300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = root.glob("pinwatch-*.whl")
    venv = root / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    assert _run([base_python, "-m", "venv", str(venv)], root, 120).returncode == 0
    done = _run([str(venv / "bin/pip"), "install", "-q", f"{wheel}[chdb]"], root, 600)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin"


def test_the_wheel_has_no_checkout_to_lean_on(installed: Path, tmp_path: Path) -> None:
    probe = _run(
        [str(installed / "python"), "-c", "import pinwatch, devstack; print(pinwatch.__file__)"],
        tmp_path,
        60,
    )
    assert probe.returncode == 0, probe.stderr
    assert "site-packages" in probe.stdout and str(REPO) not in probe.stdout


def test_policy_check_and_migrate_run_from_any_directory(installed: Path, tmp_path: Path) -> None:
    policy = tmp_path / "my-policy.yaml"
    shutil.copyfile(REPO / "pinwatch/examples/policy.example.yaml", policy)
    check = _run(
        [str(installed / "pinwatch"), "policy", "check", "--policy", str(policy)], tmp_path, 60
    )
    assert check.returncode == 0, check.stderr
    assert "2 apps, 2 hosts" in check.stdout
    migrate = _run([str(installed / "pinwatch"), "migrate"], tmp_path, 120)
    assert migrate.returncode == 0, migrate.stderr
    assert f"applied migrations {list(range(1, LATEST + 1))}" in migrate.stdout
    assert (tmp_path / ".pinwatch" / "chdb").is_dir()


def test_demo_from_the_installed_wheel_ends_in_a_page(installed: Path, tmp_path: Path) -> None:
    demo = _run(
        [str(installed / "pinwatch"), "demo", "--steady", "10", "--devices", "60"], tmp_path, 600
    )
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-2000:]
    timeline = json.loads((tmp_path / ".pinwatch/demo/timeline.json").read_text())
    assert timeline["page"] and "PinwatchRotationBreakage" in timeline["page"]
