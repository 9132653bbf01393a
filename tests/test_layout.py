"""The package layout is a contract: imports run down the layers, never up, and never in a circle.

Every module under corpus/, pipelines/ and model/ is parsed with `ast`; no project code is
imported. Five rules, each checked on the real tree (one parametrized test, one case per check):

1. Layers, lowest first: corpus (the data contract), pipelines (Ray), model. A package may import
   its own layer and the layers below it, plus any third-party or standard-library module.
2. Inside corpus/, the subpackages follow CORPUS_LAYOUT (a table: unit -> units it may import),
   and every corpus module belongs to a unit of the table: a new module or folder is placed in
   it deliberately. A unit of the table may be absent from a tree (the fake trees below).
3. Inside model/, the units (a top-level module or subpackage of model) follow MODEL_LAYOUT the same
   way: the model core (config, weights, adapters, chat format) at the bottom, then the trainer
   (`train`), then what reads run folders (`source`), evaluation, the two jobs (`pretrain`,
   `finetune`), export, the ablations (`ablate`) over all of them, and the CLI on top. Every model
   module belongs to a unit of the table.
4. The trainer reaches data through one module: inside model/train/ only model/train/data.py
   may import corpus.mixing, corpus.store or pipelines (corpus.store.files, the atomic file
   writes, and corpus.mixing.packing, the packing modes, are open to every model/train module). Outside model/train, model may import corpus
   but not pipelines.
5. No import cycles between project modules. The graph takes every import in a file (top level
   and inside functions, since lazy imports form cycles too) except those under
   `if TYPE_CHECKING:`. Rules 1-3 do count TYPE_CHECKING imports: a type-only import up the
   layers is still a dependency up the layers.

Rules 2 and 3 are one check (`unit_layout_violations`) run with two tables.

`from X import Y` resolves to the module X.Y when X.Y is a module (a file or a package), else to X;
`import a.b` of a package is an edge to a/b/__init__.py. Relative imports are resolved against the
importing module's package.

The checker is the plain functions below; the tests after the real-tree ones run the same
functions on small fake trees under tmp_path, so each rule is shown to fail when it should.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# The rules, as data: edit these tables when the intended layout changes.
# ---------------------------------------------------------------------------------------------

LAYERS = ("corpus", "pipelines", "model")  # lowest first; each may import itself and those below

BASE = {"manifest", "paths"}
CORPUS_LAYOUT: dict[str, set[str]] = {  # corpus.<unit> -> the other corpus units it may import
    "manifest": {"cleaning"},  # the band arithmetic checks a dedup block on load (cleaning/bands.py)
    "paths": {"manifest"},
    "console": set(),
    "text": BASE,
    "tokenizer": BASE | {"text"},
    "store": BASE | {"text", "tokenizer"},
    "mixing": BASE | {"store"},
    "inspection": BASE | {"text", "tokenizer", "store"},
    "mirror": BASE | {"text", "tokenizer", "store"},
    "tasks": BASE,
    "cleaning": BASE | {"text", "tokenizer", "store", "tasks"},
    "heldout": BASE | {"store", "mirror", "cleaning"},  # tasks cut from the mirror's text a --sample build never reads
}

# The model core: what a model is and how its weights are held, read and written. Its units may import each
# other (rule 5 keeps them acyclic); everything above imports it.
MODEL_CORE = {"config", "presets", "openelm", "generate", "hf_folder", "hf_remote", "chat", "adapters", "mlx_cpu"}
MODEL_LAYOUT: dict[str, set[str]] = {  # model.<unit> -> the other model units it may import
    **{unit: MODEL_CORE for unit in MODEL_CORE},
    "train": MODEL_CORE,
    "source": MODEL_CORE | {"train"},
    "eval": MODEL_CORE | {"train", "source"},
    "pretrain": MODEL_CORE | {"train", "source", "eval"},
    "finetune": MODEL_CORE | {"train", "source", "eval"},
    "export": MODEL_CORE | {"train", "source"},
    # ablations sit on top of all of it: they train proxies, evaluate them and judge the corpora
    "ablate": MODEL_CORE | {"train", "source", "eval", "pretrain", "finetune", "export"},
    "cli": MODEL_CORE | {"train", "source", "eval", "pretrain", "finetune", "export", "ablate"},
}

TRAINER_PACKAGE = "model.train"
TRAINER_DATA_MODULE = "model.train.data"  # the one door from the trainer to the data
DATA_SIDE = ("corpus.mixing", "corpus.store", "pipelines")  # only the door may import these
# Plain definitions any model/train module may import: atomic file writes; the packing modes and ignore index.
OPEN_TO_TRAINER = ("corpus.store.files", "corpus.mixing.packing")
FORBIDDEN_TO_MODEL = ("pipelines",)  # outside model/train (the door imports it for the trainer)


# ---------------------------------------------------------------------------------------------
# The checker.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Import:
    path: str  # the importing file, relative to the root
    line: int
    importer: str  # dotted module name of the importing file
    imported: str  # dotted name of the imported module, resolved as described above
    type_checking: bool  # under `if TYPE_CHECKING:`

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def within(name: str, prefix: str) -> bool:
    """`name` is the module `prefix` or inside it (dotted-prefix match, not string prefix)."""
    return name == prefix or name.startswith(prefix + ".")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(root: Path) -> tuple[dict[str, Path], set[str]]:
    """(module name -> file, names of package folders) under the layer packages of `root`."""
    modules: dict[str, Path] = {}
    packages: set[str] = set()
    for top in LAYERS:
        base = root / top
        if not base.is_dir():
            continue
        for path in sorted([base, *base.rglob("*")]):
            rel = path.relative_to(root).parts
            if any(p.startswith(".") or p == "__pycache__" for p in rel):
                continue
            if path.is_dir():
                packages.add(".".join(rel))
            elif path.suffix == ".py":
                modules[module_name(path, root)] = path
    return modules, packages


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _raw_imports(tree: ast.AST):
    """(node, under TYPE_CHECKING) for every import statement anywhere in the tree."""
    def walk(node: ast.AST, tc: bool):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from walk(child, True)
            for child in node.orelse:
                yield from walk(child, tc)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, tc
        for child in ast.iter_child_nodes(node):
            yield from walk(child, tc)
    yield from walk(tree, False)


def resolve(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool,
            is_module) -> list[str]:
    """The dotted names of the modules one import statement imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        if node.level - 1 > len(package) - 1:
            raise ValueError(f"relative import beyond the top-level package in {importer}")
        base = package[:len(package) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module
    names = []
    for alias in node.names:
        candidate = f"{source}.{alias.name}"
        names.append(candidate if alias.name != "*" and is_module(candidate) else source)
    return list(dict.fromkeys(names))


def collect_imports(root: Path) -> list[Import]:
    """Every import of every module under the layer packages of `root`, resolved to module names."""
    modules, packages = discover(root)
    is_module = lambda name: name in modules or name in packages  # noqa: E731
    found = []
    for importer, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(root).as_posix()
        for node, tc in _raw_imports(tree):
            for imported in resolve(node, importer, path.name == "__init__.py", is_module):
                found.append(Import(rel, node.lineno, importer, imported, tc))
    return found


def project_imports(root: Path) -> list[Import]:
    return [i for i in collect_imports(root) if i.imported.split(".")[0] in LAYERS]


def layer_violations(root: Path) -> list[str]:
    """Rule 1: no import of a higher layer."""
    out = []
    for i in project_imports(root):
        own, other = i.importer.split(".")[0], i.imported.split(".")[0]
        if LAYERS.index(other) > LAYERS.index(own):
            allowed = ", ".join(LAYERS[:LAYERS.index(own) + 1])
            out.append(f"{i.where()}: imports {i.imported}: {own} may import only {allowed} "
                       f"(and third-party/stdlib); {other} is a higher layer")
    return out


def unit_of(name: str, package: str) -> str | None:
    """<package>.<unit>... -> unit; the bare package -> None."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def unit_layout_violations(root: Path, package: str, table: dict[str, set[str]]) -> list[str]:
    """Rules 2 and 3: a unit of `package` in `table` imports only itself and the units the table lists for it."""
    out = []
    for i in project_imports(root):
        if not (within(i.importer, package) and within(i.imported, package)):
            continue
        unit, target = unit_of(i.importer, package), unit_of(i.imported, package)
        if unit not in table or target == unit:
            continue
        allowed = ", ".join(sorted(table[unit])) or f"no other {package} unit"
        if target is None:
            out.append(f"{i.where()}: imports {i.imported}: {package}.{unit} may import only {allowed}; "
                       f"the package root {package} is not in the layout table")
        elif target not in table:
            out.append(f"{i.where()}: imports {i.imported}: {package}.{unit} may import only {allowed}; "
                       f"{package}.{target} is not in the layout table")
        elif target not in table[unit]:
            out.append(f"{i.where()}: imports {i.imported}: {package}.{unit} may import only {allowed}")
    return out


def unplaced_modules(root: Path, package: str, table: dict[str, set[str]]) -> list[str]:
    """Rules 2 and 3: modules of `package` (other than its root) whose unit is not in the table."""
    modules, _ = discover(root)
    return [f"{path.relative_to(root)}: {package}.{unit_of(name, package)} is not in the layout table"
            for name, path in sorted(modules.items())
            if within(name, package) and name != package and unit_of(name, package) not in table]


def corpus_layout_violations(root: Path) -> list[str]:
    return unit_layout_violations(root, "corpus", CORPUS_LAYOUT)


def unplaced_corpus_modules(root: Path) -> list[str]:
    return unplaced_modules(root, "corpus", CORPUS_LAYOUT)


def model_layout_violations(root: Path) -> list[str]:
    return unit_layout_violations(root, "model", MODEL_LAYOUT)


def unplaced_model_modules(root: Path) -> list[str]:
    return unplaced_modules(root, "model", MODEL_LAYOUT)


def trainer_data_violations(root: Path) -> list[str]:
    """Rule 4: the trainer reaches data through model.train.data only; model never imports pipelines."""
    out = []
    for i in project_imports(root):
        if not within(i.importer, "model") or within(i.importer, TRAINER_DATA_MODULE):
            continue
        if within(i.importer, TRAINER_PACKAGE):
            if any(within(i.imported, p) for p in OPEN_TO_TRAINER):
                continue
            if any(within(i.imported, p) for p in DATA_SIDE):
                out.append(f"{i.where()}: imports {i.imported}: inside {TRAINER_PACKAGE} only "
                           f"{TRAINER_DATA_MODULE} may import {', '.join(DATA_SIDE)} "
                           f"(others may import {', '.join(OPEN_TO_TRAINER)})")
        elif any(within(i.imported, p) for p in FORBIDDEN_TO_MODEL):
            out.append(f"{i.where()}: imports {i.imported}: model outside {TRAINER_PACKAGE} may not import "
                       f"{', '.join(FORBIDDEN_TO_MODEL)}; the trainer reaches it through {TRAINER_DATA_MODULE}")
    return out


def import_graph(root: Path) -> dict[str, dict[str, Import]]:
    """module -> {imported project module -> the first import making that edge}; no TYPE_CHECKING."""
    modules, _ = discover(root)
    graph: dict[str, dict[str, Import]] = {m: {} for m in modules}
    for i in project_imports(root):
        if not i.type_checking and i.imported in modules:
            graph[i.importer].setdefault(i.imported, i)
    return graph


def strongly_connected_components(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def shortest_cycle(graph: dict[str, dict[str, Import]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first member, staying inside the component."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in component {component}")


def import_cycles(root: Path) -> list[str]:
    """Rule 5: every strongly connected component of more than one module, or a self-import."""
    graph = import_graph(root)
    out = []
    for component in strongly_connected_components(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        cycle = shortest_cycle(graph, component)
        lines = [f"import cycle among {len(component)} module(s): {', '.join(component)}",
                 f"  cycle: {' -> '.join(cycle)}"]
        for a, b in zip(cycle, cycle[1:]):
            lines.append(f"    {graph[a][b].where()}: {a} imports {b}")
        out.append("\n".join(lines))
    return out


def explain(violations: list[str]) -> str:
    return f"{len(violations)} violation(s):\n" + "\n".join(violations)


# ---------------------------------------------------------------------------------------------
# The real tree.
# ---------------------------------------------------------------------------------------------

RULES = {  # test id -> the check, each returning the violations it finds (empty when the rule holds)
    "imports run down the layers": layer_violations,
    "corpus units import only what the layout table allows": corpus_layout_violations,
    "every corpus module belongs to a unit of the layout table": unplaced_corpus_modules,
    "model units import only what the model layout table allows": model_layout_violations,
    "every model module belongs to a unit of the model layout table": unplaced_model_modules,
    "the trainer reaches data only through model.train.data": trainer_data_violations,
    "project modules form no import cycles": import_cycles,
}


@pytest.mark.parametrize("rule", list(RULES))
def test_the_project_tree_follows_the_rule(rule):
    violations = RULES[rule](ROOT)
    assert not violations, explain(violations)


# ---------------------------------------------------------------------------------------------
# The checker on fake trees: each rule can fail, and a clean tree passes.
# ---------------------------------------------------------------------------------------------

def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """Write `files` (path -> source) under tmp_path; every folder on the way becomes a package."""
    for rel, source in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    for folder in [p for p in tmp_path.rglob("*") if p.is_dir()]:
        (folder / "__init__.py").touch()
    return tmp_path


def imported_by(root: Path, importer: str) -> list[str]:
    return [i.imported for i in collect_imports(root) if i.importer == importer]


CLEAN_TREE = {
    "corpus/manifest.py": "import json\nfrom pydantic import BaseModel\n",
    "corpus/paths.py": "from corpus.manifest import BaseModel\n",
    "corpus/text/rules.py": "from corpus import paths\n",
    "corpus/tokenizer/tokenizer.py": "from corpus.text.rules import x\nfrom corpus.manifest import m\n",
    "corpus/store/files.py": "import os\n",
    "corpus/store/shards.py": "from corpus.store import files\nfrom corpus.tokenizer.tokenizer import T\n",
    "corpus/mixing/sampler.py": "from corpus.store.shards import Shard\n",
    "corpus/inspection/stats.py": "from corpus.store.shards import Shard\nfrom corpus.text import rules\n",
    "corpus/mirror/mirror.py": "from corpus.tokenizer.tokenizer import T\n",
    "pipelines/build.py": "import ray\nfrom corpus.store.shards import Shard\n",
    "pipelines/cli.py": "def main():\n    from pipelines.build import build\n",
    "model/train/data.py": "from corpus.mixing.sampler import S\nfrom corpus.store.shards import Shard\n"
                           "from pipelines.build import build\n",
    "model/train/loop.py": "import torch\nfrom model.train.data import batches\n"
                           "from corpus.store.files import atomic_write\nfrom corpus.tokenizer import tokenizer\n"
                           "from model.openelm import OpenELM\n",
    "model/openelm.py": "from model.config import C\n",
    "model/config.py": "",
    "model/eval/harness.py": "from model.train import loop\nfrom model.adapters.lora import load\n",
    "model/adapters/lora.py": "from model.openelm import OpenELM\n",
    "model/finetune/run.py": "from model.eval.harness import evaluator\nfrom model.train.loop import train\n",
    "model/export.py": "from corpus.store.files import atomic_write\nfrom model.train import loop\n",
    "model/cli.py": "def main():\n    from model.finetune.run import run\n    from model.export import export\n",
}


def test_clean_tree_has_no_violations(tmp_path):
    root = tree(tmp_path, CLEAN_TREE)
    assert layer_violations(root) == []
    assert corpus_layout_violations(root) == []
    assert model_layout_violations(root) == [] and unplaced_model_modules(root) == []
    assert trainer_data_violations(root) == []
    assert import_cycles(root) == []


# Rule 1: layers.

def test_corpus_importing_pipelines_is_a_layer_violation(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "import os\nfrom pipelines.b import run\n", "pipelines/b.py": ""})
    assert layer_violations(root) == [
        "corpus/a.py:2: imports pipelines.b: corpus may import only corpus (and third-party/stdlib); "
        "pipelines is a higher layer"]


def test_corpus_importing_model_is_a_layer_violation(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "import model.c\n", "model/c.py": ""})
    assert [v.split(":")[:3] for v in layer_violations(root)] == [["corpus/a.py", "1", " imports model.c"]]


def test_pipelines_importing_model_is_a_layer_violation(tmp_path):
    root = tree(tmp_path, {"pipelines/b.py": "from model import c\n", "model/c.py": ""})
    assert [v.split(":")[:3] for v in layer_violations(root)] == [["pipelines/b.py", "1", " imports model.c"]]


def test_importing_down_the_layers_is_allowed(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "import numpy\n", "pipelines/b.py": "import corpus.a\n",
                           "model/c.py": "import corpus.a\nimport pipelines.b\n"})
    assert layer_violations(root) == []


def test_lazy_import_inside_a_function_is_a_layer_violation(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "def f():\n    from pipelines.b import run\n", "pipelines/b.py": ""})
    assert [v.split(":")[:2] for v in layer_violations(root)] == [["corpus/a.py", "2"]]


def test_type_checking_import_up_the_layers_is_still_a_layer_violation(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                          "    from pipelines.b import Run\n", "pipelines/b.py": ""})
    assert [v.split(":")[:2] for v in layer_violations(root)] == [["corpus/a.py", "3"]]


# Rule 2: the corpus layout table.

def test_layout_table_names_only_units_it_defines():
    assert set().union(*CORPUS_LAYOUT.values()) <= set(CORPUS_LAYOUT)


def test_text_importing_tokenizer_is_a_layout_violation(tmp_path):
    root = tree(tmp_path, {"corpus/text/rules.py": "from corpus.tokenizer.tokenizer import T\n",
                           "corpus/tokenizer/tokenizer.py": ""})
    assert corpus_layout_violations(root) == [
        "corpus/text/rules.py:1: imports corpus.tokenizer.tokenizer: corpus.text may import only manifest, paths"]


def test_tokenizer_importing_text_is_allowed(tmp_path):
    root = tree(tmp_path, {"corpus/tokenizer/tokenizer.py": "from corpus.text import rules\n",
                           "corpus/text/rules.py": ""})
    assert corpus_layout_violations(root) == []


def test_manifest_importing_paths_is_a_layout_violation(tmp_path):
    root = tree(tmp_path, {"corpus/manifest.py": "from corpus.paths import root\n", "corpus/paths.py": ""})
    assert [v.split(":")[:3] for v in corpus_layout_violations(root)] == [
        ["corpus/manifest.py", "1", " imports corpus.paths"]]


def test_paths_importing_manifest_is_allowed(tmp_path):
    root = tree(tmp_path, {"corpus/paths.py": "from corpus.manifest import M\n", "corpus/manifest.py": ""})
    assert corpus_layout_violations(root) == []


def test_mixing_importing_tokenizer_is_a_layout_violation(tmp_path):
    root = tree(tmp_path, {"corpus/mixing/sampler.py": "from corpus.tokenizer.tokenizer import T\n",
                           "corpus/tokenizer/tokenizer.py": ""})
    assert [v.split(":")[:3] for v in corpus_layout_violations(root)] == [
        ["corpus/mixing/sampler.py", "1", " imports corpus.tokenizer.tokenizer"]]


def test_store_importing_inspection_is_a_layout_violation(tmp_path):
    root = tree(tmp_path, {"corpus/store/shards.py": "def f():\n    from corpus.inspection import stats\n",
                           "corpus/inspection/stats.py": ""})
    assert [v.split(":")[:3] for v in corpus_layout_violations(root)] == [
        ["corpus/store/shards.py", "2", " imports corpus.inspection.stats"]]


def test_placed_unit_importing_a_corpus_module_outside_the_table_is_a_layout_violation(tmp_path):
    root = tree(tmp_path, {"corpus/store/shards.py": "from corpus.legacy import x\n", "corpus/legacy.py": ""})
    assert corpus_layout_violations(root) == [
        "corpus/store/shards.py:1: imports corpus.legacy: corpus.store may import only manifest, paths, text, "
        "tokenizer; corpus.legacy is not in the layout table"]


def test_a_corpus_module_outside_the_table_is_reported(tmp_path):
    root = tree(tmp_path, {"corpus/legacy.py": "from corpus.mirror import mirror\n", "corpus/__init__.py": "",
                           "corpus/mirror/mirror.py": ""})
    assert unplaced_corpus_modules(root) == ["corpus/legacy.py: corpus.legacy is not in the layout table"]


def test_missing_corpus_subpackages_are_not_an_error(tmp_path):
    root = tree(tmp_path, {"corpus/manifest.py": "", "corpus/store/shards.py": "from corpus import manifest\n"})
    assert corpus_layout_violations(root) == []
    assert import_cycles(root) == []


# Rule 3: the model layout table.

def test_model_layout_table_names_only_units_it_defines():
    assert set().union(*MODEL_LAYOUT.values()) <= set(MODEL_LAYOUT)


def test_model_layout_table_is_one_way():
    """No two units may import each other: the table itself is an order."""
    assert [(a, b) for a in MODEL_LAYOUT for b in MODEL_LAYOUT[a]
            if a != b and a in MODEL_LAYOUT[b] and not {a, b} <= MODEL_CORE] == []


@pytest.mark.parametrize("importer, statement, imported", [
    ("model/train/pretrain.py", "    from model.eval.harness import evaluator", "model.eval.harness"),
    ("model/eval/harness.py", "    from model.finetune.adapters import load", "model.finetune.adapters"),
    ("model/finetune/run.py", "    from model.cli import main", "model.cli"),
    ("model/openelm.py", "    from model.train.loss import z_loss", "model.train.loss"),
    ("model/source.py", "    from model.export import export", "model.export"),
])
def test_a_lazy_model_import_against_the_order_is_a_violation(tmp_path, importer, statement, imported):
    others = ("model/eval/harness.py", "model/finetune/adapters.py", "model/cli.py", "model/train/loss.py",
              "model/export.py", "model/source.py", "model/openelm.py")
    root = tree(tmp_path, {**dict.fromkeys(others, ""), importer: f"def f():\n{statement}\n"})
    assert [v.split(":")[:3] for v in model_layout_violations(root)] == [[importer, "2", f" imports {imported}"]]


def test_eval_may_import_train_and_the_core(tmp_path):
    root = tree(tmp_path, {"model/eval/compare.py": "from model.train.metrics import m\nfrom model.config import C\n"
                                                    "from model.adapters import lora\n",
                           "model/train/metrics.py": "", "model/config.py": "", "model/adapters/lora.py": ""})
    assert model_layout_violations(root) == []


def test_a_model_module_outside_the_table_is_reported(tmp_path):
    root = tree(tmp_path, {"model/legacy.py": "", "model/config.py": "", "model/misc/helpers.py": ""})
    assert unplaced_model_modules(root) == ["model/legacy.py: model.legacy is not in the layout table",
                                            "model/misc/__init__.py: model.misc is not in the layout table",
                                            "model/misc/helpers.py: model.misc is not in the layout table"]


# Rule 4: the trainer reaches data through model/train/data.py.

@pytest.mark.parametrize("statement, imported", [
    ("from corpus.mixing.sampler import S", "corpus.mixing.sampler"),
    ("from corpus.store.shards import Shard", "corpus.store.shards"),
    ("import corpus.store", "corpus.store"),
    ("from pipelines.build import build", "pipelines.build"),
])
def test_train_module_other_than_data_importing_the_data_side_is_a_violation(tmp_path, statement, imported):
    root = tree(tmp_path, {"model/train/loop.py": f"def f():\n    {statement}\n", "corpus/mixing/sampler.py": "",
                           "corpus/store/shards.py": "", "pipelines/build.py": ""})
    assert [v.split(":")[:3] for v in trainer_data_violations(root)] == [
        ["model/train/loop.py", "2", f" imports {imported}"]]


def test_train_data_may_import_mixing_store_and_pipelines(tmp_path):
    root = tree(tmp_path, {"model/train/data.py": "import corpus.mixing.sampler\nimport corpus.store.shards\n"
                                                   "import pipelines.build\n"})
    assert trainer_data_violations(root) == []


def test_any_train_module_may_import_corpus_store_files(tmp_path):
    root = tree(tmp_path, {"model/train/checkpoint.py": "from corpus.store.files import atomic_write\n"
                                                         "from corpus.store import files\n",
                           "corpus/store/files.py": ""})
    assert trainer_data_violations(root) == []


def test_train_module_may_import_other_corpus_units(tmp_path):
    root = tree(tmp_path, {"model/train/loop.py": "from corpus.tokenizer.tokenizer import T\n"})
    assert trainer_data_violations(root) == []


def test_model_outside_train_importing_pipelines_is_a_violation(tmp_path):
    root = tree(tmp_path, {"model/export.py": "from pipelines.build import build\n"})
    assert [v.split(":")[:3] for v in trainer_data_violations(root)] == [
        ["model/export.py", "1", " imports pipelines.build"]]


def test_model_outside_train_may_import_corpus_store(tmp_path):
    root = tree(tmp_path, {"model/export.py": "from corpus.store.shards import Shard\nimport corpus.tokenizer\n"})
    assert trainer_data_violations(root) == []


# Rule 5: import cycles.

def test_two_module_cycle_is_reported_with_file_and_line_of_each_edge(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "import corpus.b\n", "corpus/b.py": "import os\nfrom corpus.a import x\n"})
    assert import_cycles(root) == [
        "import cycle among 2 module(s): corpus.a, corpus.b\n"
        "  cycle: corpus.a -> corpus.b -> corpus.a\n"
        "    corpus/a.py:1: corpus.a imports corpus.b\n"
        "    corpus/b.py:2: corpus.b imports corpus.a"]


def test_self_import_is_reported(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "def f():\n    from corpus import a\n"})
    assert import_cycles(root) == [
        "import cycle among 1 module(s): corpus.a\n"
        "  cycle: corpus.a -> corpus.a\n"
        "    corpus/a.py:2: corpus.a imports corpus.a"]


def test_three_module_cycle_is_one_component_printed_as_a_cycle(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "import corpus.b\n", "corpus/b.py": "import corpus.c\n",
                           "corpus/c.py": "import corpus.a\n", "corpus/d.py": "import corpus.a\n"})
    [cycle] = import_cycles(root)
    assert cycle.splitlines()[:2] == ["import cycle among 3 module(s): corpus.a, corpus.b, corpus.c",
                                      "  cycle: corpus.a -> corpus.b -> corpus.c -> corpus.a"]


def test_lazy_import_inside_a_function_forms_a_cycle(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "import corpus.b\n",
                           "corpus/b.py": "class K:\n    def f(self):\n        from corpus.a import x\n"})
    [cycle] = import_cycles(root)
    assert "corpus/b.py:3: corpus.b imports corpus.a" in cycle


def test_type_checking_import_does_not_form_a_cycle(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "import corpus.b\n",
                           "corpus/b.py": "import typing\nif typing.TYPE_CHECKING:\n    from corpus.a import X\n"})
    assert import_cycles(root) == []


def test_else_branch_of_type_checking_still_forms_a_cycle(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "import corpus.b\n",
                           "corpus/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\n"
                                          "else:\n    from corpus.a import X\n"})
    assert len(import_cycles(root)) == 1


def test_cycle_across_layers_is_reported(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "def f():\n    import pipelines.b\n", "pipelines/b.py": "import corpus.a\n"})
    [cycle] = import_cycles(root)
    assert cycle.splitlines()[0] == "import cycle among 2 module(s): corpus.a, pipelines.b"


def test_package_init_importing_its_submodule_that_imports_the_package_is_a_cycle(tmp_path):
    root = tree(tmp_path, {"corpus/store/__init__.py": "from corpus.store.shards import Shard\n",
                           "corpus/store/shards.py": "import corpus.store\n"})
    [cycle] = import_cycles(root)
    assert cycle.splitlines()[1] == "  cycle: corpus.store -> corpus.store.shards -> corpus.store"


# Resolving imports to modules.

def test_from_package_import_submodule_resolves_to_the_submodule(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "from corpus.store import shards\n", "corpus/store/shards.py": ""})
    assert imported_by(root, "corpus.a") == ["corpus.store.shards"]


def test_from_module_import_name_resolves_to_the_module(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "from corpus.store.shards import Shard, write\n",
                           "corpus/store/shards.py": ""})
    assert imported_by(root, "corpus.a") == ["corpus.store.shards"]


def test_from_package_import_name_resolves_to_the_package(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "from corpus.store import Shard\n", "corpus/store/shards.py": ""})
    assert imported_by(root, "corpus.a") == ["corpus.store"]


def test_import_of_a_package_is_an_edge_to_its_init_module(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "import corpus.store\n", "corpus/store/shards.py": ""})
    assert import_graph(root)["corpus.a"].keys() == {"corpus.store"}
    assert (root / "corpus/store/__init__.py").exists()


def test_from_package_import_submodule_and_name_resolves_to_both(tmp_path):
    root = tree(tmp_path, {"corpus/a.py": "from corpus.store import shards, Shard\n", "corpus/store/shards.py": ""})
    assert imported_by(root, "corpus.a") == ["corpus.store.shards", "corpus.store"]


def test_relative_import_from_dot_resolves_against_the_package(tmp_path):
    root = tree(tmp_path, {"corpus/store/shards.py": "from . import files\nfrom . import Thing\n",
                           "corpus/store/files.py": ""})
    assert imported_by(root, "corpus.store.shards") == ["corpus.store.files", "corpus.store"]


def test_relative_import_from_dot_module_resolves_to_that_module(tmp_path):
    root = tree(tmp_path, {"corpus/store/shards.py": "from .files import atomic_write\n",
                           "corpus/store/files.py": ""})
    assert imported_by(root, "corpus.store.shards") == ["corpus.store.files"]


def test_relative_import_in_a_package_init_resolves_against_that_package(tmp_path):
    root = tree(tmp_path, {"corpus/store/__init__.py": "from .shards import Shard\nfrom . import files\n",
                           "corpus/store/shards.py": "", "corpus/store/files.py": ""})
    assert imported_by(root, "corpus.store") == ["corpus.store.shards", "corpus.store.files"]


def test_relative_import_with_two_dots_resolves_against_the_parent_package(tmp_path):
    root = tree(tmp_path, {"corpus/mixing/sampler.py": "from ..store import shards\nfrom .. import manifest\n",
                           "corpus/store/shards.py": "", "corpus/manifest.py": ""})
    assert imported_by(root, "corpus.mixing.sampler") == ["corpus.store.shards", "corpus.manifest"]


def test_relative_import_is_checked_like_an_absolute_one(tmp_path):
    root = tree(tmp_path, {"corpus/text/rules.py": "from ..tokenizer import tokenizer\n",
                           "corpus/tokenizer/tokenizer.py": "from ..text.rules import R\n"})
    assert [v.split(":")[:3] for v in corpus_layout_violations(root)] == [
        ["corpus/text/rules.py", "1", " imports corpus.tokenizer.tokenizer"]]
    assert len(import_cycles(root)) == 1
