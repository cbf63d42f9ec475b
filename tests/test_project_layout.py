"""The layout rules the repository keeps: imports point one way, the Trainer stays readable, tests and benches use
public entry points only, the README stays a user's page.

The import graph is read from the source (``ast``), lazy imports inside functions and ``import_module("x")``
included, over every tracked non-test ``.py`` file. Layers, top to bottom: entry points, ``analysis``,
``experiments``, ``bench``, ``scripts`` and ``docker`` → ``mt_dnn`` → ``module`` → ``data_utils`` →
``pretrained_models``. An import may point down or stay in its layer, never up, and no set of modules may import
each other in a circle. That the optimizer imports without ``transformers`` is
``tests/test_bert_optim.py::test_optimizers_import_and_schedule_without_transformers``.
"""
from __future__ import annotations

import ast
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"pretrained_models": 0, "data_utils": 1, "module": 2, "mt_dnn": 3}
TOP_LAYER = 4
TRAINER_CLASS_LINES = 400
README_LINES = 300
VOICE = re.compile(r"issue [0-9]+|of mine|my own|other engineers", re.IGNORECASE)
DATA_SUFFIXES = {".json", ".jsonl", ".tsv", ".csv", ".txt"}


def tracked(*patterns: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", *patterns], check=True, capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


def product_files() -> list[str]:
    return [f for f in tracked("*.py") if not f.startswith("tests/")]


def module_name(path: str) -> str:
    name = path[:-3].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def layer(name: str) -> int:
    return LAYERS.get(name.split(".")[0], TOP_LAYER)


class ImportGraph:
    """Which repository module imports which, with the line of each import."""

    def __init__(self, files: list[str]):
        self.modules = {module_name(f): f for f in files}
        self.edges: dict[tuple[str, str], list[int]] = defaultdict(list)
        for name, path in self.modules.items():
            self._read(name, path)

    def resolve(self, dotted: str):
        """The longest prefix of a dotted name that is a repository module, or None (third-party)."""
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in self.modules:
                return candidate
        return None

    def _targets(self, node, package: str) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            return [f"{base}.{alias.name}" if base else alias.name for alias in node.names] + [base]
        func = getattr(node, "func", None)
        if isinstance(node, ast.Call) and getattr(func, "attr", getattr(func, "id", "")) == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            return [node.args[0].value]
        return []

    def _read(self, name: str, path: str) -> None:
        self._read_text(name, path, (ROOT / path).read_text(encoding="utf-8"))

    def _read_text(self, name: str, path: str, text: str) -> None:
        tree = ast.parse(text, path)
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        for node in ast.walk(tree):
            found = {self.resolve(t) for t in self._targets(node, package) if t}
            for target in sorted(t for t in found if t and t != name):
                self.edges[(name, target)].append(node.lineno)

    def circles(self) -> list[list[str]]:
        """Strongly connected components with more than one module."""
        succ = defaultdict(set)
        for src, dst in self.edges:
            succ[src].add(dst)
        index, low, stack, on_stack, found = {}, {}, [], set(), []

        def visit(v):
            index[v] = low[v] = len(index)
            stack.append(v)
            on_stack.add(v)
            for w in sorted(succ[v]):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

        for v in sorted(self.modules):
            if v not in index:
                visit(v)
        return found

    def upward(self) -> list[str]:
        return [f"{self.modules[src]}:{lines[0]} imports {dst}" for (src, dst), lines in sorted(self.edges.items())
                if layer(dst) > layer(src)]


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return ImportGraph(product_files())


def test_import_graph_reads_top_level_lazy_and_dynamic_imports():
    files = {"pkg/__init__.py": "", "pkg/a.py": "import pkg.b\nfrom . import c\n",
             "pkg/b.py": "def f():\n    from pkg.c import x\n", "pkg/c.py": "import importlib\n"
             "importlib.import_module('pkg.a')\nimport torch\n"}
    graph = ImportGraph.__new__(ImportGraph)
    graph.modules = {module_name(path): path for path in files}
    graph.edges = defaultdict(list)
    for path, text in files.items():
        graph._read_text(module_name(path), path, text)
    assert dict(graph.edges) == {("pkg.a", "pkg.b"): [1], ("pkg.a", "pkg"): [2], ("pkg.a", "pkg.c"): [2],
                                 ("pkg.b", "pkg.c"): [2],
                                 ("pkg.c", "pkg.a"): [2]}
    assert graph.circles() == [["pkg.a", "pkg.b", "pkg.c"]]
    assert layer("mt_dnn.trainer") > layer("module.bert_optim") > layer("data_utils.atomic") \
        > layer("pretrained_models")


def test_no_import_circles(graph):
    assert graph.circles() == []


def test_imports_only_point_down_the_layers(graph):
    assert graph.upward() == []


def test_training_never_imports_analysis(graph):
    assert [edge for edge in graph.edges if edge[0].startswith("mt_dnn") and edge[1].startswith("analysis")] == []


def classes(path: Path) -> dict[str, int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


def test_trainer_classes_stay_readable():
    sizes = classes(ROOT / "mt_dnn" / "trainer.py")
    assert "Trainer" in sizes
    assert {name: n for name, n in sizes.items() if n > TRAINER_CLASS_LINES} == {}


def test_one_place_defers_to_torchs_implementation_default():
    users = [f for f in product_files() if "_default_to_fused_or_foreach" in (ROOT / f).read_text(encoding="utf-8")]
    assert len(users) == 1, users


def module_aliases(tree: ast.Module, graph: ImportGraph) -> dict[str, str]:
    """Local names bound to a repository module (``import module.x as y``, ``from module import x``)."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in graph.modules:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in graph.modules:
                    aliases[alias.asname or alias.name] = full
    return aliases


def dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def global_assignments(path: str, graph: ImportGraph, text: str = None) -> list[str]:
    """Assignments to an attribute of a module under ``module/``, direct or through monkeypatch / mock.patch:
    the optimizer's implementation is chosen through its public arguments, never by switching its globals."""
    tree = ast.parse(text if text is not None else (ROOT / path).read_text(encoding="utf-8"), path)
    aliases = module_aliases(tree, graph)

    def is_module(expr) -> bool:
        name = dotted(expr)
        head = name.split(".")[0]
        full = aliases.get(head)  # only names this file binds by importing a repository module
        target = (full or "") + name[len(head):]
        return bool(full) and target in graph.modules and target.split(".")[0] == "module"

    hits = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        hits += [f"{path}:{node.lineno}" for t in targets if isinstance(t, ast.Attribute) and is_module(t.value)]
        if isinstance(node, ast.Call) and dotted(node.func).split(".")[-1] in {"setattr", "object", "patch"} \
                and node.args:
            first = node.args[0]
            if is_module(first) or (isinstance(first, ast.Constant) and isinstance(first.value, str)
                                    and (graph.resolve(first.value) or "").split(".")[0] == "module"):
                hits.append(f"{path}:{node.lineno}")
    return hits


def test_the_global_assignment_check_sees_each_form(graph):
    text = ("import module.bert_optim\nimport module.sage.dispatch as d\nfrom module.sage import dispatch\n"
            "import mt_dnn.precision as precision\n"
            "d.X = 1\ndispatch.Y += 2\nmonkeypatch.setattr(module.bert_optim, 'build_optimizer', f)\n"
            "monkeypatch.setattr('module.sage.dispatch.select', f)\nmock.patch.object(dispatch, 'select')\n"
            "precision.FP16_DEVICE_TYPES = ()\nmodule_like = object()\nmodule_like.x = 1\n"
            "monkeypatch.setattr(precision, 'FP16_DEVICE_TYPES', ())\n")
    assert global_assignments("example.py", graph, text) == [f"example.py:{n}" for n in (5, 6, 7, 8, 9)]


def test_tests_and_benches_never_assign_module_globals(graph):
    files = [f for f in tracked("tests/*.py", "bench/*.py")]
    assert [hit for f in files for hit in global_assignments(f, graph)] == []


def private_trainer_methods() -> set[str]:
    tree = ast.parse((ROOT / "mt_dnn" / "trainer.py").read_text(encoding="utf-8"))
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    return {n.name for n in trainer.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name.startswith("_") and not n.name.endswith("__")}


def private_uses(path: str, private: set[str], text: str) -> list[str]:
    """``<something named trainer>._method`` for each private Trainer method, called or replaced."""
    tree = ast.parse(text, path)
    return [f"{path}:{n.lineno} .{n.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr in private and "trainer" in dotted(n.value).lower()]


def test_the_private_method_check_sees_calls_and_replacements():
    text = "trainer._plan(0)\nself.trainer._step = f\nt = trainer.epoch_plan(0)\nother._plan(0)\n"
    assert sorted(private_uses("x.py", {"_plan", "_step"}, text)) == ["x.py:1 ._plan", "x.py:2 ._step"]


def test_nothing_outside_the_trainer_calls_its_private_methods():
    private = private_trainer_methods()
    assert private, "the Trainer has private helpers; the check must know them"
    hits = []
    for f in tracked("*.py"):
        if f != "mt_dnn/trainer.py":
            hits += private_uses(f, private, (ROOT / f).read_text(encoding="utf-8"))
    assert hits == []


def test_no_product_file_patches_sys_path():
    hits = []
    for f in product_files():
        tree = ast.parse((ROOT / f).read_text(encoding="utf-8"), f)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and dotted(node) == "sys.path":
                hits.append(f"{f}:{node.lineno}")
    assert hits == []


def test_readme_is_a_page_a_user_reads():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= README_LINES


def text_files() -> list[str]:
    return [f for f in tracked() if not f.startswith("tests/") and Path(f).suffix not in DATA_SUFFIXES
            and (ROOT / f).stat().st_size < 2_000_000]


def test_product_text_speaks_of_the_project():
    hits = []
    for f in text_files():
        try:
            text = (ROOT / f).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits += [f"{f}:{n}" for n, line in enumerate(text.splitlines(), 1) if VOICE.search(line)]
    assert hits == []


def test_nothing_cites_a_path_outside_the_repository():
    needle = "shared/" + "reference"
    hits = []
    for f in tracked():
        try:
            if needle in (ROOT / f).read_text(encoding="utf-8"):
                hits.append(f)
        except UnicodeDecodeError:
            continue
    assert hits == []


def test_virtualenv_is_never_tracked():
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", ".venv"], check=True, capture_output=True,
                         text=True).stdout
    assert out == ""
