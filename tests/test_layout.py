"""The package's shape: no import cycles, light modules stay light, each paper package has the same roles."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "pipeline_steps"
sys.path.insert(0, str(REPO))
from pipeline_steps.papers import CORE_RULES, FINAL_RULES, PAPERS  # noqa: E402

PAPER_PACKAGES = [p.name for p in PAPERS]
ROLES = ["__init__.py", "config.py", "model.py", "steps.py", "report.py"]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(path: Path) -> set[str]:
    """Modules of pipeline_steps that ``path`` imports, at module level or inside functions (a deferred
    import hides a cycle from the interpreter, not from the reader)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("pipeline_steps"):
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names)  # `from . import x` imports module x
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("pipeline_steps"))
    return out


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for target in module_imports(path):
            while target and target not in files:  # `from .x import Y`: Y is a name, x the module
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_pipeline_steps():
    graph = import_graph()
    assert "pipeline_steps.config" in graph and graph["pipeline_steps.training"]  # the graph is real
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_config_validation_does_not_import_method_code():
    deps = import_graph()["pipeline_steps.config"]
    methods = {d for d in deps if d.split(".")[1] in PAPER_PACKAGES}
    assert all(d.endswith(".config") for d in methods), methods


@pytest.mark.parametrize("module", ["pipeline_steps.config", "pipeline_steps.cli", "pipeline_steps.figures",
                                    "pipeline_steps.prompt_tuning.report", "pipeline_steps.transferability.report",
                                    "pipeline_steps.fpt.report", "pipeline_steps.lpt.report", "pipeline_steps.claims.steps"])
def test_light_modules_import_neither_torch_nor_transformers(module):
    code = (f"import sys, {module}; heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules); "
            f"print(','.join(heavy))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"{module} imports {res.stdout.strip()}"


def test_every_paper_package_has_the_same_roles():
    present = [p for p in PAPER_PACKAGES if (PKG / p).is_dir()]
    assert {"prompt_tuning", "transferability", "fpt", "lpt"} <= set(present)
    for package in present:
        missing = [f for f in ROLES if not (PKG / package / f).exists()]
        assert not missing, f"pipeline_steps/{package} lacks {missing}"
        init = ast.parse((PKG / package / "__init__.py").read_text())
        assert ast.get_docstring(init), f"pipeline_steps/{package}/__init__.py needs a docstring"
        assert not [n for n in init.body if isinstance(n, (ast.Import, ast.ImportFrom))], package


def test_every_step_resolves_to_a_function():
    from pipeline_steps.cli import STEPS, resolve_step

    for name in STEPS:
        assert callable(resolve_step(name)), name


def test_the_registry_names_every_rule_file_target_step_and_page():
    """pipeline_steps/papers.py is the one list of methods: its rule files are all of workflow/rules/ (with
    the always-included common and preflight), each target is a rule of the paper's own files, each page
    exists, and every paper package but the shared prompt tuning checks its config section."""
    import re

    from pipeline_steps.cli import STEPS
    from pipeline_steps.papers import CORE_STEPS, config_checks

    rules_dir = REPO / "workflow" / "rules"
    listed = list(CORE_RULES) + [r for p in PAPERS for r in p.rules] + list(FINAL_RULES)
    assert len(listed) == len(set(listed))
    assert set(listed) | {"common.smk", "preflight.smk"} == {f.name for f in rules_dir.glob("*.smk")}
    for paper in PAPERS:
        defined = set(re.findall(r"^rule (\w+):", "".join((rules_dir / r).read_text() for r in paper.rules), re.M))
        assert set(paper.targets) <= defined, (paper.name, set(paper.targets) - defined)
        assert (REPO / paper.docs).exists(), paper.docs
        assert all(STEPS[s].startswith(f"{paper.name}.") for s in paper.steps), paper.name
    assert len(STEPS) == len(CORE_STEPS) + sum(len(p.steps) for p in PAPERS)
    checked = {f.__module__.split(".")[1] for f in config_checks()}
    assert checked == {p.name for p in PAPERS} - {"prompt_tuning"}
