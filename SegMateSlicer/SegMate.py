"""SegMate: automatic segmentation of organs at risk in CT, as a 3D Slicer module.

The panel (SegMateWidget) only gathers choices and shows progress; all MRML work is in
SegMateLib (importable without Qt). The network runs in SegMate's worker process, started with
Slicer's own Python: Slicer's Python threads get the GIL only while Python runs on the main thread,
and a crash of PyTorch or CUDA must not take the user's scene with it. A timer on the main thread
collects the worker's progress; segments are written on the main thread once a complete result
has arrived. Importing this file imports nothing heavy (Slicer loads it at start-up).
"""
import logging
import os
import traceback
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

import SegMateLib

PROGRESS_POLL_MS = 200
# Set to 1 to make the self-test also segment the bundled sample CT with the bundled model (installs
# SegMate's Python packages first if needed): minutes and several hundred MB, so not on build machines.
FULL_SELF_TEST_VARIABLE = "SEGMATE_SELF_TEST_INFERENCE"


#
# SegMate
#


class SegMate(ScriptedLoadableModule):
    """Module description shown in Slicer's Help & Acknowledgement section."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SegMate")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SegMate contributors"]
        self.parent.helpText = _("""
Automatic segmentation of nine organs at risk in CT (lungs, spinal cord, esophagus, liver, kidneys, aorta,
trachea) with the lightweight 2.5D SegMate network. Results are segments with standard names, colours and
SNOMED-CT terminology, ready for review in the Segment Editor and for DICOM SEG / RTSTRUCT export.
The bundled model is a demonstration model, not a clinical one.
""")
        self.parent.acknowledgementText = _("""
SegMate implements the architecture of "SegMate: Asymmetric Attention-Based Lightweight Architecture for
Efficient Multi-Organ Segmentation" (Bunea, Popovici, Ionescu, 2026). Sample data: OpenKBP (MIT licence) and
the TotalSegmentator test files (Apache-2.0); see the Sample Data module for attributions.
""")
        unsupported = SegMateLib.unsupportedSlicerMessage(slicer.app.majorVersion, slicer.app.minorVersion)
        if unsupported:
            logging.warning(unsupported)
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add the bundled sample CTs to the Sample Data module (category "SegMate")."""
    import SampleData

    try:
        sources = SegMateLib.sampleDataSources()
    except (OSError, ValueError) as exc:
        logging.warning(f"SegMate sample data not registered: {exc}")
        return
    for source in sources:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)


#
# SegMateParameterNode
#


