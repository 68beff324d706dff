"""The uvicorn internals ingest/protocol.py relies on: all there, a change fails at start, and
the protocol touches nothing outside the named surface."""

from __future__ import annotations

import ast
import inspect
from importlib.metadata import version

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ingest import protocol

READ_TIMEOUT = 1.0  # seconds: short, so that the slow cases below take little time


def test_uvicorn_has_everything_the_protocol_relies_on() -> None:
    assert protocol.surface_problems() == []
    major, minor = (int(part) for part in version("uvicorn").split(".")[:2])
    assert (major, minor) == (0, 54), "pyproject.toml pins uvicorn 0.54: review ingest/protocol.py"


def test_a_changed_uvicorn_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(HttpToolsProtocol, "_unsupported_upgrade_warning")
    with pytest.raises(RuntimeError, match="_unsupported_upgrade_warning"):
        protocol.report_protocol({})


def test_the_protocol_touches_only_the_named_surface() -> None:
    """Every attribute of `self` that ReportProtocol uses is its own or named in
    UVICORN_SURFACE, so a uvicorn upgrade is reviewed against one list."""
    tree = ast.parse(inspect.getsource(protocol.ReportProtocol))
    (cls,) = tree.body
    assert isinstance(cls, ast.ClassDef)
    own = {n.name for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    own |= {
        t.id
        for n in cls.body
        if isinstance(n, ast.AnnAssign | ast.Assign)
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        if isinstance(t, ast.Name)
    }
    used = {
        node.attr
        for node in ast.walk(cls)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }
    named = set(protocol.UVICORN_SURFACE["HttpToolsProtocol"])
    named |= set(protocol.UVICORN_SURFACE["HttpToolsProtocol methods"])
    assert used - own - named == set()
