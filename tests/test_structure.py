"""The package's shape: imports between its parts point one way, no module reaches into another's
private names, and every public function and class says its contract in a docstring."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "metaclaw_mcp"


def modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, ast.parse(path.read_text(encoding="utf-8"))))
    return out


def imported(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def part(name: str) -> str:
    return ".".join(name.split(".")[:2])   # metaclaw_mcp.<subpackage or module>


def test_no_import_cycles_between_the_packages_parts():
    edges: dict[str, set[str]] = {}
    for name, tree in modules():
        is_package = (PACKAGE.parent / Path(*name.split("."))).is_dir()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = imported(name, is_package, node)
                if target.startswith("metaclaw_mcp") and part(target) != part(name):
                    edges.setdefault(part(name), set()).add(part(target))
    cycles = {tuple(sorted((a, b))) for a, bs in edges.items() for b in bs
              if "metaclaw_mcp" not in (a, b) and a in edges.get(b, set())}
    assert cycles == set()


def test_no_module_reaches_into_another_modules_private_names():
    reaches = []
    for name, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("metaclaw_mcp", "")) and node.level:
                reaches += [f"{name} imports {a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    reaches.append(f"{name}:{node.lineno} reaches {ast.unparse(node.value)}.{node.attr}")
    assert reaches == []


def test_every_public_function_and_class_has_a_docstring():
    missing = []
    for name, tree in modules():
        for node in tree.body:
            defs = [node] + ([n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
                             if isinstance(node, ast.ClassDef) else [])
            missing += [f"{name}:{d.lineno} {d.name}" for d in defs
                        if isinstance(d, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                        and not d.name.startswith("_") and ast.get_docstring(d) is None]
    assert missing == []