@parameterNodeWrapper
class SegMateParameterNode:
    """The panel's choices, saved with the scene.

    inputVolume, outputSegmentation, largestComponent, fillHoles, presenceGate, zSmoothing, tta, batchSize and
    reuseFeatures are bound to their widgets by the SlicerParameterName property in SegMate.ui; the others by
    the widget code.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str = ""
    organs: list[str]
    device: Annotated[str, Choice(["auto", "gpu", "cpu"])] = "auto"
    naming: Annotated[str, Choice(["slicer", "tg263"])] = "slicer"
    largestComponent: bool = True
    fillHoles: bool = True
    presenceGate: bool = True
    zSmoothing: bool = True
    tta: bool = False
    batchSize: Annotated[int, WithinRange(0, 128)] = 0
    precision: Annotated[str, Choice(["auto", "fp32", "bf16"])] = "auto"
    reuseFeatures: bool = True


#
# SegMateWidget
#


class SegMateWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The SegMate panel: choices in, a run in the worker process with progress and Cancel, segments out."""

    DEVICES = list(SegMateLib.DEVICE_CHOICES)
    NAMINGS = list(SegMateLib.NAMING_CHOICES)
    PRECISIONS = list(SegMateLib.PRECISION_CHOICES)

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self._modelChoices = []
        self._choicesState = "loading"  # loading, loaded, failed, missingPackages
        self._unsupported = None
        self._task = None  # the worker request the timer polls (model list, model import, or self._job)
        self._onTaskDone = None
        self._job = None  # the segmentation run, while it runs
        self._jobInput = None
        self._jobDownloads = False
        self._lastResult = None  # (segmentation node, input volume) of the last run, for Review
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegMate.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.diagnosticsTextEdit.visible = False

        self.logic = SegMateLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(PROGRESS_POLL_MS)
        self._timer.connect("timeout()", self.onTaskTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.namingComboBox.connect("currentIndexChanged(int)", self.onNamingChanged)
        self.ui.precisionComboBox.connect("currentIndexChanged(int)", self.onPrecisionChanged)
        self.ui.organListWidget.connect("itemChanged(QListWidgetItem*)", self.onOrganItemChanged)
        self.ui.selectAllOrgansButton.connect("clicked(bool)", lambda: self.setAllOrgansChecked(True))
        self.ui.selectNoOrgansButton.connect("clicked(bool)", lambda: self.setAllOrgansChecked(False))
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.reviewButton.connect("clicked(bool)", self.onReview)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.openModelFolderButton.connect("clicked(bool)", self.onOpenModelFolder)
        self.ui.clearCacheButton.connect("clicked(bool)", self.onClearCache)
        self.ui.diagnosticsButton.connect("clicked(bool)", self.onDiagnostics)

        # Each step below may fail on a broken installation; none may leave the panel empty or Diagnostics
        # unreachable, so each reports its own failure in the panel.
        self._unsupported = SegMateLib.unsupportedSlicerMessage(slicer.app.majorVersion, slicer.app.minorVersion)
        self._loadOrganList()
        if self._unsupported:
            self._choicesState = "failed"
            self._showStatus(self._unsupported)
        elif SegMateLib.missingRequirements():
            self._showDependenciesNeeded()
        else:
            self._requestModelChoices()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module reload or application exit: stop the timer, end a run, let the worker process go."""
        if self._timer is not None:
            self._timer.stop()
        if self._job is not None:
            self._job.cancel()
        self._task = self._job = self._onTaskDone = None
        if self.logic is not None:
            self.logic.shutdownWorker()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self._job.cancel()  # the scene it would write into is going away
        self._lastResult = None
        self.ui.reviewButton.enabled = False
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node --------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        known = [choice.id for choice in self._modelChoices]
        if self._choicesState == "loaded" and known and self._parameterNode.model not in known:
            self._selectModel(known[0])  # first use, or the saved model was removed: the default model

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode)
        self.updateGuiFromParameterNode()

    def updateGuiFromParameterNode(self, caller=None, event=None) -> None:
        """Show the choices bound by code (model, device, naming, precision, organs) and enable the button."""
        if self._parameterNode is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            node = self._parameterNode
            index = self.ui.modelComboBox.findData(node.model)
            if index >= 0:
                self.ui.modelComboBox.currentIndex = index
            self.ui.deviceComboBox.currentIndex = self.DEVICES.index(node.device)
            self.ui.namingComboBox.currentIndex = self.NAMINGS.index(node.naming)
            self.ui.precisionComboBox.currentIndex = self.PRECISIONS.index(node.precision)
            choice = self._currentModelChoice()
            if choice is not None and self._listedOrgans() != tuple(choice.organs):
                self._fillOrganList(choice.organs)  # the checklist follows the model's own organs
            selected = set(node.organs)
            for row in range(self.ui.organListWidget.count):
                item = self.ui.organListWidget.item(row)
                key = item.data(qt.Qt.UserRole)
                if key:
                    item.setCheckState(qt.Qt.Checked if key in selected else qt.Qt.Unchecked)
            self._showModelInfo()
        finally:
            self._updatingGui = False
        self._updateApplyButton()

    def _updateApplyButton(self) -> None:
        if self._job is not None:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the segmentation now; the scene is left as it was.")
            self.ui.applyButton.enabled = not self._job.cancelRequested
            return
        self.ui.applyButton.text = _("Segment OARs")
        node = self._parameterNode
        if self._unsupported:
            self.ui.applyButton.enabled = False
            self.ui.applyButton.toolTip = self._unsupported
        elif self._task is not None:
            self.ui.applyButton.enabled = False
            self.ui.applyButton.toolTip = _("SegMate is reading the model list; one moment.")
        elif self._choicesState == "missingPackages":
            self.ui.applyButton.enabled = True
            self.ui.applyButton.toolTip = _("Install SegMate's Python packages, then segment.")
        elif self._choicesState != "loaded":
            self.ui.applyButton.enabled = True
            self.ui.applyButton.toolTip = _("Read the model list again (the status line says why it failed).")
        elif node is None or not node.inputVolume:
            self.ui.applyButton.enabled = False
            self.ui.applyButton.toolTip = _("Select an input CT volume.")
        elif not node.organs:
            self.ui.applyButton.enabled = False
            self.ui.applyButton.toolTip = _("Select at least one organ.")
        else:
            self.ui.applyButton.enabled = True
            self.ui.applyButton.toolTip = _("Segment the selected organs; the button turns into Cancel while running.")
        if node is not None and node.inputVolume:
            self.ui.outputSegmentationSelector.baseName = f"{node.inputVolume.GetName()} segmentation"

    # -- choices (organ table and model list) ------------------------------------------------------
    def _loadOrganList(self) -> None:
        """The organ checklist before a model is chosen: every structure of the organ table (organs.json:
        no PyTorch needed). Once the model list has arrived, the checklist follows the chosen model."""
        self._updatingGui = True
        try:
            self.ui.organListWidget.clear()
            organs = self.logic.organTable()
            for organ in organs:
                item = qt.QListWidgetItem(organ.display_name)
                item.setData(qt.Qt.UserRole, organ.key)
                item.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled)
                item.setCheckState(qt.Qt.Unchecked)
                pixmap = qt.QPixmap(14, 14)
                pixmap.fill(qt.QColor(*organ.color))
                item.setIcon(qt.QIcon(pixmap))
                item.setToolTip(f"{organ.display_name} (TG-263: {organ.tg263})")
                self.ui.organListWidget.addItem(item)
        except Exception as exc:  # noqa: BLE001 - shown in the panel; the rest of the panel still works
            logging.exception("SegMate: the organ table could not be read")
            self.ui.organListWidget.clear()
            self.ui.organListWidget.addItem(_("The organ table could not be read: {error}").format(error=exc))
        finally:
            self._updatingGui = False

    def _showDependenciesNeeded(self) -> None:
        missing = SegMateLib.missingRequirements()
        self._choicesState = "missingPackages"
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItem(_("(click Segment OARs to install the Python packages first)"), "")
        self._showStatus(_("SegMate needs these Python packages: {packages}. Click Segment OARs to install "
                           "them.").format(packages=", ".join(r.text for r in missing)))
        self._updateApplyButton()

    def _requestModelChoices(self, selectModel: str = "") -> None:
        """Ask the worker process for the model list (reading model files needs PyTorch, which Slicer's
        own process never imports for SegMate); the combo box fills when it answers."""
        self._choicesState = "loading"
        self._updatingGui = True
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItem(_("(reading the model list...)"), "")
        self._updatingGui = False
        try:
            task = self.logic.requestModelChoices()
        except Exception as exc:  # noqa: BLE001 - the worker could not start: said in the panel
            self._showModelChoicesFailed(exc)
            return
        self._startTask(task, lambda done: self._onModelChoices(done, selectModel))

    def _onModelChoices(self, task, selectModel: str) -> None:
        try:
            choices = self.logic.modelChoicesFromTask(task)
        except Exception as exc:  # noqa: BLE001
            self._showModelChoicesFailed(exc)
            return
        self._updatingGui = True
        try:
            self._modelChoices = choices
            self.ui.modelComboBox.clear()
            for choice in choices:
                self.ui.modelComboBox.addItem(choice.label, choice.id)
            self._choicesState = "loaded"
        finally:
            self._updatingGui = False
        if self._job is None:
            self._showStatus(_("Ready."))
        if selectModel and self._parameterNode is not None:
            self._selectModel(selectModel)
        self.initializeParameterNode()

    def _showModelChoicesFailed(self, error) -> None:
        logging.error(f"SegMate: the model list could not be read: {error}")
        self._choicesState = "failed"
        self._modelChoices = []
        self._updatingGui = True
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItem(_("(model list unavailable)"), "")
        self._updatingGui = False
        self._showStatus(_("The model list could not be read: {error}\nAdvanced > Diagnostics shows what SegMate's "
                           "Python sees; click Segment OARs to try again.").format(error=error))
        self._updateApplyButton()

    def _fillOrganList(self, organKeys) -> None:
        """One checkable row per organ of the chosen model, in its channel order, with its colour."""
        self.ui.organListWidget.clear()
        for organ in self.logic.organTable(organKeys):
            item = qt.QListWidgetItem(organ.display_name)
            item.setData(qt.Qt.UserRole, organ.key)
            item.setFlags(qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsEnabled)
            item.setCheckState(qt.Qt.Unchecked)
            pixmap = qt.QPixmap(14, 14)
            pixmap.fill(qt.QColor(*organ.color))
            item.setIcon(qt.QIcon(pixmap))
            item.setToolTip(f"{organ.display_name} (TG-263: {organ.tg263})")
            self.ui.organListWidget.addItem(item)

    def _listedOrgans(self) -> tuple:
        return tuple(self.ui.organListWidget.item(row).data(qt.Qt.UserRole)
                     for row in range(self.ui.organListWidget.count))

    def _currentModelChoice(self):
        if self._parameterNode is None:
            return None
        return next((c for c in self._modelChoices if c.id == self._parameterNode.model), None)

    def _selectModel(self, modelId: str) -> None:
        """Choose a model and reset the organs to those it was trained on (the others stay off)."""
        choice = next((c for c in self._modelChoices if c.id == modelId), None)
        with slicer.util.NodeModify(self._parameterNode):
            self._parameterNode.model = modelId
            if choice is not None:
                self._parameterNode.organs = list(choice.trainedOrgans)

    def _showModelInfo(self) -> None:
        choice = self._currentModelChoice()
        if choice is None:
            self.ui.modelInfoLabel.text = ""
            return
        untrained = choice.untrainedOrgans()
        self.ui.modelInfoLabel.text = choice.infoText()
        for row in range(self.ui.organListWidget.count):
            item = self.ui.organListWidget.item(row)
            key = item.data(qt.Qt.UserRole)
            if key in untrained:
                item.setForeground(qt.QBrush(qt.QColor("gray")))
            elif key:
                item.setData(qt.Qt.ForegroundRole, None)  # the theme's text colour (light or dark)

    def onModelChanged(self, index: int) -> None:
        if self._updatingGui or self._parameterNode is None or index < 0:
            return
        modelId = self.ui.modelComboBox.itemData(index)
        if modelId and modelId != self._parameterNode.model:
            self._selectModel(modelId)

    def onDeviceChanged(self, index: int) -> None:
        if not self._updatingGui and self._parameterNode is not None and index >= 0:
            self._parameterNode.device = self.DEVICES[index]

    def onNamingChanged(self, index: int) -> None:
        if not self._updatingGui and self._parameterNode is not None and index >= 0:
            self._parameterNode.naming = self.NAMINGS[index]

    def onPrecisionChanged(self, index: int) -> None:
        if not self._updatingGui and self._parameterNode is not None and index >= 0:
            self._parameterNode.precision = self.PRECISIONS[index]

    def onOrganItemChanged(self, item) -> None:
        """Checking an organ the model was not trained on asks first; the checklist is saved."""
        if self._updatingGui or self._parameterNode is None:
            return
        key = item.data(qt.Qt.UserRole)
        choice = self._currentModelChoice()
        if key and item.checkState() == qt.Qt.Checked and choice is not None and key in choice.untrainedOrgans():
            if not slicer.util.confirmYesNoDisplay(
                    _("The model {model} was not trained on the {organ}: its {organ} segment will not be "
                      "meaningful. Segment it anyway?").format(model=choice.title, organ=item.text().lower()),
                    windowTitle=_("SegMate: organ not trained")):
                self._updatingGui = True
                item.setCheckState(qt.Qt.Unchecked)
                self._updatingGui = False
        self._saveOrganSelection()

    def setAllOrgansChecked(self, checked: bool) -> None:
        """"All" selects every organ the model predicts (untrained ones after one confirmation); "None" clears."""
        if self._parameterNode is None or self._choicesState != "loaded":
            return
        choice = self._currentModelChoice()
        keys = list(choice.organs) if choice is not None else [k for k in self._listedOrgans() if k]
        if checked and choice is not None and choice.untrainedOrgans():
            if not slicer.util.confirmYesNoDisplay(
                    _("The model {model} was not trained on: {organs}. Their segments will not be meaningful. "
                      "Select them too?").format(model=choice.title,
                                                 organs=", ".join(k.replace("_", " ") for k in choice.untrainedOrgans())),
                    windowTitle=_("SegMate: organs not trained")):
                keys = list(choice.trainedOrgans)
        self._parameterNode.organs = keys if checked else []

    def _saveOrganSelection(self) -> None:
        keys = []
        for row in range(self.ui.organListWidget.count):
            item = self.ui.organListWidget.item(row)
            if item.data(qt.Qt.UserRole) and item.checkState() == qt.Qt.Checked:
                keys.append(item.data(qt.Qt.UserRole))
        self._parameterNode.organs = keys

    # -- running ---------------------------------------------------------------------------------
    def _postprocessOptions(self):
        node = self._parameterNode
        options = {}
        if not node.largestComponent:
            options["largest_component"] = False
        if not node.fillHoles:
            options["fill_holes"] = False
        if not node.presenceGate:
            options["presence_gate"] = False
        if not node.zSmoothing:
            options["z_smoothing_mm"] = 0.0  # every organ: the thresholded probabilities as the network gave them
        return options or None

    def _startTask(self, task, onDone) -> None:
        """Poll ``task`` (a worker request) from the timer; ``onDone(task)`` runs once it has ended."""
        self._task, self._onTaskDone = task, onDone
        self._timer.start()
        self._updateApplyButton()

    def onTaskTimer(self) -> None:
        """Every PROGRESS_POLL_MS on the main thread: collect the worker's events, finish what has ended."""
        task = self._task
        if task is None:
            self._timer.stop()
            return
        try:
            progress = task.poll()
        except Exception:  # noqa: BLE001 - the timer must keep going whatever a poll meets
            logging.exception("SegMate: reading the worker's events failed")
            progress = task.progress()
        if task is self._job:
            self._showProgress(progress, task.warnings)
        if not task.done:
            return
        self._timer.stop()
        onDone, self._task, self._onTaskDone = self._onTaskDone, None, None
        try:
            onDone(task)
        except Exception as exc:  # noqa: BLE001 - shown; the panel must be usable again afterwards
            logging.exception("SegMate: handling the worker's answer failed")
            self._showStatus(_("SegMate failed: {error}").format(error=exc))
        finally:
            if self._job is task:
                self._job = None
            self._setInputsEnabled(True)
            self._updateApplyButton()

    def _showProgress(self, progress, warnings) -> None:
        self.ui.progressBar.setMaximum(max(progress.total, 1))
        self.ui.progressBar.setValue(progress.done)
        self.ui.progressBar.setFormat(f"{progress.text()} (%p%)")
        text = _("Running for {elapsed}").format(elapsed=SegMateLib.elapsedText(progress.elapsed))
        if warnings:
            text += "\n" + "\n".join(f"Warning: {w}" for w in warnings)
        self._showStatus(text)

    def _installPackages(self) -> None:
        """Install missing Python packages after one confirmation that lists them; offer a restart when a
        package Slicer had already imported was upgraded."""
        missing = SegMateLib.missingRequirements()
        if missing and not slicer.util.confirmOkCancelDisplay(
                _("SegMate needs these Python packages, which are not installed yet:\n\n{packages}\n\nInstall them "
                  "now? This downloads several hundred MB and can take a few minutes. Slicer's own SimpleITK, numpy "
                  "and VTK are not changed.").format(packages=SegMateLib.describe(missing)),
                windowTitle=_("SegMate: install Python packages")):
            return
        alreadyImported = SegMateLib.restartNeededAfterInstalling(missing)
        if missing:
            try:
                with slicer.util.WaitCursor():
                    SegMateLib.installRequirements(missing, log=self._showBusyStatus)
            except Exception as exc:  # noqa: BLE001 - shown with its traceback; the panel stays usable
                self._showError(_("Installing SegMate's Python packages failed."), exc)
                self._showDependenciesNeeded()
                return
        self.logic.shutdownWorker()  # a worker started before the install would run the old packages
        if alreadyImported and slicer.util.confirmYesNoDisplay(
                _("These packages were upgraded while Slicer had them loaded: {packages}. Slicer keeps using the "
                  "old versions until it restarts (SegMate's runs use the new ones). Restart Slicer now?").format(
                    packages=", ".join(r.name for r in alreadyImported)),
                windowTitle=_("SegMate: restart Slicer")):
            slicer.util.restart()
            return
        self._requestModelChoices()

    def onApplyButton(self) -> None:
        if self._job is not None:
            self._job.cancel()  # ends the worker's process tree now; the timer's next tick shows the outcome
            self._showStatus(_("Cancelled; nothing was changed."))
            self._updateApplyButton()
            return
        if self._task is not None:
            return
        if self._choicesState == "missingPackages":
            self._installPackages()
            return
        if self._choicesState != "loaded":
            self._requestModelChoices()
            return
        node = self._parameterNode
        if node is None or not node.inputVolume or not node.organs:
            self._updateApplyButton()
            return
        choice = self._currentModelChoice()
        download = bool(choice is not None and choice.downloadable)
        if download and not slicer.util.confirmOkCancelDisplay(
                _("The model {model} is not installed. Download it now (checksum verified)? The download runs "
                  "with the segmentation, with its progress shown.").format(model=choice.title),
                windowTitle=_("SegMate: download model")):
            return
        try:
            job = self.logic.startSegmentation(
                node.inputVolume, node.outputSegmentation, organs=list(node.organs), model=node.model or None,
                device=node.device, batchSize=node.batchSize or None, postprocess=self._postprocessOptions(),
                naming=node.naming, tta=node.tta, precision=node.precision,
                featureCacheMb=None if node.reuseFeatures else 0, download=download)
        except Exception as exc:  # noqa: BLE001 - nothing started: say why, the button stays "Segment OARs"
            self._showError(_("SegMate could not start."), exc)
            self._updateApplyButton()
            return
        self._job, self._jobInput, self._jobDownloads = job, node.inputVolume, download
        self.ui.progressBar.setValue(0)
        self.ui.reviewButton.enabled = False
        self._setInputsEnabled(False)
        self._startTask(job, self._onSegmentationDone)

    def _setInputsEnabled(self, enabled: bool) -> None:
        for widget in (self.ui.inputsCollapsibleButton, self.ui.organsCollapsibleButton,
                       self.ui.outputsCollapsibleButton, self.ui.advancedCollapsibleButton):
            widget.enabled = enabled

    def _onSegmentationDone(self, job) -> None:
        """The run ended: write its segments (main thread, complete result only) or say why it did not."""
        from segmatecore.inference.result import SegmentationCancelled

        self._job = None
        inputVolume, self._jobInput = self._jobInput, None
        elapsed = SegMateLib.elapsedText(job.elapsed())
        try:
            run = job.finish()
        except SegmentationCancelled:
            self._showStatus(_("Cancelled after {elapsed}; nothing was changed.").format(elapsed=elapsed))
            self.ui.progressBar.setFormat(_("Cancelled"))
        except Exception as exc:  # noqa: BLE001 - shown to the user, with the details in the log
            logging.error(f"SegMate segmentation failed: {exc}\n{getattr(exc, 'details', '')}")
            self._showStatus(_("Failed after {elapsed}; nothing was changed: {error}").format(elapsed=elapsed,
                                                                                             error=exc))
            self.ui.progressBar.setFormat(_("Failed"))
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=exc),
                                     detailedText=getattr(exc, "details", "") or f"{type(exc).__name__}: {exc}")
        else:
            text = _("Done in {elapsed}: {summary}").format(elapsed=elapsed, summary=run.summary())
            if run.result.warnings:
                text += "\n" + "\n".join(f"Warning: {w}" for w in run.result.warnings)
            self._showStatus(text)
            self.ui.progressBar.setFormat(_("Done"))
            if self._parameterNode is not None:
                self._parameterNode.outputSegmentation = run.segmentationNode
            self._showResult(run.segmentationNode, inputVolume)
        if self._jobDownloads:
            self._jobDownloads = False
            self._requestModelChoices(selectModel=self._parameterNode.model if self._parameterNode else "")

    def _showResult(self, segmentationNode, volumeNode) -> None:
        """Show the new segments over the CT in the slice views, in this module; Review opens the editor."""
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetVisibility(True)
        if volumeNode is not None and volumeNode.GetScene() is not None:
            slicer.util.setSliceViewerLayers(background=volumeNode)
        self._lastResult = (segmentationNode, volumeNode)
        self.ui.reviewButton.enabled = True

    def onReview(self) -> None:
        """Review the last result: the Segment Editor opens on it, with the CT as source volume."""
        if self._lastResult is None:
            return
        segmentationNode, volumeNode = self._lastResult
        if segmentationNode.GetScene() is None:
            self._showStatus(_("The segmentation of the last run was removed from the scene."))
            self.ui.reviewButton.enabled = False
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentationNode)
        if volumeNode is not None and volumeNode.GetScene() is not None:
            editor.setSourceVolumeNode(volumeNode)

    def _showStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def _showBusyStatus(self, text: str) -> None:
        """Status during a blocking step (installing packages): repaint now."""
        self._showStatus(text)
        slicer.app.processEvents(qt.QEventLoop.ExcludeUserInputEvents)

    def _showError(self, message: str, error: BaseException) -> None:
        """An error dialog with the traceback in its details, and the message in the status line."""
        logging.error(f"{message} {error}")
        self._showStatus(f"{message} {error}")
        slicer.util.errorDisplay(f"{message}\n\n{error}", detailedText=traceback.format_exc())

    # -- advanced --------------------------------------------------------------------------------
    def onImportModel(self) -> None:
        if self._task is not None:
            self._showStatus(_("Wait for the current SegMate task to end, then import the model."))
            return
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import a SegMate model"), "",
                                              _("SegMate model (*.safetensors)"))
        if not path:
            return
        try:
            task = self.logic.requestModelImport(path)
        except Exception as exc:  # noqa: BLE001
            self._showError(_("The model file could not be imported."), exc)
            return
        self._showStatus(_("Checking and importing {file}...").format(file=os.path.basename(path)))
        self._startTask(task, self._onModelImported)

    def _onModelImported(self, task) -> None:
        if task.error is not None:
            self._showStatus(_("The model file could not be imported: {error}").format(error=task.error))
            slicer.util.errorDisplay(_("The model file could not be imported.\n\n{error}").format(error=task.error),
                                     detailedText=getattr(task.error, "details", ""))
            return
        self._showStatus(_("Imported {file}.").format(file=os.path.basename(task.result["path"])))
        self._requestModelChoices(selectModel=task.result["id"])

    def onOpenModelFolder(self) -> None:
        try:
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(self.logic.modelFolder())))
        except Exception as exc:  # noqa: BLE001
            self._showError(_("The model folder could not be opened."), exc)

    def onClearCache(self) -> None:
        if self._task is not None:
            self._showStatus(_("Wait for the current SegMate task to end, then clear the cache."))
            return
        try:
            folder = self.logic.modelFolder()
        except Exception as exc:  # noqa: BLE001
            self._showError(_("The model cache could not be found."), exc)
            return
        if not slicer.util.confirmOkCancelDisplay(
                _("Delete every downloaded and imported model from {folder}? Bundled models stay.").format(
                    folder=folder), windowTitle=_("SegMate: clear model cache")):
            return
        self.logic.shutdownWorker()  # it may hold a model file open
        try:
            removed = self.logic.clearModelCache()
        except Exception as exc:  # noqa: BLE001
            self._showError(_("The model cache could not be cleared."), exc)
            return
        self._showStatus(_("Removed {count} model file(s).").format(count=len(removed)))
        self._requestModelChoices()

    def onDiagnostics(self) -> None:
        """Versions, devices and memory, shown and copied; PyTorch is asked in a separate process."""
        with slicer.util.WaitCursor():
            text = SegMateLib.diagnosticsText()
        self.ui.diagnosticsTextEdit.plainText = text
        self.ui.diagnosticsTextEdit.visible = True
        qt.QApplication.clipboard().setText(text)
        self._showStatus(_("Diagnostics copied to the clipboard."))


