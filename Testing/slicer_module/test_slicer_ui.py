"""The Slicer panel without Slicer: the .ui file, the widget code that uses it, and the packaging files.

SegMate.py needs the Slicer application (qt, ctk, ScriptedLoadableModule) and cannot run here, so
its contract with the .ui file is checked from the source: every ``self.ui.<name>`` it uses must be
a widget of SegMate.ui, and every ``SlicerParameterName`` must be a field of the parameter node.
The .ui is also loaded for real with Qt (PySide6) and the Slicer-only widgets replaced by stand-ins.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "SegMateSlicer"
UI_FILE = MODULE / "Resources" / "UI" / "SegMate.ui"
WIDGET_FILE = MODULE / "SegMate.py"

# The controls the panel offers, by name and class.
REQUIRED_CONTROLS = {
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "modelComboBox": "QComboBox",
    "organListWidget": "QListWidget",
    "selectAllOrgansButton": "QPushButton",
    "selectNoOrgansButton": "QPushButton",
    "deviceComboBox": "QComboBox",
    "outputSegmentationSelector": "qMRMLNodeComboBox",
    "applyButton": "QPushButton",
    "reviewButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "advancedCollapsibleButton": "ctkCollapsibleButton",
    "largestComponentCheckBox": "QCheckBox",
    "fillHolesCheckBox": "QCheckBox",
    "presenceGateCheckBox": "QCheckBox",
    "zSmoothingCheckBox": "QCheckBox",
    "ttaCheckBox": "QCheckBox",
    "batchSizeSpinBox": "QSpinBox",
    "precisionComboBox": "QComboBox",
    "reuseFeaturesCheckBox": "QCheckBox",
    "namingComboBox": "QComboBox",
    "importModelButton": "QPushButton",
    "openModelFolderButton": "QPushButton",
    "clearCacheButton": "QPushButton",
    "diagnosticsButton": "QPushButton",
}


def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def widget_property(widget: ET.Element, name: str) -> ET.Element | None:
    return next((p for p in widget.findall("property") if p.get("name") == name), None)


def parameter_fields() -> dict[str, str]:
    """Field name -> annotation source of the @parameterNodeWrapper class in SegMate.py."""
    tree = ast.parse(WIDGET_FILE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegMateParameterNode")
    assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in cls.decorator_list)
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_ui_parses_and_every_widget_the_code_uses_exists():
    widgets = ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", WIDGET_FILE.read_text(encoding="utf-8")))
    assert used, "SegMate.py should use its .ui widgets"
    missing = sorted(used - set(widgets))
    assert not missing, f"SegMate.py uses widgets that SegMate.ui lacks: {missing}"
    assert len(widgets) == len([w for w in ET.parse(UI_FILE).getroot().iter("widget")]), "widget names must be unique"


def test_ui_has_every_control_the_panel_offers():
    widgets = ui_widgets()
    for name, cls in REQUIRED_CONTROLS.items():
        assert name in widgets and widgets[name].get("class") == cls, name
    def node_types(name):
        return [s.text for s in widget_property(widgets[name], "nodeTypes").iter("string")]
    assert node_types("inputVolumeSelector") == ["vtkMRMLScalarVolumeNode"]
    assert node_types("outputSegmentationSelector") == ["vtkMRMLSegmentationNode"]
    assert widget_property(widgets["outputSegmentationSelector"], "noneDisplay").find("string").text == \
        "Create new segmentation"
    assert widget_property(widgets["applyButton"], "text").find("string").text == "Segment OARs"
    assert widget_property(widgets["advancedCollapsibleButton"], "collapsed").find("bool").text == "true"
    # the combo boxes list their choices in the order the widget code maps them
    import SegMateLib

    def items(name):
        return [i.find("property/string").text for i in widgets[name].findall("item")]
    assert items("deviceComboBox") == list(SegMateLib.DEVICE_CHOICES.values())
    assert [text.split(" (")[0] for text in items("namingComboBox")] == list(SegMateLib.NAMING_CHOICES.values())
    assert [text.split(" (")[0] for text in items("precisionComboBox")] == list(SegMateLib.PRECISION_CHOICES.values())


def test_parameter_bindings_match_the_parameter_node():
    fields = parameter_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        prop = widget_property(widget, "SlicerParameterName")
        if prop is not None:
            bound[prop.find("string").text] = widget.get("class")
    assert set(bound) <= set(fields), f"bound to unknown parameters: {set(bound) - set(fields)}"
    assert bound == {"inputVolume": "qMRMLNodeComboBox", "outputSegmentation": "qMRMLNodeComboBox",
                     "largestComponent": "QCheckBox", "fillHoles": "QCheckBox", "presenceGate": "QCheckBox",
                     "zSmoothing": "QCheckBox", "tta": "QCheckBox", "batchSize": "QSpinBox",
                     "reuseFeatures": "QCheckBox"}
    assert fields["organs"] == "list[str]" and fields["model"] == "str"
    import SegMateLib

    # the node's choices are written out in SegMate.py and must be exactly the logic's, in its order
    assert f"Choice({list(SegMateLib.DEVICE_CHOICES)})" in fields["device"]
    assert f"Choice({list(SegMateLib.NAMING_CHOICES)})" in fields["naming"]
    assert f"Choice({list(SegMateLib.PRECISION_CHOICES)})" in fields["precision"]


def test_custom_widgets_are_declared_and_connected_to_the_scene():
    root = ET.parse(UI_FILE).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget") if not w.get("class").startswith("Q")}
    assert used <= declared
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert receivers == {name for name, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}


def test_module_file_follows_the_scripted_module_template():
    tree = ast.parse(WIDGET_FILE.read_text(encoding="utf-8"))
    bases = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert bases["SegMate"] == ["ScriptedLoadableModule"]
    assert bases["SegMateWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases["SegMateLogic"] == ["ScriptedLoadableModuleLogic", "SegMateLib.SegMateLogic"]
    assert bases["SegMateTest"] == ["ScriptedLoadableModuleTest"]
    module_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegMate")
    connects = [[ast.unparse(a) for a in n.args] for n in ast.walk(module_class)
                if isinstance(n, ast.Call) and ast.unparse(n.func) == "slicer.app.connect"]
    assert connects == [["'startupCompleted()'", "registerSampleData"]]  # after Sample Data has loaded


def test_sample_data_registration_adds_every_bundled_ct_to_sample_data(monkeypatch):
    """registerSampleData, run as Slicer runs it once start-up completes, with a stand-in SampleData module."""
    import logging
    import types

    import SegMateLib

    tree = ast.parse(WIDGET_FILE.read_text(encoding="utf-8"))
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "registerSampleData")
    namespace = {"SegMateLib": SegMateLib, "logging": logging}
    exec(compile(ast.Module([function], []), str(WIDGET_FILE), "exec"), namespace)
    registered: list[dict] = []
    sample_data = types.ModuleType("SampleData")
    sample_data.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: registered.append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    namespace["registerSampleData"]()
    samples = json.loads((REPO / "Resources" / "SampleData" / "samples.json").read_text(encoding="utf-8"))
    assert [kw["sampleName"] for kw in registered] == [sample["name"] for sample in samples]
    for kw, sample in zip(registered, samples):
        assert kw["category"] == "SegMate" and kw["fileNames"] == sample["file"]
        assert Path(urllib.request.url2pathname(urllib.parse.urlparse(kw["uris"]).path)).is_file()
        assert kw["checksums"] == f"SHA256:{sample['sha256']}"


# What Slicer runs of SegMate at start-up (SegMate.py's module level, registerSampleData) and when the panel
# opens (setup before the worker answers): none of it may import PyTorch, SimpleITK or numpy for SegMate.
STARTUP_AND_PANEL_OPEN = """
import sys
import slicer, vtk  # loaded by Slicer itself before any module
before = set(sys.modules)
import SegMateLib
SegMateLib.DEVICE_CHOICES, SegMateLib.NAMING_CHOICES, SegMateLib.PRECISION_CHOICES
SegMateLib.unsupportedSlicerMessage(5, 10)
sources = SegMateLib.sampleDataSources()
logic = SegMateLib.SegMateLogic()
organs = logic.organTable()
SegMateLib.missingRequirements()
SegMateLib.elapsedText(3.0)
import SegMateLib.worker_client
loaded = sorted(set(sys.modules) - before)
print("heavy:", sorted(name for name in loaded if name.split(".")[0] in ("torch", "SimpleITK", "numpy", "timm")
                       or name == "segmatecore.inference.predictor"))
