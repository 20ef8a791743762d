"""The protocol core does no I/O: nothing under loadgen/proto imports an I/O module."""

from __future__ import annotations

import ast
from pathlib import Path

import loadgen.proto

FORBIDDEN = {"trio", "gevent", "socket", "ssl", "time", "asyncio", "select", "selectors"}
PROTO_DIR = Path(loadgen.proto.__file__).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_proto_modules_import_no_io() -> None:
    files = sorted(PROTO_DIR.rglob("*.py"))
    assert len(files) >= 3
    offenders = {
        str(f.relative_to(PROTO_DIR)): sorted(_imports(f) & FORBIDDEN)
        for f in files
        if _imports(f) & FORBIDDEN
    }
    assert offenders == {}


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import trio.lowlevel\nfrom socket import socket\n")
    assert _imports(bad) & FORBIDDEN == {"trio", "socket"}
