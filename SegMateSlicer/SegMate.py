"""SegMate: automatic segmentation of organs at risk in CT, as a 3D Slicer module.

The panel (SegMateWidget) only gathers choices and shows progress; all MRML work is in
SegMateLib (importable without Qt), and the network runs in SegMateCore, shipped with the
extension. Inference runs on a worker thread; segments are written on the main thread.
"""
import logging
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
    """The SegMate panel: choices in, a background run with progress and Cancel, segments out."""

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
        self._choicesLoaded = False
        self._job = None
        self._jobInput = None
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
        self._timer.connect("timeout()", self.onProgressTimer)

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
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.openModelFolderButton.connect("clicked(bool)", self.onOpenModelFolder)
        self.ui.clearCacheButton.connect("clicked(bool)", self.onClearCache)
        self.ui.diagnosticsButton.connect("clicked(bool)", self.onDiagnostics)

        if SegMateLib.missingRequirements():
            self._showDependenciesNeeded()
        else:
            self._loadChoices()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
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
            self._job.cancel()
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
        if self._choicesLoaded and known and self._parameterNode.model not in known:
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
            self.ui.applyButton.toolTip = _("Stop the segmentation; the scene is left as it was.")
            self.ui.applyButton.enabled = not self._job.cancelRequested
            return
        self.ui.applyButton.text = _("Segment OARs")
        node = self._parameterNode
        if not self._choicesLoaded:
            self.ui.applyButton.enabled = True
            self.ui.applyButton.toolTip = _("Install SegMate's Python packages, then segment.")
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

    # -- choices (model catalogue and organ table) -------------------------------------------------
    def _showDependenciesNeeded(self) -> None:
        missing = SegMateLib.missingRequirements()
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItem(_("(click Segment OARs to install the Python packages first)"), "")
        self.ui.organListWidget.clear()
        self.ui.organListWidget.addItem(_("The organ list appears once the Python packages are installed."))
        self.ui.statusLabel.text = _("SegMate needs these Python packages: {packages}. Click Segment OARs to "
                                     "install them.").format(packages=", ".join(r.text for r in missing))

    def _loadChoices(self) -> None:
        """Fill the model combo box from the catalogue and the organ list from the organ table."""
        self._updatingGui = True
        try:
            self.ui.modelComboBox.clear()
            try:
                self._modelChoices = self.logic.modelChoices()
            except Exception as exc:  # noqa: BLE001 - a broken catalogue must not break the panel
                self._modelChoices = []
                self.ui.modelComboBox.addItem(_("(model catalogue unreadable: {error})").format(error=exc), "")
            for choice in self._modelChoices:
                self.ui.modelComboBox.addItem(choice.label, choice.id)
            self._choicesLoaded = True
        finally:
            self._updatingGui = False
        self.ui.statusLabel.text = _("Ready.")
        self.updateGuiFromParameterNode()

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
        if self._parameterNode is None or not self._choicesLoaded:
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
    def _ensureDependencies(self) -> bool:
        """Install missing Python packages after one confirmation that lists them."""
        missing = SegMateLib.missingRequirements()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("SegMate needs these Python packages, which are not installed yet:\n\n{packages}\n\nInstall them "
                  "now? This downloads several hundred MB and can take a few minutes. Slicer's own SimpleITK, numpy "
                  "and VTK are not changed.").format(packages=SegMateLib.describe(missing)),
                windowTitle=_("SegMate: install Python packages")):
            return False
        installed = False
        with slicer.util.tryWithErrorDisplay(_("Installing SegMate's Python packages failed."), waitCursor=True):
            SegMateLib.installRequirements(missing, log=self._showBusyStatus)
            installed = True
        if installed:
            self._loadChoices()
            self.initializeParameterNode()
        return installed

    def _ensureModelInstalled(self) -> bool:
        choice = self._currentModelChoice()
        if choice is None or not choice.downloadable:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("The model {model} is not installed. Download it now (checksum verified)?").format(model=choice.title),
                windowTitle=_("SegMate: download model")):
            return False
        downloaded = False
        with slicer.util.tryWithErrorDisplay(_("Downloading the model failed."), waitCursor=True):
            self._showBusyStatus(_("Downloading {model}...").format(model=choice.title))
            self.logic.downloadModel(choice.id)
            downloaded = True
        modelId = choice.id
        self._loadChoices()
        self._parameterNode.model = modelId
        return downloaded

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

    def onApplyButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._showStatus(_("Cancelling at the next batch of slices..."))
            self._updateApplyButton()
            return
        if not self._ensureDependencies() or not self._ensureModelInstalled():
            return
        node = self._parameterNode
        if not node.inputVolume or not node.organs:
            self._updateApplyButton()
            return
        with slicer.util.tryWithErrorDisplay(_("SegMate could not start."), waitCursor=True):
            self._jobInput = node.inputVolume
            self._job = self.logic.createJob(
                node.inputVolume, node.outputSegmentation, organs=list(node.organs), model=node.model or None,
                device=node.device, batchSize=node.batchSize or None, postprocess=self._postprocessOptions(),
                naming=node.naming, tta=node.tta, precision=node.precision,
                featureCacheMb=None if node.reuseFeatures else 0)
            self._job.start()
        if self._job is None or not self._job.started:
            self._job = None
            return
        self.ui.progressBar.setValue(0)
        self._setInputsEnabled(False)
        self._updateApplyButton()
        self._timer.start()

    def _setInputsEnabled(self, enabled: bool) -> None:
        for widget in (self.ui.inputsCollapsibleButton, self.ui.organsCollapsibleButton,
                       self.ui.outputsCollapsibleButton, self.ui.advancedCollapsibleButton):
            widget.enabled = enabled

    def onProgressTimer(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        progress = job.progress()
        self.ui.progressBar.setMaximum(max(progress.total, 1))
        self.ui.progressBar.setValue(progress.done)
        self.ui.progressBar.setFormat(f"{progress.text()} (%p%)")
        self._showStatus(_("Running for {elapsed}").format(elapsed=SegMateLib.elapsedText(progress.elapsed)))
        if job.done:
            self._timer.stop()
            self._job = None
            self._finishJob(job)

    def _finishJob(self, job) -> None:
        from segmatecore.result import SegmentationCancelled

        elapsed = SegMateLib.elapsedText(job.elapsed())
        try:
            run = job.finish()
        except SegmentationCancelled:
            self._showStatus(_("Cancelled after {elapsed}; nothing was changed.").format(elapsed=elapsed))
            self.ui.progressBar.setFormat(_("Cancelled"))
        except Exception as exc:  # noqa: BLE001 - shown to the user, with the traceback in the log
            logging.exception("SegMate segmentation failed")
            self._showStatus(_("Failed after {elapsed}; nothing was changed: {error}").format(elapsed=elapsed,
                                                                                             error=exc))
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=exc),
                                     detailedText=f"{type(exc).__name__}: {exc}")
        else:
            warnings = run.result.warnings
            text = _("Done in {elapsed}: {summary}").format(elapsed=elapsed, summary=run.summary())
            if warnings:
                text += "\n" + "\n".join(f"Warning: {w}" for w in warnings)
            self._showStatus(text)
            self.ui.progressBar.setFormat(_("Done"))
            if self._parameterNode is not None:
                self._parameterNode.outputSegmentation = run.segmentationNode
            self._openInSegmentEditor(run.segmentationNode, self._jobInput)
        finally:
            self._jobInput = None
            self._setInputsEnabled(True)
            self._updateApplyButton()

    def _openInSegmentEditor(self, segmentationNode, volumeNode) -> None:
        """Review the result: the Segment Editor opens on the new segments over the input CT."""
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentationNode)
        editor.setSourceVolumeNode(volumeNode)

    def _showStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def _showBusyStatus(self, text: str) -> None:
        """Status during a blocking step (installing, downloading): repaint now."""
        self._showStatus(text)
        slicer.app.processEvents(qt.QEventLoop.ExcludeUserInputEvents)

    # -- advanced --------------------------------------------------------------------------------
    def onImportModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import a SegMate model"), "",
                                              _("SegMate model (*.safetensors)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("The model file could not be imported."), waitCursor=True):
            installed = self.logic.importModelFile(path)
            self._loadChoices()
            self._selectModel(installed.stem)
            self._showStatus(_("Imported {file}.").format(file=installed.name))

    def onOpenModelFolder(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The model folder could not be opened.")):
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(self.logic.modelFolder())))

    def onClearCache(self) -> None:
        if not slicer.util.confirmOkCancelDisplay(
                _("Delete every downloaded and imported model from {folder}? Bundled models stay.").format(
                    folder=self.logic.modelFolder()), windowTitle=_("SegMate: clear model cache")):
            return
        with slicer.util.tryWithErrorDisplay(_("The model cache could not be cleared.")):
            removed = self.logic.clearModelCache()
            self._loadChoices()
            self.initializeParameterNode()
            self._showStatus(_("Removed {count} model file(s).").format(count=len(removed)))

    def onDiagnostics(self) -> None:
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
    """Self-test: the bundled sample CT through the bundled model on the CPU, checked segment by segment."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegMateSampleCT()

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

        self.delayDisplay("Segmenting with the bundled model on the CPU")
        logic = SegMateLogic()
        run = logic.process(inputVolume, None, device="cpu")

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
