"""The package's layers point one way (ARCHITECTURE.md): a module imports only its own layer or below.

Top: cli/, api.py (FineTuner composes engine and monitors), monitor/ (consumers of events), setup/
(the wizard, which plans runs through the engine).
Then engine/; then checkpoints/, data/, models/, optimize/; then config/ and the bottom
modules (events, stats, durable, errors, faults, paths), which import nothing above them.
Checked on the source's import statements, lazy imports inside functions included.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "llmc_cli"
BOTTOM = {"events", "stats", "durable", "errors", "faults", "paths"}
FORBIDDEN = {  # a module in this part may not import from these parts
    "bottom": {"cli", "api", "monitor", "engine", "checkpoints", "data", "models", "optimize", "config", "demo"},
    "config": {"cli", "api", "monitor", "engine", "checkpoints", "data", "models", "optimize"},
    "checkpoints": {"cli", "api", "monitor", "engine"},
    "data": {"cli", "api", "monitor", "engine", "checkpoints"},
    "models": {"cli", "api", "monitor", "engine", "checkpoints"},
    "optimize": {"cli", "api", "monitor", "engine", "checkpoints"},
    "engine": {"cli", "api", "monitor"},
    "monitor": {"cli", "api", "engine"},
    "setup": {"cli", "api", "monitor"},  # the wizard plans runs through the engine; commands sit above it
}
for _lower in ("bottom", "config", "checkpoints", "data", "models", "optimize", "engine", "monitor"):
    FORBIDDEN[_lower] = FORBIDDEN[_lower] | {"setup"}


def part(path: Path) -> str:
    name = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    return "bottom" if name in BOTTOM else name


def imported_parts(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "llmc_cli"]
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "llmc_cli" and len(pieces) > 1:
                found.add((pieces[1], node.lineno))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if part(p) in FORBIDDEN)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    layer = part(path)
    bad = [f"line {line}: llmc_cli.{target}" for target, line in imported_parts(path) if target in FORBIDDEN[layer]]
    bad += [
        f"line {line}: llmc_cli.{target}"
        for target, line in imported_parts(path)
        if layer == "bottom" and target in BOTTOM and target not in ("errors",)
    ]
    assert not bad, f"{path.relative_to(PACKAGE)} ({layer}) reaches up: {bad}"


def test_the_rule_catches_an_engine_module_importing_a_monitor(tmp_path):
    probe = PACKAGE / "engine" / "loop.py"
    assert ("monitor", 1) not in imported_parts(probe)
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from llmc_cli.monitor.detectors import IssueMonitor\n")
    assert imported_parts(fake) == {("monitor", 2)}
