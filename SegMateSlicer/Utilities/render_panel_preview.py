"""Render SegMate.ui offscreen with Qt (PySide6) into a preview picture of the panel.

The full Slicer application is not needed: Slicer's own widgets (qMRMLWidget, qMRMLNodeComboBox,
ctkCollapsibleButton) are replaced by their closest plain Qt stand-ins, and the lists are filled
the way SegMateWidget fills them (models from the catalogue, the default model's organs with their
colours from the organ table). The picture is labelled as a preview; it is not a Slicer screenshot.

    QT_QPA_PLATFORM=offscreen .venv/bin/python SegMateSlicer/Utilities/render_panel_preview.py docs/images/panel_preview.png
"""
from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SegMate.ui"
PREVIEW_CAPTION = "Preview: SegMate.ui rendered with Qt, Slicer widgets replaced by stand-ins (not a Slicer screenshot)"

# Slicer/CTK class -> plain Qt class; their Slicer-only properties are dropped.
STAND_INS = {"qMRMLWidget": "QWidget", "ctkCollapsibleButton": "QGroupBox", "qMRMLNodeComboBox": "QComboBox"}
SLICER_ONLY_PROPERTIES = {"nodeTypes", "showChildNodeTypes", "addEnabled", "removeEnabled", "noneEnabled",
                          "noneDisplay", "renameEnabled", "editEnabled", "collapsed", "SlicerParameterName"}
NODE_SELECTOR_TEXT = {"inputVolumeSelector": "OpenKBP_validation_pt_201_CT",
                      "outputSegmentationSelector": "Create new segmentation"}


def standInUi(uiFile: Path = UI_FILE) -> bytes:
    """The .ui XML with Slicer's widget classes swapped for Qt stand-ins (collapsible buttons become group boxes)."""
    tree = ET.parse(uiFile)
    root = tree.getroot()
    for widget in root.iter("widget"):
        original = widget.get("class")
        if original not in STAND_INS:
            continue
        widget.set("class", STAND_INS[original])
        for prop in list(widget.findall("property")):
            name = prop.get("name")
            if name in SLICER_ONLY_PROPERTIES:
                widget.remove(prop)
            elif original == "ctkCollapsibleButton" and name == "text":
                prop.set("name", "title")
    for section in ("customwidgets", "connections"):
        for element in root.findall(section):
            root.remove(element)
    return ET.tostring(root, encoding="utf-8")


def _ensureFont(QFontDatabase) -> None:
    """Offscreen Qt may find no system font; matplotlib's DejaVu Sans is always at hand."""
    if QFontDatabase.families():
        return
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    QFontDatabase.addApplicationFont(str(font))


def loadPanel():
    """(QApplication, panel widget): SegMate.ui loaded with QUiLoader and filled like SegMateWidget."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtGui import QColor, QFontDatabase, QIcon, QPixmap
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QListWidgetItem

    app = QApplication.instance() or QApplication([])
    _ensureFont(QFontDatabase)
    buffer = QBuffer()
    buffer.setData(QByteArray(standInUi()))
    buffer.open(QIODevice.ReadOnly)
    panel = QUiLoader().load(buffer)
    if panel is None:
        raise RuntimeError(f"Qt could not load {UI_FILE}")

    sys.path.insert(0, str(MODULE_DIR))
    from SegMateLib.logic import SegMateLogic

    logic = SegMateLogic()
    for name, text in NODE_SELECTOR_TEXT.items():
        panel.findChild(object, name).addItem(text)
    modelCombo = panel.findChild(object, "modelComboBox")
    trained, organKeys = None, None
    try:
        choices = logic.modelChoices()
    except Exception as exc:  # noqa: BLE001 - the picture shows what the panel would show
        choices = []
        modelCombo.addItem(f"(model catalogue unreadable: {exc})")
    for choice in choices:
        modelCombo.addItem(choice.label, choice.id)
    if choices:
        trained, organKeys = set(choices[0].trainedOrgans), choices[0].organs
        panel.findChild(object, "modelInfoLabel").setText(choices[0].infoText())
    organList = panel.findChild(object, "organListWidget")
    for organ in logic.organTable(organKeys):  # the default model's organs, as the panel lists them
        item = QListWidgetItem(organ.display_name)
        item.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled)
        item.setCheckState(Qt.Checked if trained is None or organ.key in trained else Qt.Unchecked)
        if trained is not None and organ.key not in trained:
            item.setForeground(QColor("gray"))
        pixmap = QPixmap(14, 14)
        pixmap.fill(QColor(*organ.color))
        item.setIcon(QIcon(pixmap))
        organList.addItem(item)
    panel.findChild(object, "applyButton").setEnabled(True)
    panel.findChild(object, "diagnosticsTextEdit").setVisible(False)
    return app, panel


def renderPreview(output: Path, width: int = 440) -> Path:
    """Save the panel, with a caption saying it is a preview, as a PNG."""
    from PySide6.QtGui import QColor, QFont, QPainter, QPixmap
    from PySide6.QtCore import Qt

    app, panel = loadPanel()
    panel.resize(max(width, panel.minimumSizeHint().width()), panel.minimumSizeHint().height() + 20)
    body = panel.grab()
    caption = 44
    picture = QPixmap(body.width(), body.height() + caption)
    picture.fill(QColor("white"))
    painter = QPainter(picture)
    painter.drawPixmap(0, caption, body)
    font = QFont()
    font.setPointSize(8)
    font.setItalic(True)
    painter.setFont(font)
    painter.setPen(QColor(120, 40, 40))
    painter.drawText(picture.rect().adjusted(8, 4, -8, -(picture.height() - caption)),
                     Qt.AlignLeft | Qt.AlignVCenter | Qt.TextWordWrap, PREVIEW_CAPTION)
    painter.end()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if not picture.save(str(output), "PNG"):
        raise OSError(f"Could not write {output}")
    app.processEvents()
    return output


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else MODULE_DIR.parent / "docs" / "images" / "panel_preview.png"
    print(renderPreview(target))
