"""The library's shape: what ``xai`` may import, no import cycles among its modules, protocols that
``models`` satisfies, one start-up call, and packaging metadata that matches the pinned lock."""

from __future__ import annotations

import ast
import email
import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import fields
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
XAI = ROOT / "xai"
#: Only the command line may import ``models``: it turns bundle names into objects for the library.
MAY_IMPORT_MODELS = {"xai.cli"}
FORBIDDEN_EVERYWHERE = {"streamlit"}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package(path: Path, root: Path) -> str:
    name = _module_name(path, root)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")
    return ".".join([*base[: len(base) - (node.level - 1)], *([node.module] if node.module else [])])


def _imports(path: Path, root: Path = ROOT, *, runtime_only: bool = False) -> list[tuple[str, int]]:
    """Every absolute module an ``import`` / ``from ... import`` names, at any depth (function bodies
    included), relative ones resolved against the package; ``from pkg import sub`` also yields ``pkg.sub``.
    ``runtime_only`` leaves out ``if TYPE_CHECKING:`` blocks (annotations only, never executed)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _package(path, root)
    skipped: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, package)
            found.append((module, node.lineno))
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _library_files() -> list[Path]:
    return sorted(p for p in XAI.rglob("*.py") if "__pycache__" not in p.parts)


def _import_graph(files: list[Path], root: Path = ROOT, *, runtime_only: bool = True) -> dict[str, set[str]]:
    """Module -> the xai modules it imports when it runs (module level or inside functions: a lazy import
    still ties the two modules together). A module's own packages are left out: Python
    imports them before the module itself whatever it says (``from xai.review import schema`` in
    ``xai.review.store`` names its parent, which is already being imported)."""
    modules = {_module_name(p, root): p for p in files}

    def ancestors(name: str) -> set[str]:
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}

    return {name: {m for m, _ in _imports(path, root, runtime_only=runtime_only)
                   if m in modules and m not in ancestors(name)}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first walk, as the cycle it closes (empty for a DAG)."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    return cycles


# ------------------------------------------------------------------------------------- the import rule
def test_the_scanner_sees_imports_in_every_form(tmp_path):
    """The rule below is only as good as the scanner: it must see lazy, aliased, relative and
    type-checking imports (a scanner that misses them would pass any code)."""
    pkg = tmp_path / "xai" / "trust"
    pkg.mkdir(parents=True)
    src = pkg / "probe.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from models import LoadedModel\n"
        "def f():\n    import models.bundle as mb\n    from streamlit import session_state\n"
        "from .. import engine\nfrom . import model_access\n"
    )
    names = {name for name, _ in _imports(src, tmp_path)}
    assert {"models", "models.LoadedModel", "models.bundle", "streamlit", "xai.engine", "xai.trust.model_access"} <= names


def test_xai_imports_neither_models_nor_streamlit():
    offenders = []
    for path in _library_files():
        name = _module_name(path)
        for module, line in _imports(path):
            top = module.split(".")[0]
            if top in FORBIDDEN_EVERYWHERE or (top == "models" and name not in MAY_IMPORT_MODELS):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, "xai takes objects, it does not import models or streamlit:\n" + "\n".join(offenders)


def test_no_import_cycle_among_xai_modules():
    """Imports among ``xai`` modules (module level or lazy; and again counting ``TYPE_CHECKING`` ones) form a DAG:
    ``xai.radiograph`` and ``xai.dicom`` both import the leaf ``xai.radiograph_core``; the reader of
    raster files imports the DICOM reader, never the other way round. (``xai.arrays``, the read-only
    array helper, is a leaf too.)"""
    graph = _import_graph(_library_files())
    assert "xai.radiograph_core" in graph["xai.dicom"] and "xai.radiograph_core" in graph["xai.radiograph"]
    # The leaf imports nothing from xai but the array helper, itself a leaf.
    assert graph["xai.radiograph_core"] <= {"xai.arrays"} and not graph["xai.arrays"], "the leaves import no xai module"
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    # Type-only imports too: a reader following ``if TYPE_CHECKING:`` imports meets no circle either (the batch
    # report's records live in xai.batch.records, which both the CSV/HTML writer and the HTML parts import).
    typed = _cycles(_import_graph(_library_files(), runtime_only=False))
    assert not typed, "import cycles through type-only imports: " + "; ".join(" -> ".join(c) for c in typed)


def test_the_cycle_check_finds_the_old_dicom_radiograph_cycle(tmp_path):
    """The same scan and walk on the two modules as they were (dicom imported radiograph at module level,
    radiograph imported dicom inside a function; here also via ``try`` and a relative import) report the
    cycle, and an import for annotations only does not count."""
    (tmp_path / "xai").mkdir()
    (tmp_path / "xai" / "radiograph.py").write_text("def _decode():\n    try:\n        from xai.dicom import decode_dicom\n"
                                                     "    except ImportError:\n        pass\n")
    (tmp_path / "xai" / "dicom.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import xai.engine\n"
                                               "from .radiograph import Radiograph\n")
    (tmp_path / "xai" / "engine.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    import xai.dicom\n")
    graph = _import_graph(sorted((tmp_path / "xai").glob("*.py")), tmp_path)
    assert graph == {"xai.radiograph": {"xai.dicom"}, "xai.dicom": {"xai.radiograph"}, "xai.engine": set()}
    assert _cycles(graph) == [["xai.dicom", "xai.radiograph", "xai.dicom"]]


LOADERS = ("xai.radiograph", "xai.dicom", "xai.radiograph_core", "xai.sandboxed_decoder", "xai.preprocessing")


@pytest.mark.parametrize("order", [LOADERS, LOADERS[::-1], ("xai.dicom", "xai.radiograph")])
def test_loader_modules_import_in_any_order_in_a_fresh_interpreter(order):
    code = (
        "import importlib, sys\n"
        f"for name in {list(order)!r}:\n    importlib.import_module(name)\n"
        "from xai.radiograph import Radiograph, RadiographError, apply_window, CodecMissingError\n"
        "from xai import radiograph_core as core, dicom\n"
        "assert Radiograph is core.Radiograph and dicom.Radiograph is core.Radiograph\n"
        "assert RadiographError is core.RadiographError and apply_window is core.apply_window\n"
        "assert 'models' not in sys.modules and 'streamlit' not in sys.modules, sorted(sys.modules)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# ----------------------------------------------------------------------------------- start-up: boot()
def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_boot_applies_the_settings_once_from_any_number_of_threads():
    out = _run(
        "import threading, time\n"
        "from multiprocessing import spawn\n"
        "import pydicom.config as cfg\n"
        "import xai, xai.startup as su\n"
        "before = (cfg.settings.reading_validation_mode == cfg.IGNORE, spawn.prepare is su.prepare_without_main,"
        " su.booted())\n"
        "calls = []\n"
        "original = su._quiet_pydicom\n"
        "def slow():\n    calls.append(1); time.sleep(0.2); original()\n"
        "su._quiet_pydicom = slow\n"
        "threads = [threading.Thread(target=xai.boot) for _ in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "xai.boot()\n"
        "after = (cfg.settings.reading_validation_mode == cfg.IGNORE, spawn.prepare is su.prepare_without_main,"
        " su.booted())\n"
        "print(before, after, len(calls))\n"
    )
    assert out == "(False, False, False) (True, True, True) 1"


def test_boot_leaves_pydicom_unimported_and_quiets_it_when_another_thread_imports_it():
    """boot() costs no pydicom import (0.3 s of the app's first page); whoever imports pydicom later, in any
    thread, gets reading validation off, and the module keeps its own loader; a failed import fires nothing."""
    out = _run(
        "import sys, threading, importlib\n"
        "import xai\n"
        "xai.boot()\n"
        "print('pydicom' in sys.modules)\n"
        "try:\n    importlib.import_module('pydicom.config_that_is_not_there')\nexcept ImportError:\n    pass\n"
        "mods = ['pydicom', 'json', 'email.mime.text', 'xml.dom.minidom']\n"
        "threads = [threading.Thread(target=importlib.import_module, args=(m,)) for m in mods]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "import pydicom.config as cfg\n"
        "print(all(m in sys.modules for m in mods), cfg.settings.reading_validation_mode == cfg.IGNORE,\n"
        "      type(cfg.__loader__).__name__, type(cfg.__spec__.loader).__name__)\n"
    )
    assert out.split() == ["False", "True", "True", "SourceFileLoader", "SourceFileLoader"]


def test_the_import_hook_fires_once_and_only_after_a_successful_import(tmp_path, monkeypatch):
    import xai.startup as su

    (tmp_path / "hooked_mod_ok.py").write_text("VALUE = 1\n")
    (tmp_path / "hooked_mod_bad.py").write_text("raise RuntimeError('broken module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[str] = []
    hooks = [su.AfterImport(name, lambda m: seen.append(m.__name__)) for name in ("hooked_mod_ok", "hooked_mod_bad")]
    for hook in hooks:
        monkeypatch.setattr(sys, "meta_path", [hook, *sys.meta_path])
    try:
        import hooked_mod_ok  # noqa: F401
        with pytest.raises(RuntimeError, match="broken module"):
            import hooked_mod_bad  # noqa: F401
        assert seen == ["hooked_mod_ok"] and hooks[0].fired and not hooks[1].fired
        sys.modules.pop("hooked_mod_ok")
        import hooked_mod_ok  # noqa: F401,F811 - a second import: the hook is inert
        assert seen == ["hooked_mod_ok"]
    finally:
        sys.modules.pop("hooked_mod_ok", None)
        sys.modules.pop("hooked_mod_bad", None)


def test_reading_a_dicom_boots_the_library_first(dicom_dir):
    """A program that never called boot() still never lets pydicom log header values."""
    path = sorted(dicom_dir.glob("*.dcm"))[0]
    out = _run(
        "import pydicom.config as cfg\n"
        "import xai.startup as su\n"
        "from xai.radiograph import load_radiograph\n"
        "print(su.booted())\n"
        f"load_radiograph({str(path)!r})\n"
        "print(su.booted(), cfg.settings.reading_validation_mode == cfg.IGNORE)\n"
    )
    assert out.split() == ["False", "True", "True"]


def test_prepare_without_main_drops_only_the_main_module_entries(monkeypatch):
    import xai.startup as su

    seen = []
    monkeypatch.setattr(su, "_prepare_with_main", seen.append)
    su.prepare_without_main({"sys_path": ["/x"], "dir": "/w", "authkey": b"k", "init_main_from_path": "/app.py",
                             "init_main_from_name": "app"})
    assert seen == [{"sys_path": ["/x"], "dir": "/w", "authkey": b"k"}]


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}


def test_process_wide_side_effects_start_from_the_startup_module():
    """gc.freeze, pydicom's settings and the spawn patch are made in xai/startup.py only; the app and the
    command line call boot() at start-up, and the app freezes the heap through freeze_heap()."""
    sources = [p for p in (*XAI.rglob("*.py"), *(ROOT / "pages").glob("*.py"), *(ROOT / "models").rglob("*.py"),
                           ROOT / "app.py") if p.name != "startup.py" and "__pycache__" not in p.parts]
    offenders = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("gc.freeze", "freeze"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} gc.freeze")
            if isinstance(node, ast.Assign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    name = ast.unparse(target)
                    if name.startswith("pydicom.config") or name == "spawn.prepare":
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} sets {name}")
    assert not offenders, offenders
    assert "xai.boot" in _calls(ROOT / "app.py")
    assert "boot" in _calls(XAI / "cli.py")
    assert "freeze_heap" in _calls(ROOT / "pages" / "_models.py")


# ------------------------------------------------------------------------------------------ packaging
def _declared() -> dict[str, Requirement]:
    """Runtime dependencies and extras of pyproject.toml by canonical name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in specs}