#
# SegMateLogic
#


class SegMateLogic(ScriptedLoadableModuleLogic, SegMateLib.SegMateLogic):
    """SegMateLib.SegMateLogic with the module's parameter node; use it from scripts:

        import SegMate
        run = SegMate.SegMateLogic().process(volumeNode, None, organs=["liver", "aorta"], device="cpu")
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        SegMateLib.SegMateLogic.__init__(self)

    def getParameterNode(self):
        return SegMateParameterNode(super().getParameterNode())


#
# SegMateTest
#


class SegMateTest(ScriptedLoadableModuleTest):
    """Self-test. Always: results written from a synthetic labelmap (names, terminology, voxels, a user's
    segment kept), with no package installs and no inference. With SEGMATE_SELF_TEST_INFERENCE=1 also: the
    bundled sample CT through the bundled model in the worker process, checked segment by segment."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegMateWritesResults()
        if os.environ.get(FULL_SELF_TEST_VARIABLE) == "1":
            self.setUp()
            self.test_SegMateSampleCT()
        else:
            logging.info(f"SegMate self-test: inference skipped; set {FULL_SELF_TEST_VARIABLE}=1 to run it.")

    def test_SegMateWritesResults(self):
        self.delayDisplay("Writing a synthetic SegMate result next to a user's segment")
        SegMateLib.self_test.checkResultWriting(slicer.mrmlScene)
        self.delayDisplay("Test passed")

    def test_SegMateSampleCT(self):
        import numpy as np
        import SampleData
        import SimpleITK as sitk

        self.delayDisplay("Installing SegMate's Python packages if needed")
        missing = SegMateLib.missingRequirements()
        if missing:
            SegMateLib.installRequirements(missing)

        self.delayDisplay("Loading the bundled sample CT")
        registerSampleData()
        source = SegMateLib.sampleDataSources()[0]
        inputVolume = SampleData.SampleDataLogic().downloadSample(source["sampleName"])
        self.assertIsNotNone(inputVolume)

        self.delayDisplay("Segmenting with the bundled model on the CPU, in the worker process")
        logic = SegMateLogic()
        try:
            job = logic.startSegmentation(inputVolume, None, device="cpu")
            self.assertTrue(job.wait(timeout=1800))
            run = job.finish()
        finally:
            logic.shutdownWorker()

        segmentation = run.segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), len(run.result.organs))
        labels = sitk.GetArrayFromImage(run.result.labelmap)
        for organ in logic.organTable(run.result.organs):
            segmentId = run.segmentIds[organ.key]
            segment = segmentation.GetSegment(segmentId)
            self.assertEqual(segment.GetName(), organ.display_name)
            self.assertEqual(SegMateLib.terminology.organKeyForTerminology(segment.GetTerminology()), organ.key)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(run.segmentationNode, segmentId, inputVolume)
            np.testing.assert_array_equal(mask > 0, labels == run.result.labels[organ.key])
        self.delayDisplay("Test passed")
