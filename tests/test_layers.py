"""The layers, read from the source (ast, nothing imported): `common/` at the bottom never imports a
backend or a job, `backends/` never imports a job, the jobs and `cli.py` never import a framework
(torch, mlx: the backends own them), and no module of ours imports itself back through others, at
module level or inside a function."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "backends", "jobs", "benchmarks")


def _modules() -> dict[str, Path]:
    out = {"cli": ROOT / "cli.py", "cli_options": ROOT / "cli_options.py"}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours that `name` (an imported module or module.attribute) loads."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """Our modules that `module` imports anywhere in its body (lazy imports count)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names]  # `from jobs import trainer`
        else:
            continue
        found |= {m for m in map(_resolve, names) if m and m != module}
    return found


GRAPH = {m: imports_of(m) for m in MODULES}
FRAMEWORKS = ("torch", "mlx", "mlx_lm")


def frameworks_of(module: str) -> set[str]:
    """The frameworks (torch, mlx) `module` imports anywhere in its body (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in FRAMEWORKS}
    return found


def _layer(module: str) -> str:
    top = module.split(".")[0]
    return "cli" if top == "cli_options" else top   # cli.py's shared options: the same layer


def test_the_walk_sees_the_layers():
    assert {"common.config.schema", "backends.mlx.backend", "jobs.trainer", "cli"} <= set(MODULES)
    assert "jobs.trainer" in GRAPH["cli"] and "common.config.schema" in GRAPH["jobs.trainer"]
    assert "cli_options" in GRAPH["cli"] and _layer("cli_options") == "cli"


def test_common_imports_no_backend_and_no_job():
    bad = {m: sorted(i for i in deps if _layer(i) in ("backends", "jobs", "benchmarks", "cli"))
           for m, deps in GRAPH.items() if _layer(m) == "common"}
    assert not {m: d for m, d in bad.items() if d}


def test_backends_import_no_job():
    bad = {m: sorted(i for i in deps if _layer(i) in ("jobs", "benchmarks", "cli"))
           for m, deps in GRAPH.items() if _layer(m) == "backends"}
    assert not {m: d for m, d in bad.items() if d}


def test_jobs_are_not_imported_by_what_they_drive():
    bad = {m: sorted(i for i in deps if _layer(i) in ("benchmarks", "cli"))
           for m, deps in GRAPH.items() if _layer(m) == "jobs"}
    assert not {m: d for m, d in bad.items() if d}


def test_jobs_and_cli_import_no_framework():
    """Process groups, barriers and rank environments are the backends' (backends/<name>/distributed.py)."""
    bad = {m: sorted(frameworks_of(m)) for m in MODULES if _layer(m) in ("jobs", "cli")}
    assert not {m: d for m, d in bad.items() if d}
    assert frameworks_of("backends.torch.distributed") == {"torch"}   # the walk does see them
    assert frameworks_of("backends.mlx.distributed") == {"mlx"}


def _cycle() -> list[str] | None:
    """One import cycle among our modules (a package's __init__ counts as importing nothing
    it does not name), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(GRAPH[m]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle():
    assert _cycle() is None, " → ".join(_cycle())


# The shared bottom of common/: every part writes through these, and they import nothing of common/
# but errors, so an edge into them is no cycle.
COMMON_BOTTOM = {"common.errors", "common.runs.io", "common.runs.ownership"}
def _common_part(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if bits[0] == "common" and len(bits) > 2 else None   # common.<part>.<module>


def _part_graph() -> dict[str, set[str]]:
    """common/'s sub-packages, each with the others it imports (edges into the bottom left out)."""
    out: dict[str, set[str]] = {}
    for m, deps in GRAPH.items():
        if (part := _common_part(m)) is not None:
            out.setdefault(part, set()).update(
                p for d in deps - COMMON_BOTTOM if (p := _common_part(d)) not in (None, part))
    return out


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_common_parts_import_the_bottom_only_downward():
    for bottom in COMMON_BOTTOM:
        assert {d for d in GRAPH[bottom] if _layer(d) == "common"} <= COMMON_BOTTOM, bottom


def test_no_import_cycle_between_common_parts():
    graph = _part_graph()
    assert {"adapters", "config", "data", "evaluation", "models", "runs", "training"} <= set(graph)
    cycles = {frozenset({a, b}) for a in graph for b in _reachable(graph, a) if a != b and a in _reachable(graph, b)}
    assert cycles == set(), cycles


def test_readme_shows_the_current_import_picture():
    import importlib.util
    spec = importlib.util.spec_from_file_location("import_picture", ROOT / "scripts" / "import_picture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.picture() in (ROOT / "README.md").read_text(encoding="utf-8")