def _pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements file (comments, options and blank lines skipped)."""
    pins = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # the lock pins exactly one version
        assert spec.operator == "==", f"{line}: the lock pins exact versions"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def _lock_problems(declared: dict[str, Requirement], pins: dict[str, str]) -> list[str]:
    problems = [f"{name}=={version} is not in pyproject's range {declared[name].specifier}"
                for name, version in pins.items() if name in declared
                and not declared[name].specifier.contains(version, prereleases=True)]
    problems += [f"{name} is pinned in requirements.txt but not declared in pyproject.toml"
                 for name in pins if name not in declared]
    return problems


def test_the_pinned_lock_lies_in_the_declared_ranges():
    pins = _pins((ROOT / "requirements.txt").read_text(encoding="utf-8"))
    declared = _declared()
    assert {"torch", "numpy", "pydicom"} <= pins.keys() <= declared.keys() | pins.keys()
    assert not _lock_problems(declared, pins)
    assert all(str(r.specifier) for r in declared.values()), "every dependency has a range"
    # the check itself: a pin outside its range and a pin nobody declared are both reported
    fake = {"numpy": "1.26.4", "left-pad": "1.0"}
    assert _lock_problems(declared, fake) == [
        "numpy==1.26.4 is not in pyproject's range <3,>=2.0",
        "left-pad is pinned in requirements.txt but not declared in pyproject.toml",
    ]


def _third_party_imports() -> dict[str, str]:
    """Top-level third-party module -> a file importing it, over xai/ and models/ (lazy imports included)."""
    found: dict[str, str] = {}
    for path in sorted((*XAI.rglob("*.py"), *(ROOT / "models").rglob("*.py"))):
        for module, _line in _imports(path):
            top = module.split(".")[0]
            if top and top not in sys.stdlib_module_names and top not in ("xai", "models", "__future__"):
                found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared():
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    imports = _third_party_imports()
    assert {"torch", "numpy", "cv2", "PIL", "pydicom", "safetensors"} <= imports.keys()
    missing = []
    for module, where in sorted(imports.items()):
        names = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not names & declared.keys():
            missing.append(f"{module} (imported in {where}; distribution {sorted(names)})")
    assert not missing, "imported but not declared in pyproject.toml: " + "; ".join(missing)


@pytest.mark.slow
def test_the_wheel_carries_every_module_the_bundles_and_the_command(tmp_path):
    """Build the wheel (no network, no isolation) from a copy of the sources and read it: every module and
    data file of xai/ and models/ (model bundles, migration templates), the declared dependencies, the
    ``xai`` command."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("xai", "models"):
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(zf.read(info))
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
    expected = {str(p.relative_to(src)) for package in ("xai", "models") for p in (src / package).rglob("*")
                if p.is_file()}
    assert not expected - names, f"left out of the wheel: {sorted(expected - names)}"
    assert {"models/bundles/chestcovnet/card.json", "models/bundles/chestcovnet/model.safetensors"} <= names
    requires = {canonicalize_name(Requirement(r).name) for r in metadata.get_all("Requires-Dist")}
    assert requires == set(_declared())
    assert "xai = xai.cli:main" in entry_points


