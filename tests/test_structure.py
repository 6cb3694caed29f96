"""The package's import graph is one-way: no cycle between the direct subpackages / modules of customnet_jax
(function-level imports counted), no import of the repository's `configs/` from inside the package, and the
imports left inside functions are the deferred optional heavy dependencies, each with a comment saying so.

The graph is read from the source with `ast` (nothing is imported), so an import hidden inside a function,
or written relative (`from ..data import images`), counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "customnet_jax"


@dataclasses.dataclass(frozen=True)
class Import:
    """One imported module name, where it was written, and whether inside a function."""

    module: str  # absolute dotted name; for `from A import b` the name `A.b` (b may be a module or a name in A)
    file: pathlib.Path
    line: int
    end_line: int
    in_function: bool


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    """Dotted name of the module at `path` inside the package directory `root` (`pkg/a/__init__.py` -> `pkg.a`)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path, root: pathlib.Path) -> list[Import]:
    """Every import in one file, relative ones resolved against the file's package."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, path, child.lineno, child.end_lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    prefix = package[: len(package) - child.level + 1]
                    base = ".".join(prefix + ([child.module] if child.module else []))
                found.extend(Import(f"{base}.{a.name}", path, child.lineno, child.end_lineno, in_function)
                             for a in child.names)
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def all_imports(root: pathlib.Path) -> list[Import]:
    return [i for path in sorted(root.rglob("*.py")) for i in imports_of(path, root)]


def unit(module: str, package: str) -> str | None:
    """The direct subpackage or module of `package` that `module` lies in (None: outside it, or the root)."""
    parts = module.split(".")
    return parts[1] if parts[0] == package and len(parts) > 1 else None


def import_graph(root: pathlib.Path) -> dict[str, dict[str, Import]]:
    """unit -> {imported unit: the first import that makes the edge}, between the direct parts of the package."""
    edges: dict[str, dict[str, Import]] = {}
    for i in all_imports(root):
        source, target = unit(module_name(i.file, root), root.name), unit(i.module, root.name)
        if source and target and source != target:
            edges.setdefault(source, {}).setdefault(target, i)
    return edges


def find_cycle(edges: dict[str, dict[str, Import]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the directed graph, or None (depth-first search, colouring the nodes)."""
    state: dict[str, str] = {}  # "open" while on the search path, "done" once fully explored
    path: list[str] = []

    def search(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := search(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(edges):
        if start not in state and (cycle := search(start)):
            return cycle
    return None


def describe(cycle: list[str], edges: dict[str, dict[str, Import]], root: pathlib.Path) -> str:
    steps = [edges[a][b] for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join(cycle) + "\n" + "\n".join(
        f"  {s.file.relative_to(root.parent)}:{s.line} imports {s.module}" for s in steps)


def configs_imports(root: pathlib.Path) -> list[Import]:
    return [i for i in all_imports(root) if i.module.split(".")[0] == "configs"]


def uncommented_function_imports(root: pathlib.Path) -> list[str]:
    """Imports inside functions without a comment saying why: on the import's own lines, or as a comment line
    right above it (or above the run of imports it belongs to)."""
    bad = []
    for i in all_imports(root):
        if not i.in_function:
            continue
        lines = i.file.read_text().splitlines()
        if any("#" in line for line in lines[i.line - 1 : i.end_line]):
            continue
        above = i.line - 2
        while above >= 0 and lines[above].strip().startswith(("import ", "from ")) and "#" not in lines[above]:
            above -= 1
        if above < 0 or not lines[above].strip().startswith("#"):
            bad.append(f"{i.file.relative_to(root.parent)}:{i.line} imports {i.module} inside a function")
    return bad


# --- the package ---------------------------------------------------------------------------------------------


def test_no_import_cycle_between_subpackages():
    edges = import_graph(PACKAGE)
    assert edges, "the graph is empty: the checker read nothing"
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + describe(cycle, edges, PACKAGE)


def test_package_does_not_import_configs():
    found = configs_imports(PACKAGE)
    assert not found, "configs/ is not part of the installed package; move what is needed into customnet_jax:\n" + \
        "\n".join(f"  {i.file.relative_to(PACKAGE.parent)}:{i.line} imports {i.module}" for i in found)


# The layers, bottom first: a unit imports only units of lower layers (the same layer is forbidden too, so the
# trainer imports no sampling, the networks no weight names). Units not listed are checked by the cycle test only.
LAYERS = (
    {"conditioning", "text", "config", "config_files", "local_models", "model_files"},  # the view T, canvases and
    # pictures; the tokenizer; config files; local transformers folders; model folders' files (checksums, swaps)
    {"world", "models", "diffusion", "segmentation"},  # the synthetic world; the networks; noise schedules and
    # samplers; SAM prompted with a box or points
    {"weights", "experiment", "model_folder", "adapters", "matting"},  # PyTorch names; the experiment config; model
    # folders; LoRA adapter files; the object's mask in a user's picture
    {"data", "convert"},  # training data; checkpoint conversion
    {"train", "sampling"},  # the trainer (periodic work comes in as hooks); inference
    {"evaluation", "pairs", "aot"},  # metrics and protocols; training pairs from photos; TPU ahead-of-time compiles
    {"demo", "app"},  # the built-in demo model's recipe and measures; the browser app
)


def test_layers_import_downwards():
    edges = import_graph(PACKAGE)
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    wrong = [f"{a} -> {b} ({i.file.relative_to(PACKAGE.parent)}:{i.line})" for a, targets in sorted(edges.items())
             for b, i in sorted(targets.items()) if a in layer and b in layer and layer[b] >= layer[a]]
    assert not wrong, "imports against the layering (tests/test_structure.py LAYERS): " + "; ".join(wrong)


def test_function_level_imports_say_why():
    bad = uncommented_function_imports(PACKAGE)
    assert not bad, ("a function-level import is only for an optional heavy dependency, with a comment saying so; "
                     "otherwise import at the top of the file:\n" + "\n".join(bad))


# --- the checker itself ----------------------------------------------------------------------------------------


def _write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "fake"


FAKE = {"fake/__init__.py": "",
        "fake/low/__init__.py": "",
        "fake/low/base.py": "import numpy\n",
        "fake/high/__init__.py": "from .top import run\n",
        "fake/high/top.py": "from ..low import base\n\n\ndef run():\n    return base\n",
        "fake/tool.py": "import fake.high.top as t\nfrom fake import low\n"}


def test_checker_accepts_a_one_way_package(tmp_path):
    root = _write(tmp_path, FAKE)
    edges = import_graph(root)
    assert {a: set(b) for a, b in edges.items()} == {"high": {"low"}, "tool": {"high", "low"}}
    assert find_cycle(edges) is None and not configs_imports(root)


def test_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    """Negative control: a relative import inside a function closes the circle low -> high -> low."""
    root = _write(tmp_path, {**FAKE, "fake/low/base.py": "def late():\n    from ..high import top\n    return top\n"})
    edges = import_graph(root)
    cycle = find_cycle(edges)
    assert cycle is not None and set(cycle) == {"low", "high"} and cycle[0] == cycle[-1]
    assert "fake/low/base.py:2 imports fake.high.top" in describe(cycle, edges, root)
    assert uncommented_function_imports(root) == ["fake/low/base.py:2 imports fake.high.top inside a function"]


def test_checker_finds_a_configs_import(tmp_path):
    root = _write(tmp_path, {**FAKE, "fake/tool.py": "def preset():\n    from configs.tiny import tiny_model\n"})
    assert [(i.module, i.line, i.in_function) for i in configs_imports(root)] == [("configs.tiny.tiny_model", 2, True)]


def test_a_deferred_heavy_import_is_safe_from_several_threads():
    """text.load_tokenizer imports transformers on first use, and grain's reader threads call it at once: without
    its lock 7 of 8 threads failed here with "cannot import name 'CLIPTokenizer'" (transformers' lazy module is not
    thread-safe). A fresh process, so that the import really happens in the threads."""
    code = ("import threading, customnet_jax.text as T\n"
            "errors = []\n"
            "def load():\n"
            "    try:\n"
            "        T.load_tokenizer()\n"
            "    except Exception as error:\n"
            "        errors.append(repr(error))\n"
            "threads = [threading.Thread(target=load) for _ in range(8)]\n"
            "[t.start() for t in threads]\n"
            "[t.join() for t in threads]\n"
            "print(errors)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr[-2000:]
