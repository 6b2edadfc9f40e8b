"""Static checks of the 3D Slicer extension files (3D Slicer itself is not needed).

Slicer's API is checked against name lists taken from Slicer's sources (``Testing/slicer_api/``: the public
functions of ``Base/Python/slicer/util.py`` and the vtkMRML classes with a header), the .ui files against the code
that uses them and the parameter nodes they bind to, and the CMake lists against the tree.
"""
from __future__ import annotations

import ast
import importlib.util
import py_compile
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
API = Path(__file__).resolve().parent / "slicer_api"
MODULES = ("SurgicalDepth", "SurgicalDepthTraining")
MODULE_FILES = [REPO / m / f"{m}.py" for m in MODULES]
# Slicer-side test scripts (ctest, outside the modules): the same Slicer API name checks apply
SLICER_TEST_SCRIPTS = [REPO / m / "Testing" / "Python" / f"{m}LogicTest.py" for m in MODULES]
LIB_DIRS = [REPO / m / f"{m}Lib" for m in MODULES]
UTIL_NAMES = set(API.joinpath("slicer_util_names.txt").read_text().split())
MRML_CLASSES = {ln.strip() for ln in API.joinpath("slicer_mrml_classes.txt").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")}
# parameterNodeWrapper GUI connectors (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py): widget -> type
CONNECTORS = {"QComboBox": {"str"}, "QSpinBox": {"int"}, "QDoubleSpinBox": {"float"}, "QCheckBox": {"bool"},
              "QLineEdit": {"str"}, "ctkPathLineEdit": {"Path"}, "qMRMLNodeComboBox": {"node"}}
SLICER_MODULES = ("slicer", "qt", "ctk", "mrml", "vtkSlicer", "qSlicer", "qMRML")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _parameter_fields(tree: ast.Module) -> dict[str, ast.expr]:
    """Annotated fields of the ``@parameterNodeWrapper`` class: name -> annotation."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            return {s.target.id: s.annotation for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class")


def _base_type(annotation: ast.expr) -> str:
    """``Annotated[int, ...]`` -> ``int``; ``vtkMRMLFooNode`` -> ``node``; ``Path`` -> ``Path``."""
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", None) == "Annotated":
        annotation = annotation.slice.elts[0]
    name = annotation.id if isinstance(annotation, ast.Name) else ast.unparse(annotation)
    return "node" if name.startswith("vtkMRML") else name


def _constants(tree: ast.Module) -> dict[str, object]:
    """Module-level ``NAME = <literal>`` assignments, and ``REGISTRY_NAMES`` (imported from the weights registry)
    with the constants built from it alone (``["default", *REGISTRY_NAMES, "file"]``)."""
    from SurgicalDepthLib.weights import REGISTRY_NAMES

    out: dict[str, object] = {"REGISTRY_NAMES": REGISTRY_NAMES} if _imports_registry_names(tree) else {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                if "REGISTRY_NAMES" in out and {n.id for n in ast.walk(node.value)
                                                if isinstance(n, ast.Name)} == {"REGISTRY_NAMES"}:
                    out[node.targets[0].id] = _module_value(tree, node.targets[0].id)
    return out


def _choices(annotation: ast.expr, constants: dict | None = None) -> list | None:
    """The values of a ``Choice(...)`` annotation: a literal list, a module constant, or ``list(CONSTANT)``."""
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", None) == "Annotated":
        for extra in annotation.slice.elts[1:]:
            if isinstance(extra, ast.Call) and getattr(extra.func, "id", None) == "Choice":
                arg = extra.args[0]
                if isinstance(arg, ast.Call) and getattr(arg.func, "id", None) == "list":
                    arg = arg.args[0]
                if isinstance(arg, ast.Name):
                    return list((constants or {})[arg.id])
                return list(ast.literal_eval(arg))
    return None


def _ui_widgets(module: str) -> dict[str, ET.Element]:
    root = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()
    widgets: dict[str, ET.Element] = {}
    for w in root.iter("widget"):
        name = w.get("name")
        assert name not in widgets, f"{module}.ui: duplicate widget name {name!r}"
        widgets[name] = w
    return widgets


def _prop(widget: ET.Element, name: str) -> ET.Element | None:
    for p in widget.findall("property"):
        if p.get("name") == name:
            return p
    return None


@pytest.mark.parametrize("path", MODULE_FILES + SLICER_TEST_SCRIPTS + [d / "slicer_helpers.py" for d in LIB_DIRS],
                         ids=lambda p: p.name if "helpers" not in p.name else p.parent.name + "/slicer_helpers.py")
def test_files_compile(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.name)
def test_module_files_are_small(path):
    n = len(path.read_text().splitlines())
    assert n < 400, f"{path.name} has {n} lines; the style guide keeps Slicer modules under 400"


@pytest.mark.parametrize("path", MODULE_FILES + SLICER_TEST_SCRIPTS, ids=lambda p: p.name)
def test_slicer_util_names_exist(path):
    tree = _tree(path)
    used = set()
    for node in ast.walk(tree):
        dotted = _dotted(node) if isinstance(node, ast.Attribute) else None
        if dotted and dotted.startswith("slicer.util."):
            used.add(dotted.split(".")[2])
        if isinstance(node, ast.ImportFrom) and node.module == "slicer.util":
            used |= {a.name for a in node.names}
    public_classes = {"VTKObservationMixin", "NodeModify", "RenderBlocker", "WaitCursor", "MessageDialog"}
    unknown = sorted(used - UTIL_NAMES - public_classes)
    assert used, "no slicer.util use found (parser broken?)"
    assert not unknown, f"{path.name}: slicer.util has no {unknown}"


# the Lib names the node class of each output kind (instantiated by the module by name): the same check applies
@pytest.mark.parametrize("path", MODULE_FILES + SLICER_TEST_SCRIPTS
                         + [LIB_DIRS[0] / "slicer_run.py", LIB_DIRS[0] / "slicer_source.py"], ids=lambda p: p.name)
def test_mrml_class_names_exist(path):
    tree = _tree(path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names |= set(re.findall(r"\bvtkMRML\w+", node.value))
        elif isinstance(node, ast.Attribute) and node.attr.startswith("vtkMRML"):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and node.id.startswith("vtkMRML"):
            names.add(node.id)
        elif isinstance(node, ast.ImportFrom) and node.module == "slicer":
            names |= {a.name for a in node.names if a.name.startswith("vtkMRML")}
    # colour-node IDs are "<class><table name>" (e.g. vtkMRMLColorTableNodeRainbow): check the class part
    color_ids = {n for n in names if n.startswith("vtkMRMLColorTableNode") and n != "vtkMRMLColorTableNode"}
    assert "vtkMRMLColorTableNode" in MRML_CLASSES
    unknown = sorted(names - color_ids - MRML_CLASSES)
    assert not unknown, f"{path.name}: unknown MRML classes {unknown}"


def test_depth_color_table_is_a_default_slicer_table():
    tree = _tree(REPO / "SurgicalDepth" / "SurgicalDepth.py")
    ids = [n.value.value for n in tree.body if isinstance(n, ast.Assign)
           and getattr(n.targets[0], "id", "") == "DEPTH_COLOR_NODE_ID"]
    # default tables are created by vtkMRMLColorLogic as "vtkMRMLColorTableNode" + type name
    assert ids in (["vtkMRMLColorTableNodeRainbow"], ["vtkMRMLColorTableNodeReverseRainbow"])


@pytest.mark.parametrize("lib", LIB_DIRS, ids=lambda p: p.name)
def test_lib_packages_never_import_slicer(lib):
    offenders = []
    for path in sorted(lib.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in SLICER_MODULES]
    assert not offenders, f"Slicer-free packages import Slicer modules: {offenders}"


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.name)
def test_heavy_imports_are_lazy(path):
    """Module-level imports are Slicer's, the standard library's and the weights registry (standard library only,
    checked by ``test_weights_registry_imports_only_the_standard_library``); everything else waits for the Logic."""
    allowed = {"contextlib", "json", "shutil", "sys", "pathlib", "typing", "dataclasses", "qt", "ctk", "vtk", "slicer",
               "SurgicalDepthLib.weights"}
    top = set()
    for node in _tree(path).body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            top.add(module if module == "SurgicalDepthLib.weights" else module.split(".")[0])
    assert top <= allowed, f"{path.name}: module-level imports {sorted(top - allowed)} must be lazy (in Logic)"


def test_weights_registry_imports_only_the_standard_library():
    """Both modules import ``SurgicalDepthLib.weights`` when Slicer loads them, before the requirements (torch,
    numpy's users) may be installed: importing it must pull in neither torch nor numpy (nor other third-party
    packages), or the modules would fail to load in a fresh Slicer."""
    import subprocess
    import sys

    code = ("import sys, SurgicalDepthLib.weights as w; assert w.REGISTRY_NAMES; "
            "print(sorted(m for m in ('torch', 'numpy', 'vtk', 'cv2', 'safetensors', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO / "SurgicalDepth")
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("module", MODULES)
def test_ui_is_qt_designer_xml(module):
    root = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == module
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == module
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared, "custom widget classes must be declared"
    for conn in root.iter("connection"):
        assert conn.findtext("sender") == module
        assert conn.findtext("receiver") in {w.get("name") for w in root.iter("widget")}


@pytest.mark.parametrize("module", MODULES)
def test_ui_names_match_code(module):
    path = REPO / module / f"{module}.py"
    widgets = _ui_widgets(module)
    used = {n.attr for n in ast.walk(_tree(path))
            if isinstance(n, ast.Attribute) and _dotted(n.value) == "self.ui"}
    assert used, "no self.ui.<name> use found"
    missing = sorted(used - set(widgets))
    assert not missing, f"{module}.py uses widgets missing from {module}.ui: {missing}"


@pytest.mark.parametrize("module", MODULES)
def test_ui_parameter_bindings_match_parameter_node(module):
    tree = _tree(REPO / module / f"{module}.py")
    fields, constants = _parameter_fields(tree), _constants(tree)
    bound = {}
    for name, w in _ui_widgets(module).items():
        p = _prop(w, "SlicerParameterName")
        if p is not None:
            bound[p.findtext("string")] = w
    assert set(bound) == set(fields), (f"{module}: parameter fields without widget {sorted(set(fields) - set(bound))}"
                                       f", widgets bound to no field {sorted(set(bound) - set(fields))}")
    for field, widget in bound.items():
        kind = _base_type(fields[field])
        assert kind in CONNECTORS[widget.get("class")], \
            f"{module}.{field}: a {kind} cannot bind to {widget.get('class')} (parameterNodeWrapper connectors)"
        if widget.get("class") == "QComboBox":
            assert _choices(fields[field], constants), f"{module}.{field}: QComboBox binding needs a Choice annotation"
        if widget.get("class") == "qMRMLNodeComboBox":
            node_types = [s.text for s in _prop(widget, "nodeTypes").iter("string")]
            assert node_types == [ast.unparse(fields[field])], f"{module}.{field}: nodeTypes {node_types}"


@pytest.mark.parametrize("module", MODULES)
def test_spin_box_ranges_cover_parameter_ranges(module):
    """A QSpinBox without explicit limits clamps to 0..99 in Qt: every spin box declares its range, and it equals
    the parameter's WithinRange (when annotated) and contains the parameter's default value."""
    source = (REPO / module / f"{module}.py").read_text()
    for name, w in _ui_widgets(module).items():
        if w.get("class") not in ("QSpinBox", "QDoubleSpinBox"):
            continue
        lo, hi = (_prop(w, k) for k in ("minimum", "maximum"))
        assert lo is not None and hi is not None, f"{module}.ui {name}: no minimum/maximum"
        lo, hi = float(lo[0].text), float(hi[0].text)
        field = _prop(w, "SlicerParameterName").findtext("string")
        m = re.search(rf"^\s+{field}: Annotated\[\w+, WithinRange\(([-\d.e]+), ([-\d.e]+)\)\](?: = ([-\d.e]+))?",
                      source, re.M)
        if m:
            assert (lo, hi) == (float(m.group(1)), float(m.group(2))), f"{module}.ui {name}: range vs WithinRange"
            if m.group(3) is not None:
                assert lo <= float(m.group(3)) <= hi, f"{module}.{field}: default outside the spin box range"


def _imports_registry_names(tree: ast.Module) -> bool:
    """True when the module binds ``REGISTRY_NAMES`` only by importing it from ``SurgicalDepthLib.weights``."""
    imported = any(isinstance(n, ast.ImportFrom) and n.module == "SurgicalDepthLib.weights"
                   and any(a.name == "REGISTRY_NAMES" and a.asname is None for a in n.names) for n in tree.body)
    rebound = any(isinstance(n, (ast.Assign, ast.AnnAssign)) and "REGISTRY_NAMES" in
                  {t.id for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
                  for n in tree.body)
    return imported and not rebound


def _module_value(tree: ast.Module, name: str) -> object:
    """The module-level constant ``name``, evaluated with the registry's ``REGISTRY_NAMES`` in scope."""
    from SurgicalDepthLib.weights import REGISTRY_NAMES

    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == name)
    return eval(compile(ast.Expression(node.value), name, "eval"), {"REGISTRY_NAMES": REGISTRY_NAMES})