# ------------------------------------------------------------------------------------------ protocols
def _annotation_names() -> dict[str, object]:
    """Names the annotations use under ``TYPE_CHECKING`` only."""
    from torch import nn

    from xai.preprocessing import Preprocessing

    return {"nn": nn, "Preprocessing": Preprocessing}


def _members(protocol: type) -> dict[str, object]:
    """Protocol member -> the type its property returns."""
    import typing

    return {name: typing.get_type_hints(getattr(protocol, name).fget, localns=_annotation_names())["return"]
            for name, value in vars(protocol).items() if isinstance(value, property)}


def test_models_implements_the_library_protocols():
    """isinstance on the real bundle, and the static shape: every protocol member is a field of the
    models dataclass with the same type (the card field's type itself satisfying the card protocol)."""
    import typing

    import models
    from xai import protocols

    loaded = models.load("chestcovnet")
    assert isinstance(loaded, protocols.LoadedModel) and isinstance(loaded.card, protocols.ModelCard)
    for protocol, concrete in ((protocols.ModelCard, models.ModelCard), (protocols.LoadedModel, models.LoadedModel)):
        hints = typing.get_type_hints(concrete, localns=_annotation_names())
        members = _members(protocol)
        assert members and set(members) <= {f.name for f in fields(concrete)}, protocol
        for name, expected in members.items():
            actual = hints[name]
            if expected is protocols.ModelCard:
                assert set(_members(protocols.ModelCard)) <= {f.name for f in fields(actual)}
            else:
                assert actual == expected, (concrete.__name__, name, actual, expected)
    # a card without the target layer, or a bare module without a card, is not a loaded model
    from types import SimpleNamespace

    partial = SimpleNamespace(**{k: getattr(loaded.card, k) for k in _members(protocols.ModelCard) if k != "target_layer"})
    assert not isinstance(partial, protocols.ModelCard)
    assert not isinstance(loaded.module, protocols.LoadedModel)


