"""The import picture of common/: each sub-package and the other parts of common/ it imports
(anywhere in its modules, lazy imports included), read from the source with ast, nothing imported.

    python scripts/import_picture.py        # prints the tree README.md's "Layout" shows

tests/test_layers.py checks that README.md holds this script's current output.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ROOT / "common"


def part_of(module: str) -> tuple[str, str] | None:
    """(part, module within it) for a dotted name in common/: `common.runs.io` → ("runs", "io")."""
    bits = module.split(".")
    if bits[0] != "common" or len(bits) < 2:
        return None
    return bits[1], (bits[2] if len(bits) > 2 and (COMMON / bits[1] / f"{bits[2]}.py").exists() else "")


def parts() -> list[str]:
    """common/'s sub-packages and top-level modules, as their names."""
    return sorted(p.name if p.is_dir() else p.stem for p in COMMON.iterdir()
                  if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__"))


def imports_of_part(part: str) -> dict[str, set[str]]:
    """The other parts of common/ that `part` imports, each with the modules of it imported."""
    files = (COMMON / part).rglob("*.py") if (COMMON / part).is_dir() else [COMMON / f"{part}.py"]
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for other, module in filter(None, map(part_of, names)):
                found.setdefault(other, set()).update({module} - {""})
    found.pop(part, None)
    return found


def picture() -> str:
    """One line per part: `name/ → other (its modules imported), …` (a module shows as name.py)."""
    names = parts()
    lines = ["common/"]
    for i, part in enumerate(names):
        label = f"{part}/" if (COMMON / part).is_dir() else f"{part}.py"
        deps = imports_of_part(part)
        shown = [f"{d} ({', '.join(sorted(deps[d]))})" if deps[d] else d for d in sorted(deps) if d in names]
        arrow = ("→ " + ", ".join(shown)) if shown else "(imports nothing else of common/)"
        lines.append(f"{'└──' if i == len(names) - 1 else '├──'} {label:<12} {arrow}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(picture())
