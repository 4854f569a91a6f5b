"""Size rules of issue 50: no function in plcli/ longer than 60 lines (def line to the last line of
its body, docstring included), and no module of plcli/distill/ longer than 400 lines."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "plcli"
MAX_FUNCTION_LINES = 60
MAX_DISTILL_MODULE_LINES = 400


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path


def test_no_function_is_longer_than_60_lines():
    long = []
    for rel, path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"plcli/{rel}:{node.lineno} {node.name}: {n} lines")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


def test_no_distill_module_is_longer_than_400_lines():
    paths = sorted((PACKAGE / "distill").glob("*.py"))
    assert paths
    long = [
        f"{p.name}: {n} lines"
        for p in paths
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_DISTILL_MODULE_LINES
    ]
    assert not long, "plcli/distill modules over 400 lines:\n" + "\n".join(long)
