"""The package's shape: stage folders in pipeline order, no import circles, and no lower stage
importing a higher one (lazy imports inside functions count too)."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import modules of its own rank or lower ranks only.
RANKS = [
    ("base", ["hms", "hms.utils"]),
    ("data", ["hms.data", "hms.config", "hms.metric"]),  # config and the metric read data.schema
    ("signal", ["hms.signal"]),
    ("cache", ["hms.cache"]),
    ("models", ["hms.models"]),  # every network, what builds its input, its checkpoint and run dirs
    ("inputs", ["hms.inputs"]),  # datasets and loaders over the caches, for a model's config
    ("inference", ["hms.inference"]),
    ("training", ["hms.training"]),
    ("outputs", ["hms.kaggle", "hms.report", "hms.app"]),
    ("jobs", ["hms.jobs"]),  # the main job, experiment sets, the scheduler, the plan, the benches
    ("entry", ["hms.cli", "hms.__main__"]),
]
STAGE_FOLDERS = ["data", "signal", "cache", "models", "inputs", "inference", "training", "kaggle", "report", "app",
                 "jobs"]
# what prediction, reports, the notebook and the viewer load must not need the training code
NEVER_IMPORT_TRAINING = ("hms.inference", "hms.kaggle", "hms.report", "hms.app")
def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "hms").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def rank(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(RANKS):
        for prefix in prefixes:
            if module == prefix or (prefix != "hms" and module.startswith(prefix + ".")):
                best = i
    assert best is not None, f"{module} belongs to no stage in RANKS"
    return best


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """hms modules that `module` imports anywhere in its file (resolved to known modules)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name.startswith("hms") and name != module:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) - {"hms"} for m, p in mods.items()}


def test_every_stage_has_its_folder_and_the_top_level_is_thin():
    top = sorted(p.stem for p in (SRC / "hms").glob("*.py"))
    assert top == ["__init__", "__main__", "cli", "config", "metric", "utils"]
    for folder in STAGE_FOLDERS:
        assert (SRC / "hms" / folder / "__init__.py").is_file(), folder


def test_no_lower_stage_imports_a_higher_one():
    bad = [f"{m} ({RANKS[rank(m)][0]}) imports {d} ({RANKS[rank(d)][0]})"
           for m, deps in graph().items() for d in deps if rank(d) > rank(m)]
    assert not bad, "\n".join(bad)


def test_prediction_reports_the_notebook_and_the_viewer_never_import_training():
    bad = [f"{m} imports {d}" for m, deps in graph().items() if m.startswith(NEVER_IMPORT_TRAINING)
           for d in deps if d == "hms.training" or d.startswith("hms.training.")]
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    g = graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)