print("segmatelib:", " ".join(name for name in loaded if name.startswith("SegMateLib.")))
print("counts:", len(sources), len(organs))
"""


def test_startup_and_opening_the_panel_import_nothing_heavy(support_env):
    for path in (MODULE / "SegMateLib").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & {"qt", "ctk", "PythonQt"}, path.name
        attributes = {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not any(a.startswith("slicer.app") for a in attributes), path.name
        assert not any(a.startswith("slicer.modules") for a in attributes) or path.name == "terminology.py", path.name
        assert not any("ScriptedLoadableModule" in x for x in attributes | names | imported), path.name
    done = subprocess.run([sys.executable, "-c", STARTUP_AND_PANEL_OPEN], capture_output=True, text=True, timeout=120,
                          env=support_env)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert lines["heavy"] == "[]", lines["heavy"]
    counts = [int(n) for n in lines["counts"].split()]
    assert counts[0] >= 1 and counts[1] >= 1
    # the SegMateLib modules loaded so far import nothing heavy at their top level either (numpy arrives
    # with slicer-core here, so it is checked in their source)
    for name in lines["segmatelib"].split():
        tree = ast.parse((MODULE / "SegMateLib" / f"{name.split('.')[1]}.py").read_text(encoding="utf-8"))
        top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {(n.module or "").split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
        assert not top & {"numpy", "SimpleITK", "torch", "segmatecore"}, name
    top = {a.name.split(".")[0] for n in ast.parse(WIDGET_FILE.read_text(encoding="utf-8")).body if isinstance(n, ast.Import)
           for a in n.names}
    assert not top & {"numpy", "SimpleITK", "torch", "segmatecore"}


def widget_method(name: str) -> ast.FunctionDef:
    tree = ast.parse(WIDGET_FILE.read_text(encoding="utf-8"))
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegMateWidget")
    return next(n for n in widget.body if isinstance(n, ast.FunctionDef) and n.name == name)


def calls_in(node: ast.AST) -> set[str]:
    return {ast.unparse(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}


def test_panel_reports_errors_itself_instead_of_through_try_with_error_display():
    """slicer.util.tryWithErrorDisplay re-raises: code after it never runs on a failure, and the exception
    escapes the click handler. The panel catches, shows, and carries on."""
    assert "tryWithErrorDisplay" not in WIDGET_FILE.read_text(encoding="utf-8")
    apply = widget_method("onApplyButton")
    starts = [n for n in ast.walk(apply) if isinstance(n, ast.Try)
              and "self.logic.startSegmentation" in calls_in(n)]
    assert starts and all(handler.type is not None for try_node in starts for handler in try_node.handlers)
    timer = widget_method("onTaskTimer")
    assert any(isinstance(n, ast.Try) and n.finalbody and "self._updateApplyButton" in calls_in(ast.Module(n.finalbody, []))
               for n in ast.walk(timer)), "the button must be reset whatever finishing a run raises"


def test_cleanup_stops_the_timer_and_lets_the_worker_go():
    cleanup = calls_in(widget_method("cleanup"))
    assert {"self._timer.stop", "self._job.cancel", "self.logic.shutdownWorker", "self.removeObservers"} <= cleanup


def test_a_finished_run_stays_in_the_module_and_offers_the_editor():
    for name in ("_onSegmentationDone", "_showResult", "onTaskTimer"):
        assert "slicer.util.selectModule" not in calls_in(widget_method(name)), name
    assert "slicer.util.selectModule" in calls_in(widget_method("onReview"))
    assert "self.ui.reviewButton.connect" in calls_in(widget_method("setup"))


def test_panel_opening_survives_a_broken_organ_table_and_downloads_in_the_worker():
    organ_list = widget_method("_loadOrganList")
    guarded = [n for n in ast.walk(organ_list) if isinstance(n, ast.Try) and "self.logic.organTable" in calls_in(n)]
    assert guarded, "reading the organ table must not be able to leave the panel empty"
    source = WIDGET_FILE.read_text(encoding="utf-8")
    assert "downloadModel" not in source and "download=download" in source  # the worker downloads, with progress


def test_python_code_parses_as_python_3_10():
    """Slicer 5.10 runs Python 3.12; SegMateCore supports 3.10 and later: no newer syntax anywhere."""
    files = list((REPO / "SegMateSlicer").rglob("*.py")) + list((REPO / "SegMateCore" / "segmatecore").rglob("*.py"))
    assert len(files) > 40
    for path in files:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


def test_ui_loads_in_qt_with_stand_ins():
    import PySide6  # noqa: F401  (pinned in requirements-dev.txt)

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from render_panel_preview import loadPanel  # SegMateSlicer/Utilities is on pytest.ini's pythonpath

    app, panel = loadPanel()
    used = set(re.findall(r"self\.ui\.(\w+)", WIDGET_FILE.read_text(encoding="utf-8")))
    found = {name for name in used if panel.findChild(object, name) is not None}
    assert found == used
    organ_list = panel.findChild(object, "organListWidget")
    from segmatecore.hub.catalogue import catalogue_entry, default_model_id
    from segmatecore.data.organs import organ

    organs = catalogue_entry(default_model_id())["organs"]  # the panel lists the chosen model's organs
    assert [organ_list.item(i).text() for i in range(organ_list.count())] == [organ(k).display_name for k in organs]
    panel.close()


def test_icon_and_module_build_files():
    from PIL import Image

    with Image.open(MODULE / "Resources" / "Icons" / "SegMate.png") as icon:
        assert icon.size == (128, 128)
    module_cmake = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "WITH_GENERIC_TESTS" in module_cmake and "slicerMacroBuildScriptedModule" in module_cmake
    listed = set(re.findall(r"SegMateLib/\w+\.py", module_cmake))
    assert listed == {f"SegMateLib/{p.name}" for p in (MODULE / "SegMateLib").glob("*.py")}
    for shipped in ("SegMateCore/segmatecore", "organs.json", "models.json", "Models/*", "SampleData/*",
                    "Scripts/segmate_batch.py"):
        assert shipped in module_cmake, shipped
    # Slicer loads every Python file beside SegMate.py as a module: only the module itself is there
    assert sorted(p.name for p in MODULE.glob("*.py")) == ["SegMate.py"]
    assert (MODULE / "Scripts" / "segmate_batch.py").is_file()