# ------------------------------------------------------------------------------------------ the app layer
PAGES = ROOT / "pages"
#: Module-level values that can change after import: a page module holding one would share it across sessions.
MUTABLE_CALLS = frozenset({"dict", "list", "set", "OrderedDict", "defaultdict", "deque", "ThreadPoolExecutor",
                           "Lock", "RLock", "WeakKeyDictionary", "WeakValueDictionary", "Queue"})


def test_no_import_cycle_among_models_modules():
    """``models`` is a DAG too (lazy imports included): the registry names the architectures, the architectures
    never import the registry back."""
    graph = _import_graph(sorted(p for p in (ROOT / "models").rglob("*.py") if "__pycache__" not in p.parts))
    assert "models.architectures" in graph
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _key_literal(node: ast.AST) -> str | None:
    """A widget key written in the code: a string, or an f-string's constant head followed by ``*``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return f"{node.values[0].value}*"
    return None


def _widget_keys(tree: ast.AST) -> set[str]:
    return {key for node in ast.walk(tree) if isinstance(node, ast.Call)
            for kw in node.keywords if kw.arg == "key" and (key := _key_literal(kw.value))}


def _state_reads(tree: ast.AST) -> set[str]:
    """Keys a module reads from the session by string: ``st.session_state[...]``, ``.get/.pop/.setdefault(...)``,
    ``kept_value(...)``, ``restore_widget(...)``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and "session_state" in ast.unparse(node.value):
            key = _key_literal(node.slice)
        elif isinstance(node, ast.Call) and node.args and (
                ast.unparse(node.func).rpartition(".")[2] in ("kept_value", "restore_widget")
                or (ast.unparse(node.func).rpartition(".")[0].endswith("session_state")
                    and ast.unparse(node.func).rpartition(".")[2] in ("get", "pop", "setdefault"))):
            key = _key_literal(node.args[0])
        else:
            continue
        if key:
            found.add(key)
    return found


