"""The Slicer panel without Slicer: the .ui file, the widget code that uses it, and the packaging files.

SegMate.py needs the Slicer application (qt, ctk, ScriptedLoadableModule) and cannot run here, so
its contract with the .ui file is checked from the source: every ``self.ui.<name>`` it uses must be
a widget of SegMate.ui, and every ``SlicerParameterName`` must be a field of the parameter node.
The .ui is also loaded for real with Qt (PySide6) and the Slicer-only widgets replaced by stand-ins.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "SegMateSlicer"
UI_FILE = MODULE / "Resources" / "UI" / "SegMate.ui"
WIDGET_FILE = MODULE / "SegMate.py"
sys.path.insert(0, str(MODULE))

# The controls the issue asks for, by name and class.
REQUIRED_CONTROLS = {
    "inputVolumeSelector": "qMRMLNodeComboBox",
    "modelComboBox": "QComboBox",
    "organListWidget": "QListWidget",
    "selectAllOrgansButton": "QPushButton",
    "selectNoOrgansButton": "QPushButton",
    "deviceComboBox": "QComboBox",
    "outputSegmentationSelector": "qMRMLNodeComboBox",
    "applyButton": "QPushButton",
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
    tree = ast.parse(WIDGET_FILE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegMateParameterNode")
    assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in cls.decorator_list)
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_ui_parses_and_every_widget_the_code_uses_exists():
    widgets = ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", WIDGET_FILE.read_text()))
    assert used, "SegMate.py should use its .ui widgets"
    missing = sorted(used - set(widgets))
    assert not missing, f"SegMate.py uses widgets that SegMate.ui lacks: {missing}"
    assert len(widgets) == len([w for w in ET.parse(UI_FILE).getroot().iter("widget")]), "widget names must be unique"


def test_ui_has_every_control_of_the_issue():
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
    tree = ast.parse(WIDGET_FILE.read_text())
    bases = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert bases["SegMate"] == ["ScriptedLoadableModule"]
    assert bases["SegMateWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases["SegMateLogic"] == ["ScriptedLoadableModuleLogic", "SegMateLib.SegMateLogic"]
    assert bases["SegMateTest"] == ["ScriptedLoadableModuleTest"]
    source = WIDGET_FILE.read_text()
    assert 'slicer.app.connect("startupCompleted()", registerSampleData)' in source
    assert "registerCustomSampleDataSource(**source)" in source


def test_logic_imports_neither_qt_nor_pytorch_at_load_time():
    for path in (MODULE / "SegMateLib").glob("*.py"):
        text = path.read_text()
        tree = ast.parse(text)
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & {"qt", "ctk", "PythonQt"}, path.name
        attributes = {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not any(a.startswith(("slicer.modules", "slicer.app")) for a in attributes), path.name
        assert not any("ScriptedLoadableModule" in x for x in attributes | names | imported), path.name
    # importing the logic must work before PyTorch is installed (Slicer loads the module at startup)
    code = ("import sys; sys.path.insert(0, %r); import SegMateLib; "
            "assert 'torch' not in sys.modules and 'segmatecore' not in sys.modules; "
            "print(len(SegMateLib.sampleDataSources()))" % str(MODULE))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 1


def test_ui_loads_in_qt_with_stand_ins():
    import PySide6  # noqa: F401  (pinned in requirements.txt)

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(MODULE / "Utilities"))
    from render_panel_preview import loadPanel

    app, panel = loadPanel()
    used = set(re.findall(r"self\.ui\.(\w+)", WIDGET_FILE.read_text()))
    found = {name for name in used if panel.findChild(object, name) is not None}
    assert found == used
    organ_list = panel.findChild(object, "organListWidget")
    from segmatecore.catalogue import catalogue_entry, default_model_id
    from segmatecore.organs import organ

    organs = catalogue_entry(default_model_id())["organs"]  # the panel lists the chosen model's organs
    assert [organ_list.item(i).text() for i in range(organ_list.count())] == [organ(k).display_name for k in organs]
    panel.close()


def test_icon_and_packaging_files():
    from PIL import Image

    with Image.open(MODULE / "Resources" / "Icons" / "SegMate.png") as icon:
        assert icon.size == (128, 128)
    module_cmake = (MODULE / "CMakeLists.txt").read_text()
    assert "WITH_GENERIC_TESTS" in module_cmake and "slicerMacroBuildScriptedModule" in module_cmake
    listed = set(re.findall(r"SegMateLib/\w+\.py", module_cmake))
    assert listed == {f"SegMateLib/{p.name}" for p in (MODULE / "SegMateLib").glob("*.py")}
    for shipped in ("SegMateCore/segmatecore", "organs.json", "models.json", "Models/*", "SampleData/*", "batch.py"):
        assert shipped in module_cmake, shipped
    top = (REPO / "CMakeLists.txt").read_text()
    for key, value in (("EXTENSION_CATEGORY", '"Segmentation"'), ("EXTENSION_DEPENDS", '"PyTorch"')):
        assert re.search(rf"set\({key} {re.escape(value)}\)", top), key
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key} "[^"]+"\)', top), key
    assert "add_subdirectory(SegMateSlicer)" in top
    entry = dict(line.split(" ", 1) for line in (REPO / "SegMate.s4ext").read_text().splitlines()
                 if line and not line.startswith("#"))
    assert entry["depends"] == "PyTorch" and entry["category"] == "Segmentation" and entry["scm"] == "git"
