"""The tests use vidanon through its public names only: no `_name` of a vidanon module is imported,
read, or monkeypatched (by object or by dotted string). A test that needs one shows a missing public API."""

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def uses_of_private_names(source: str) -> list[str]:
    tree = ast.parse(source)
    modules: set[str] = set()  # local names bound to vidanon modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "vidanon":
                    modules.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vidanon":
            for alias in node.names:
                if private(alias.name):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                else:
                    modules.add(alias.asname or alias.name)  # a module or a public object: its privates are off limits too
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("vidanon."):
            if any(private(part) for part in node.value.split(".")):
                found.append(f"line {node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("setattr", "delattr"):
            args = node.args
            target = args[0] if args else None
            while isinstance(target, ast.Attribute):
                target = target.value
            named = len(args) > 1 and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str)
            if named and private(args[1].value) and isinstance(target, ast.Name) and target.id in modules:
                found.append(f"line {node.lineno}: {node.func.attr}(..., {args[1].value!r})")
    return found


def test_the_check_catches_each_form():
    source = """
from vidanon import detect, stages
from vidanon.manifest import _canonical
import vidanon.keys
detect._tiles(1, 2)
vidanon.keys._b64(b"")
monkeypatch.setattr(stages, "_CPU_BUSY", None)
monkeypatch.setattr("vidanon.stages._CPU_BUSY", None)
stages.run_core
own._private
"""
    assert len(uses_of_private_names(source)) == 5


def test_tests_use_no_private_name_of_vidanon():
    found = {p.name: uses_of_private_names(p.read_text()) for p in sorted(TESTS.glob("*.py")) if p.name != Path(__file__).name}
    assert {name: uses for name, uses in found.items() if uses} == {}