def test_registry_choices_equal_weights_registry():
    """Catches the Slicer modules' model lists drifting from the weights registry: they were literals, and the
    four metric Base/Large checkpoints added to ``WEIGHTS`` were missing from both panels. Both now take the
    registry's own ``REGISTRY_NAMES`` (the registry order, the GUI default ``depth-anything-v2-small`` first)."""
    from SurgicalDepthLib.weights import REGISTRY_NAMES, WEIGHTS

    assert list(REGISTRY_NAMES) == list(WEIGHTS) and REGISTRY_NAMES[0] == "depth-anything-v2-small"
    for module in MODULES:
        assert _imports_registry_names(_tree(REPO / module / f"{module}.py")), module
    tree = _tree(REPO / "SurgicalDepth" / "SurgicalDepth.py")
    assert _choices(_parameter_fields(tree)["registryName"], _constants(tree)) == list(WEIGHTS)
    assert _parameter_defaults(tree)["registryName"] == REGISTRY_NAMES[0]
    training = _tree(TRAINING)
    assert _choices(_parameter_fields(training)["baseModel"], _constants(training)) == ["default", *WEIGHTS, "file"]


def test_choices_match_helper_constants():
    from SurgicalDepthLib.slicer_helpers import DEVICE_CHOICES, MODEL_CHOICES
    from SurgicalDepthLib.slicer_model import BACKEND_CHOICES
    from SurgicalDepthLib.slicer_run import FOV_CHOICES, INPUT_MODES

    sd_fields = _parameter_fields(_tree(REPO / "SurgicalDepth" / "SurgicalDepth.py"))
    assert tuple(_choices(sd_fields["backend"])) == BACKEND_CHOICES
    assert tuple(_choices(sd_fields["device"])) == DEVICE_CHOICES
    assert tuple(_choices(sd_fields["modelChoice"])) == MODEL_CHOICES
    assert tuple(_choices(sd_fields["inputMode"])) == INPUT_MODES
    assert tuple(_choices(sd_fields["fovMode"])) == FOV_CHOICES