def _same_key(a: str, b: str) -> bool:
    return a == b or (a.endswith("*") and b.startswith(a[:-1])) or (b.endswith("*") and a.startswith(b[:-1]))


def _cross_page_reads(pages: dict[str, ast.AST]) -> list[str]:
    keys = {name: _widget_keys(tree) for name, tree in pages.items()}
    return [f"{name} reads {key!r}, a widget key of {other}" for name, tree in pages.items()
            for key in sorted(_state_reads(tree)) if not any(_same_key(key, k) for k in keys[name])
            for other in pages if other != name and any(_same_key(key, k) for k in keys[other])]


def test_the_widget_key_scanner_sees_a_cross_page_read():
    one = ast.parse('st.toggle("a", key="shared")\nst.selectbox("t", [], key=f"target:{m}")')
    other = ast.parse('x = st.session_state["shared"]\ny = kept_value(f"target:{k}", None)')
    assert len(_cross_page_reads({"one": one, "other": other})) == 2


def test_no_page_imports_or_reads_another_pages_keys():
    """Pages share state through the app layer (``pages/_*.py``: typed accessors, one ``Key`` class), never by
    importing another page or reading another page's widget key as a string."""
    pages = {p.stem: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PAGES.glob("*.py"))
             if not p.name.startswith("_")}
    assert {"explain", "trust", "batch"} <= pages.keys()
    imports = [f"{p.name} imports {m}" for p in sorted(PAGES.glob("*.py"))
               for m, _ in _imports(p) if m.startswith("pages.") and not m.startswith("pages._")]
    assert not imports, imports
    reads = _cross_page_reads(pages)
    assert not reads, reads


def _module_state(tree: ast.Module) -> list[str]:
    found = []
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if value is None:
            continue
        call = getattr(value.func, "id", None) or getattr(value.func, "attr", None) if isinstance(value, ast.Call) else None
        if isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp) \
                or call in MUTABLE_CALLS:
            found.append(f"{node.lineno}: {ast.unparse(node)[:60]}")
    found += [f"{n.lineno}: global {', '.join(n.names)}" for n in ast.walk(tree) if isinstance(n, ast.Global)]
    return found


def test_the_app_layer_holds_no_mutable_module_state():
    """Streamlit runs every session in a thread of one process: the app layer keeps state in ``st.session_state``
    (per session) or in objects held by ``st.cache_resource`` (e.g. the one ``ExplanationService``), never in a
    module-level dict, list, pool, lock or ``global``."""
    assert _module_state(ast.parse("A = {}\nB = ThreadPoolExecutor(1)\ndef f():\n    global C\n")) == [
        "1: A = {}", "2: B = ThreadPoolExecutor(1)", "4: global C"]
    offenders = [f"{p.name}:{line}" for p in sorted(PAGES.glob("*.py"))
                 for line in _module_state(ast.parse(p.read_text(encoding="utf-8")))
                 if p.name.startswith("_") or "global" in line]
    assert not offenders, offenders


def test_every_page_is_a_main_of_widgets():
    """A page module defines things and calls ``main()`` once at the end: no widget is drawn at import level."""
    offenders = []
    for path in sorted(PAGES.glob("[!_]*.py")):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        calls = [n for n in body if isinstance(n, ast.Expr) and not isinstance(n.value, ast.Constant)]
        flow = [n for n in body if isinstance(n, ast.If | ast.For | ast.While | ast.With | ast.Try)
                and "TYPE_CHECKING" not in ast.unparse(getattr(n, "test", ast.Constant(None)))]
        if [ast.unparse(n) for n in calls] != ["main()"] or body[-1] is not calls[-1] or flow:
            offenders.append(path.name)
    assert not offenders, offenders
