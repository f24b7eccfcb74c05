"""The package's shape: dependencies point one way, no import cycles, docstrings stand alone, fast ``--help``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "maskadapter"

#: Layers from the bottom up: a module may import its own layer and the layers below it, never above.
LAYERS = ["core", "data", "modeling", "inference", "evaluation", "training", "demo", "cli"]


def layer_of(module: str) -> str:
    """The layer of a module name relative to the package (``inference.predictor`` -> ``inference``)."""
    head = module.split(".")[0]
    if head in ("data", "modeling", "inference", "evaluation", "training", "demo", "cli"):
        return head
    if head == "__main__":
        return "cli"
    return "core"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def runtime_imports(path: Path) -> set[str]:
    """Package modules imported by ``path`` when it runs (``if TYPE_CHECKING:`` blocks are skipped)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
                found.update(n for n in names)
            elif node.module and node.module.startswith("maskadapter"):
                found.add(node.module[len("maskadapter."):] if node.module != "maskadapter" else "")
        elif isinstance(node, ast.Import):
            found.update(a.name[len("maskadapter."):] for a in node.names if a.name.startswith("maskadapter."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {f.strip(".") for f in found if f.strip(".")}


def all_modules() -> dict[str, set[str]]:
    modules = {module_name(p): runtime_imports(p) for p in SRC.rglob("*.py")}
    # "from . import x" names a submodule when one exists, else an attribute of the package
    return {m: {i for i in imports if i in modules or i.rsplit(".", 1)[0] in modules} for m, imports in modules.items()}


def test_dependencies_point_one_way():
    upward = []
    graph = all_modules()
    for module, imports in graph.items():
        if module == "":  # the package __init__ loads public names lazily, from every layer
            continue
        for target in imports:
            target = target if target in graph else target.rsplit(".", 1)[0]
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module)):
                upward.append(f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})")
    assert not upward, "imports against the layering " + " < ".join(LAYERS) + ":\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = all_modules()
    graph = {m: {t if t in graph else t.rsplit(".", 1)[0] for t in imports} - {m} for m, imports in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == "" or nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state and node != "":
            dfs(node)
    # a package importing its own submodules (to re-export them) is not a cycle of behaviour
    real = [c for c in cycles if not any(c[i + 1].startswith(c[i] + ".") or c[i].startswith(c[i + 1] + ".")
                                         for i in range(len(c) - 1))]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)


def test_the_layering_test_sees_real_imports():
    graph = all_modules()
    assert "modeling.model" in graph["inference.predictor"]
    assert "vocabulary" in graph["modeling.text"] and "inference.predictor" in graph["evaluation.runner"]
    assert layer_of("cli.segment") == "cli" and layer_of("fileio") == "core"


def test_docstrings_do_not_cite_a_document_the_repository_does_not_ship():
    cited = [f"{p.relative_to(SRC)}:{i + 1}" for p in SRC.rglob("*.py")
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()) if "spec §" in line]
    assert not cited, "state the fact instead of citing the spec: " + ", ".join(cited)


@pytest.mark.parametrize("argv", [["--help"], ["segment", "--help"], ["merge", "--help"], ["eval", "--help"],
                                  ["train", "--help"], ["demo", "--help"], ["--version"]])
def test_help_imports_neither_torch_nor_the_model(argv):
    probe = ("import sys\nfrom maskadapter.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "heavy = sorted(m for m in sys.modules if m in ('torch', 'open_clip', 'timm', 'numpy', 'PIL')\n"
             "               or m.startswith('maskadapter.modeling'))\nprint('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]


def test_python_dash_m_runs_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "maskadapter", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("maskadapter ")


def test_results_do_not_import_the_model():
    """Result types are plain data: inference/results.py reaches no module of maskadapter.modeling, directly or
    through what it imports."""
    graph = all_modules()
    graph = {m: {t if t in graph else t.rsplit(".", 1)[0] for t in imports} for m, imports in graph.items()}
    reached, todo = set(), ["inference.results"]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert "vocabulary" in reached  # the walk sees real imports
    assert not sorted(m for m in reached if layer_of(m) == "modeling"), sorted(reached)