# -- SurgicalDepthTraining: its parameter node holds literals (Slicer builds it before torch may be installed) ----
TRAINING = REPO / "SurgicalDepthTraining" / "SurgicalDepthTraining.py"


def _parameter_defaults(tree: ast.Module) -> dict[str, object]:
    """Literal default values of the ``@parameterNodeWrapper`` fields: name -> value."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            return {s.target.id: ast.literal_eval(s.value) for s in node.body
                    if isinstance(s, ast.AnnAssign) and s.value is not None}
    raise AssertionError("no @parameterNodeWrapper class")


def _annotation_args(annotation: ast.expr, name: str) -> list | None:
    """The literal arguments of ``name(...)`` in an ``Annotated[...]`` annotation, or None."""
    for extra in getattr(annotation.slice, "elts", [])[1:]:
        if isinstance(extra, ast.Call) and getattr(extra.func, "id", None) == name:
            return [ast.literal_eval(a) for a in extra.args]
    return None


def test_training_choices_equal_the_registries():
    """Catches a dataset, loss, alignment or weights name added to (or removed from) a registry but not to the
    Training panel's choices, which are literals (and its earlier-results choice apart from the helpers')."""
    import SurgicalDepthLib as sd
    from SurgicalDepthTrainingLib.datasets import list_datasets
    from SurgicalDepthTrainingLib.losses import LOSSES
    from SurgicalDepthTrainingLib.metrics import ALIGNMENTS
    from SurgicalDepthTrainingLib.slicer_helpers import EARLIER_RESULTS

    tree = _tree(TRAINING)
    fields, constants = _parameter_fields(tree), _constants(tree)
    assert sorted(_choices(fields["dataset"], constants)) == sorted(list_datasets())  # GUI order: synthetic first
    assert _choices(fields["loss"], constants) == list(LOSSES)
    assert _choices(fields["alignment"], constants) == list(ALIGNMENTS)
    assert _choices(fields["baseModel"], constants) == ["default", *sd.WEIGHTS, "file"]
    assert tuple(_choices(fields["earlierResults"], constants)) == EARLIER_RESULTS


def test_training_defaults_equal_train_config():
    """Catches the panel training with other defaults than ``surgical-depth train`` (it once used 518 px instead
    of TrainConfig's 256 x 386 -> 252 x 392)."""
    from SurgicalDepthTrainingLib.training import TrainConfig

    config, defaults = TrainConfig(), _parameter_defaults(_tree(TRAINING))
    assert (defaults["inputHeight"], defaults["inputWidth"]) == config.effective_input_size
    assert (defaults["learningRate"], defaults["batchSize"], defaults["epochs"], defaults["loss"]) == \
        (config.lr, config.batch_size, config.epochs, config.loss)


def test_training_spin_boxes_step_in_useful_units():
    """Catches an input-size spin box that steps by 1 (sizes must be multiples of 14) and a learning-rate box that
    steps by 0.01 or cannot show 3e-5; the .ui and the parameter annotations (which parameterNodeWrapper applies
    over the .ui) must agree, and every bound spin box declares the range of its WithinRange."""
    tree = _tree(TRAINING)
    fields, defaults = _parameter_fields(tree), _parameter_defaults(tree)
    boxes = {_prop(w, "SlicerParameterName").findtext("string"): w
             for w in _ui_widgets("SurgicalDepthTraining").values()
             if w.get("class") in ("QSpinBox", "QDoubleSpinBox") and _prop(w, "SlicerParameterName") is not None}

    def number(widget, prop):
        p = _prop(widget, prop)
        return None if p is None else float(p[0].text)

    for field, widget in boxes.items():
        lo_hi = _annotation_args(fields[field], "WithinRange")
        assert lo_hi is not None and [number(widget, "minimum"), number(widget, "maximum")] == lo_hi, field
        step = _annotation_args(fields[field], "SingleStep")
        assert step is None or number(widget, "singleStep") == step[0], field
    for field in ("inputHeight", "inputWidth"):
        assert _annotation_args(fields[field], "SingleStep") == [14] and number(boxes[field], "minimum") == 14
        assert defaults[field] % 14 == 0
    decimals = _annotation_args(fields["learningRate"], "Decimals")[0]
    assert number(boxes["learningRate"], "decimals") == decimals
    assert _annotation_args(fields["learningRate"], "SingleStep")[0] <= 1e-5
    assert round(defaults["learningRate"], decimals) == defaults["learningRate"]  # 3e-5 shows as 0.000030


def _method(tree: ast.Module, cls: str, name: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return item
    raise AssertionError(f"no {cls}.{name}")


def test_training_cancel_does_not_block_the_gui():
    """Catches a cancel that waits for the process on the GUI thread (on Windows terminate() is ignored by console
    processes, so Slicer froze for the whole wait), one that does not mark the run as cancelled (then the
    finished handler reported "failed"), and escalations that reach the launcher only (terminate() / kill() of
    PythonSlicer: the interpreter under it went on) instead of the interpreter and the whole tree."""
    cancel = _method(_tree(TRAINING), "SurgicalDepthTrainingLogic", "cancel")
    calls = {_dotted(n.func) or getattr(n.func, "attr", "") for n in ast.walk(cancel) if isinstance(n, ast.Call)}
    assert not any(c.endswith("waitForFinished") for c in calls), calls
    # process_tree.cancel_process (tested with real processes) escalates on Qt's timer, never blocking
    assert "cancel_process" in calls and "qt.QTimer.singleShot" in ast.unparse(cancel)
    assert not {"process.terminate", "process.kill"} & calls
    assert "self._cancelled = True" in ast.unparse(cancel)
    cleanup = ast.unparse(_method(_tree(TRAINING), "SurgicalDepthTrainingWidget", "cleanup"))
    assert "stopAndWait" in cleanup  # at Slicer's exit no timer fires: the escalation must not need one
    wait = ast.unparse(_method(_tree(TRAINING), "SurgicalDepthTrainingLogic", "wait"))
    assert "kill_process_tree" in wait and "process.kill()" not in wait  # kill() reaches the launcher only
    start = ast.unparse(_method(_tree(TRAINING), "SurgicalDepthTrainingLogic", "start"))
    assert "run_outcome(" in start and "self._cancelled" in start


def _load_updater():
    spec = importlib.util.spec_from_file_location("update_cmake_lists", REPO / "Testing" / "update_cmake_lists.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_lib_file(module):
    text = (REPO / module / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"\$\{MODULE_NAME\}Lib/\S+\.py", text))
    expected = set(_load_updater().lib_scripts(module, REPO))
    missing, extra = sorted(expected - listed), sorted(listed - expected)
    assert not missing and not extra, (f"{module}/CMakeLists.txt is stale (missing {missing}, extra {extra}); "
                                       f"run: python Testing/update_cmake_lists.py")


@pytest.mark.parametrize("module", MODULES)
def test_cmake_module_structure(module):
    text = (REPO / module / "CMakeLists.txt").read_text()
    assert f"set(MODULE_NAME {module})" in text
    assert "${MODULE_NAME}.py" in text and "slicerMacroBuildScriptedModule(" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    for resource in re.findall(r"^\s+((?:Resources/|\$\{MODULE_NAME\}Lib/resources/)\S+)$", text, re.M):
        assert (REPO / module / resource.replace("${MODULE_NAME}", module)).is_file(), resource


def test_cmake_installs_the_default_model_from_the_package():
    """Catches: the Slicer extension shipping without the default model (or from a second copy) after the model
    became package data of SurgicalDepthLib."""
    from SurgicalDepthLib.loading import DEFAULT_MODEL_FILE, default_model_path

    text = (REPO / "SurgicalDepth" / "CMakeLists.txt").read_text()
    listed = f"${{MODULE_NAME}}Lib/resources/{DEFAULT_MODEL_FILE}"
    assert re.search(r"set\(MODULE_PYTHON_RESOURCES[^)]*" + re.escape(listed), text)
    assert default_model_path() == (REPO / "SurgicalDepth" / "SurgicalDepthLib" / "resources" / DEFAULT_MODEL_FILE)
    assert not list((REPO / "Resources").rglob("*.safetensors"))  # one copy in the repository


def test_cmake_extension_structure():
    text = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(SurgicalDepth\)", text, re.M)
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'^set\(EXTENSION_{key} "[^"]+"\)', text, re.M), key
    # SlicerPyTorch (extension "PyTorch") installs the torch build for the GPU driver, as SlicerTotalSegmentator does
    assert re.search(r'^set\(EXTENSION_DEPENDS "[^"]*\bPyTorch\b[^"]*"\)', text, re.M)
    for module in MODULES:
        assert f"add_subdirectory({module})" in text
    order = [text.index(s) for s in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                                      "add_subdirectory(SurgicalDepth)", "## NEXT_MODULE",
                                      "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                                      "include(${Slicer_EXTENSION_CPACK})")]
    assert order == sorted(order)


def test_update_cmake_lists_roundtrip(tmp_path):
    updater = _load_updater()
    lib = tmp_path / "Demo" / "DemoLib"
    (lib / "sub").mkdir(parents=True)
    for name in ("__init__.py", "b.py", "sub/__init__.py", "sub/a.py"):
        (lib / name).write_text("")
    (lib / "__pycache__").mkdir()
    (lib / "__pycache__" / "x.py").write_text("")
    entries = updater.lib_scripts("Demo", tmp_path)
    assert entries == ["${MODULE_NAME}Lib/__init__.py", "${MODULE_NAME}Lib/b.py", "${MODULE_NAME}Lib/sub/__init__.py",
                       "${MODULE_NAME}Lib/sub/a.py"]
    text = f"set(X\n  a.py\n{updater.BEGIN}\n  old.py\n{updater.END}\n  )\n"
    out = updater.render(text, entries, Path("x"))
    assert "old.py" not in out and out.count("${MODULE_NAME}Lib/") == 4 and out.endswith(f"{updater.END}\n  )\n")
    with pytest.raises(ValueError, match="markers"):
        updater.render("set(X)\n", entries, Path("x"))


@pytest.mark.parametrize("icon", ["SurgicalDepth/Resources/Icons/SurgicalDepth.png",
                                  "SurgicalDepthTraining/Resources/Icons/SurgicalDepthTraining.png",
                                  "Resources/Icons/SurgicalDepth.png"])
def test_icons_are_128_png(icon):
    data = (REPO / icon).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def test_requirements_parse_and_leave_slicer_packages_alone():
    from packaging.requirements import Requirement

    from SurgicalDepthLib.slicer_helpers import parse_requirements

    reqs = parse_requirements((REPO / "SurgicalDepth" / "Resources" / "SurgicalDepthRequirements.txt").read_text())
    names = {Requirement(r).name.lower() for r in reqs}
    assert "torch" in names
    assert not names & {"numpy", "vtk", "simpleitk"}, "packages bundled with Slicer must not be reinstalled"


# -- SurgicalDepth: one default for the CLI and Slicer; the requirements file the logic reads -----------------------
def test_surgical_depth_defaults_are_the_lib_defaults():
    """Catches the module's own depth range (it was 10-150 mm while the CLI used 5-120) or point budget drifting
    from the Lib's single defaults (the parameter node holds literals: Slicer builds it before torch exists)."""
    from SurgicalDepthLib.alignment import DEFAULT_DEPTH_RANGE_MM
    from SurgicalDepthLib.memory_budget import DEFAULT_POINT_BUDGET

    tree = _tree(REPO / "SurgicalDepth" / "SurgicalDepth.py")
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SurgicalDepthParameterNode")
    defaults = {s.target.id: ast.literal_eval(s.value) for s in cls.body if isinstance(s, ast.AnnAssign) and s.value}
    assert (defaults["nearMm"], defaults["farMm"]) == DEFAULT_DEPTH_RANGE_MM
    assert defaults["pointBudget"] == DEFAULT_POINT_BUDGET
    process = next(f for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "SurgicalDepthLogic"
                   for f in n.body if isinstance(f, ast.FunctionDef) and f.name == "process")
    kw = dict(zip((a.arg for a in process.args.kwonlyargs), process.args.kw_defaults))
    assert ast.literal_eval(kw["pointBudget"]) == DEFAULT_POINT_BUDGET
    assert ast.literal_eval(kw["nearMm"]) is None and ast.literal_eval(kw["farMm"]) is None  # -> the Lib default


def test_surgical_depth_requirements_file_is_the_one_read_and_installed():
    """Catches a renamed requirements file that the logic no longer finds or CMake no longer installs."""
    text = (REPO / "SurgicalDepth" / "SurgicalDepth.py").read_text()
    name = re.search(r'^REQUIREMENTS = .*"Resources" / "([^"]+)"', text, re.M).group(1)
    assert (REPO / "SurgicalDepth" / "Resources" / name).is_file()
    cmake = (REPO / "SurgicalDepth" / "CMakeLists.txt").read_text()
    assert "Resources/" + name.replace("SurgicalDepth", "${MODULE_NAME}", 1) in cmake


def test_slicer_test_scripts_are_registered():
    """Catches a Slicer-side test script that ctest never runs, or a registration pointing at no file."""
    paths = set()
    for module in MODULES:
        cmake = (REPO / module / "CMakeLists.txt").read_text()
        scripts = re.findall(r"slicer_add_python_unittest\(SCRIPT \$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)\)", cmake)
        paths |= {REPO / module / s.replace("${MODULE_NAME}", module) for s in scripts}
    assert paths == set(SLICER_TEST_SCRIPTS) and all(p.is_file() for p in paths)


def test_surgical_depth_live_keeps_mrml_on_the_gui_thread():
    """Catches live depth that touches MRML from the worker thread, is not polled from the GUI thread, or leaves an
    observer or a running worker behind: the worker gets only the image copy and its geometry (from an observer of
    the volume's ImageDataModifiedEvent), a qt.QTimer polls it, and stopLive removes every observer and stops the
    worker. The image event is ``live_worker.new_image_event``'s (tested there), so a streaming volume is followed
    by its FrameModifiedEvent. Also catches a Stop button that freezes the GUI until the image in inference is done
    (seconds for a large model on a CPU): stopLive joins the worker only when asked to (``wait``: the module's
    cleanup, and a new start, which must not run two workers), else the timer goes on until the worker has ended,
    says "stopped" and stops itself."""
    tree = _tree(REPO / "SurgicalDepth" / "SurgicalDepth.py")
    start = ast.unparse(_method(tree, "SurgicalDepthLogic", "startLive"))
    assert "qt.QTimer()" in start and "timer.connect('timeout()', lambda: self._pollLive(live))" in start
    assert "new_image_event(volume, slicer)" in start and "slicer.mrmlScene.StartCloseEvent" in start
    assert "volume.AddObserver(imageChanged" in start
    assert "worker.put(volume_array(volume.GetImageData()).copy(), self._ijk(volume))" in start
    assert start.index("self.stopLive(wait=True)") < start.index("worker.start()")
    stop = ast.unparse(_method(tree, "SurgicalDepthLogic", "stopLive"))
    assert "RemoveObserver(tag)" in stop and "['worker'].stop(timeout=10.0 if wait else 0.0)" in stop
    assert "self._pollLive(self._stopping, final=wait)" in stop
    poll = ast.unparse(_method(tree, "SurgicalDepthLogic", "_pollLive"))
    assert "results()" in poll and "self.stopLive()" in poll  # a worker error surfaces here and stops live depth
    ended = poll[poll.index("if live is not self._live:"):poll.index("try:")]
    assert "not live['worker'].running" in ended and "live['timer'].stop()" in ended and "return" in ended
    assert "self.logic.stopLive(wait=True)" in ast.unparse(_method(tree, "SurgicalDepthWidget", "cleanup"))


def test_surgical_depth_run_browser_goes_through_fill_browser():
    """Catches the run's browser built with bare AddSynchronizedSequenceNode calls again: Slicer then leaves it with
    no selected item, and the proxies show index value "0" (``slicer_sequences.fill_browser`` selects item 0)."""
    process = ast.unparse(_method(_tree(REPO / "SurgicalDepth" / "SurgicalDepth.py"), "SurgicalDepthLogic", "process"))
    assert "fill_browser(nodes.browser," in process and "AddSynchronizedSequenceNode" not in process
    assert process.index("fill_browser(") < process.index("self._showResults(")  # before the proxies are made


def test_surgical_depth_sequences_get_the_index_tolerance():
    """Catches run sequences left at Slicer's 0.001 s index tolerance, under which frame times of a 1000 fps video
    are one item (``slicer_helpers.index_tolerance``), or not given the input sequence's own tolerance."""
    new = ast.unparse(_method(_tree(REPO / "SurgicalDepth" / "SurgicalDepth.py"), "SurgicalDepthLogic",
                              "_newSequences"))
    assert "'SetNumericIndexValueTolerance'" in new and "index_tolerance(src.fps)" in new
    assert "ref.GetNumericIndexValueTolerance()" in new


@pytest.mark.parametrize("module", MODULES)
def test_module_self_test_runs_the_logic_tests(module):
    """Catches a module test class without a test: Slicer's ScriptedLoadableModuleTest.runTest only logs "No test
    is defined", so "Reload and Test" and ctest ``py_<module>`` passed having run nothing."""
    run = ast.unparse(_method(_tree(REPO / module / f"{module}.py"), f"{module}Test", "runTest"))
    assert f"logic_self_test(Path(__file__).parent, '{module}LogicTest', self)" in run
    assert (REPO / module / "Testing" / "Python" / f"{module}LogicTest.py").is_file()
