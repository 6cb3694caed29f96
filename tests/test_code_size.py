"""Small files with one job each: no source file of the package or the top-level scripts over 400 lines, no
function over 80 lines (benchmarks excluded). Each failure lists every offender with its size."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def _sources() -> list[pathlib.Path]:
    return sorted([*(ROOT / "customnet_jax").rglob("*.py"), *ROOT.glob("*.py")])


def _name(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


def _functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def long_functions(source: str) -> list[tuple[str, int, int]]:
    """(name, first line, length in lines, decorators included) of the functions over the limit."""
    found = []
    for name, node in _functions(ast.parse(source)):
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        length = node.end_lineno - start + 1
        if length > MAX_FUNCTION_LINES:
            found.append((name, node.lineno, length))
    return found


def test_the_checks_see_what_they_must():
    """The sources are found (the package and the scripts) and a long function is caught (negative control)."""
    names = {_name(p) for p in _sources()}
    assert {"train.py", "sample.py", "customnet_jax/models/unet.py"} <= names
    assert not any(n.startswith(("benchmarks/", "tests/")) for n in names)
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"class A:\n    def f(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n") == [
        ("A.f", 2, MAX_FUNCTION_LINES + 1)]
    assert long_functions("def g():\n" + "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))) == []


def test_no_file_over_400_lines():
    offenders = [f"{_name(p)}: {n} lines" for p in _sources()
                 if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not offenders, f"files over {MAX_FILE_LINES} lines (split them by job):\n" + "\n".join(offenders)


def test_no_function_over_80_lines():
    offenders = [f"{_name(p)}:{line} {name}: {length} lines" for p in _sources()
                 for name, line, length in long_functions(p.read_text())]
    assert not offenders, (f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(offenders))
