"""The panel's run path: SegMate's worker process with the real bundled model, on a slicer-core scene.

A real child process (``SegMateLib/worker.py``, started by ``WorkerClient`` with this Python) runs
the bundled demo model on eight slices of the bundled OpenKBP sample CT; the test drives the job
the way the panel's timer does (``job.poll()`` on the main thread) and checks what a user relies
on: progress while the network runs, a second click that skips the model load, Cancel that ends
the process tree at once, a killed or failing worker that leaves Slicer and the scene as they
were, no temporary file left behind, and segments identical to an in-process ``segment()``.

The child gets one PyTorch thread (OMP_NUM_THREADS=1): the busy-main-thread test spins one core
in this process, which Slicer's idle event loop does not, so the comparison is about the GIL
rather than about CPU cores.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
import slicer  # noqa: F401  (slicer-core: the scene fixture)
import torch

import segmatecore
from segmatecore.inference.result import SegmentationCancelled

from SegMateLib import protocol, worker
from SegMateLib.logic import SegMateLogic
from SegMateLib.self_test import segmentVoxels
from SegMateLib.volume_image import imageFromVolumeNode, volumeNodeFromImage
from SegMateLib.worker_client import WorkerClient, WorkerCrashed, WorkerError, describeExit, killProcessTree

REPO = Path(__file__).resolve().parents[2]

SAMPLE = REPO / "Resources" / "SampleData" / "openkbp_validation_pt_201_ct.nii.gz"
ORGANS = ["spinal_cord", "esophagus"]
SLICES = slice(58, 66)  # eight slices through the neck: cord and esophagus present
POLL_S = 0.2  # the panel's timer interval (PROGRESS_POLL_MS)
BUSY_SLOWDOWN_LIMIT = 1.5  # a run with the main thread busy may take at most this much longer (plus slack)


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ct() -> sitk.Image:
    return sitk.ReadImage(str(SAMPLE))[:, :, SLICES]


def oblique(image: sitk.Image) -> sitk.Image:
    """The same voxels on an oblique grid: rotated 20 degrees about z and 10 about x."""
    a, b = np.radians(20), np.radians(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    turned = sitk.Image(image)
    turned.SetDirection((rz @ rx @ np.array(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    return turned


@pytest.fixture(scope="module")
def worker_tmp(tmp_path_factory) -> Path:
    """TMPDIR of the workers and of this process's run folders: must be empty after every run."""
    return tmp_path_factory.mktemp("worker-tmp")


def worker_environment(worker_tmp: Path, **extra) -> dict[str, str]:
    return {"TMPDIR": str(worker_tmp), "OMP_NUM_THREADS": "1", "SEGMATE_HOME": str(worker_tmp.parent / "home"),
            **extra}


@pytest.fixture(scope="module")
def client(worker_tmp):
    """One worker shared by the tests below, as one panel shares it between clicks."""
    shared = WorkerClient(environment=worker_environment(worker_tmp))
    yield shared
    shared.shutdown()


def leftovers(folder: Path) -> list[str]:
    """What runs left in TMPDIR. PyTorch's own cache folder (torchinductor_<user>, made once when PyTorch
    loads, empty here) belongs to PyTorch, not to a run."""
    return sorted(p.name for p in folder.iterdir()
                  if not (p.name.startswith("torchinductor_") and p.is_dir() and not any(p.iterdir())))


@pytest.fixture
def run_folders(worker_tmp, monkeypatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(worker_tmp))
    yield worker_tmp
    assert leftovers(worker_tmp) == [], "a run left temporary files behind"


def drive(job, main_thread_work=None, timeout: float = 600.0) -> float:
    """Run a job to its end the way the panel does: a poll every POLL_S on the main thread, which in
    between either sleeps (Slicer idle, GIL free here) or runs ``main_thread_work(seconds)``."""
    start = time.monotonic()
    while not job.done:
        assert time.monotonic() - start < timeout, "the run did not end"
        if main_thread_work is None:
            time.sleep(POLL_S)
        else:
            main_thread_work(POLL_S)
        job.poll()
    return time.monotonic() - start


def busy_in_python(seconds: float) -> None:
    """Hold the GIL the way Slicer's main thread does: pure Python, no blocking call that releases it."""
    end = time.perf_counter() + seconds
    total = 0
    while time.perf_counter() < end:
        for i in range(1000):
            total += i * i


def first_event(job, predicate, timeout: float = 600.0):
    """Poll until an event matching ``predicate`` arrived; return it (the job is still running)."""
    start = time.monotonic()
    while True:
        job.poll()
        found = next((e for e in job.task.events if predicate(e)), None)
        if found is not None:
            return found
        assert not job.done, f"the run ended before the awaited event: {job.error}"
        assert time.monotonic() - start < timeout
        time.sleep(0.05)


def network_progress(event) -> bool:
    return event.get("event") == "progress" and event.get("stage") == "network" and 0 < event["done"] < event["total"]


def start_in_mid_network(scene, client, ct, scene_snapshot):
    """Start a run of the CT into a new output node as the panel does and wait until the network is running;
    returns the job and the scene as it was when the run started."""
    volume = volumeNodeFromImage(ct, "CT", scene)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Contours")
    before = scene_snapshot(scene)
    job = SegMateLogic().startSegmentation(volume, output, organs=ORGANS, device="cpu", client=client)
    first_event(job, network_progress)
    return job, before


# ----------------------------------------------------------------------------------------------- one warm worker


def test_progress_arrives_while_the_network_runs_and_the_second_run_skips_the_model_load(scene, client,
                                                                                         run_folders, capsys):
    # the whole sample CT, so that the network runs over many of the panel's polls
    ct = sitk.ReadImage(str(SAMPLE))
    volume = volumeNodeFromImage(ct, "CT", scene)
    logic = SegMateLogic()
    durations, loads = [], []
    for run_index in range(2):
        nodes = scene.GetNumberOfNodes()
        start = time.monotonic()
        job = logic.startSegmentation(volume, None, organs=ORGANS, device="cpu", client=client)
        seen_while_running = []
        while not job.done:
            time.sleep(POLL_S)
            job.poll()
            if not job.done:
                seen_while_running += [e for e in job.task.events if network_progress(e) and e not in seen_while_running]
        durations.append(time.monotonic() - start)
        assert job.error is None, job.error
        # the network's progress reached the panel in polls before the worker's answer did
        assert seen_while_running, "no network progress arrived while the run was in progress"
        result_event = next(e for e in job.task.events if e["event"] == "result")
        assert max(e["receivedAt"] for e in seen_while_running) < result_event["receivedAt"]
        stages = [e["stage"] for e in job.task.events if e["event"] == "progress"]
        assert stages.index("z_pass") < stages.index("network") < stages.index("postprocess")
        assert ("loading" in stages) == (run_index == 0)
        loads.append(job.modelLoad)
        assert scene.GetNumberOfNodes() == nodes  # nothing is written before finish()
        run = job.finish()
        assert list(run.segmentIds) == ORGANS and run.result.volumes_ml["spinal_cord"] > 0
    assert client.startedProcesses == 1, "both runs were served by one worker process"
    assert not loads[0]["cached"] and loads[0]["seconds"] > 0
    assert loads[1] == {"cached": True, "seconds": 0.0}
    with capsys.disabled():
        print(f"\nworker benchmark ({ct.GetSize()[2]} slices, {len(ORGANS)} organs, CPU, 1 thread): first run "
              f"{durations[0]:.1f} s (model load {loads[0]['seconds']:.1f} s of it), second run "
              f"{durations[1]:.1f} s (model kept loaded)")


def test_worker_labelmap_equals_in_process_segment_on_an_oblique_volume(scene, client, ct, run_folders):
    image = oblique(ct)
    volume = volumeNodeFromImage(image, "Oblique CT", scene)
    job = SegMateLogic().startSegmentation(volume, None, organs=ORGANS, device="cpu", client=client)
    drive(job)
    run = job.finish()

    volume_image = imageFromVolumeNode(volume)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker runs
    try:
        expected = segmatecore.segment(volume_image, model=None, organs=ORGANS, device="cpu")
    finally:
        torch.set_num_threads(threads)
    labelmap = run.result.labelmap
    assert labelmap.GetDirection() != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):  # the volume's geometry, bit for bit
        assert getattr(labelmap, getter)() == getattr(volume_image, getter)() == getattr(expected.labelmap, getter)()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(labelmap), sitk.GetArrayViewFromImage(expected.labelmap))
    assert sitk.GetArrayViewFromImage(labelmap).any()
    assert run.result.volumes_ml == expected.volumes_ml
    assert run.result.segment_tags() == expected.segment_tags()  # same model id, version, thresholds
    expected_labels = sitk.GetArrayViewFromImage(expected.labelmap)
    for key in ORGANS:  # and the segments in the scene hold exactly those voxels
        np.testing.assert_array_equal(segmentVoxels(run.segmentationNode, run.segmentIds[key], volume) > 0,
                                      expected_labels == expected.labels[key], err_msg=key)


def test_run_keeps_its_speed_while_the_main_thread_is_busy_in_python(scene, client, ct, run_folders, capsys):
    volume = volumeNodeFromImage(ct, "CT", scene)
    logic = SegMateLogic()
    timings = {}
    for label, work in (("idle main thread", None), ("busy main thread", busy_in_python)):
        job = logic.startSegmentation(volume, None, organs=ORGANS, device="cpu", client=client)
        timings[label] = drive(job, work)
        assert job.error is None, job.error
        job.finish()
    with capsys.disabled():
        print(f"\nworker run with an idle main thread {timings['idle main thread']:.1f} s, with the main thread "
              f"busy in Python {timings['busy main thread']:.1f} s")
    assert timings["busy main thread"] <= BUSY_SLOWDOWN_LIMIT * timings["idle main thread"] + 2.0


def test_volume_removed_during_a_run_writes_nothing(scene, client, ct, run_folders, scene_snapshot):
    volume = volumeNodeFromImage(ct, "CT", scene)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Contours")
    job = SegMateLogic().startSegmentation(volume, output, organs=ORGANS, device="cpu", client=client)
    scene.RemoveNode(volume)  # the user deletes the CT while the worker computes on its copy
    before = scene_snapshot(scene)
    drive(job)
    with pytest.raises(RuntimeError, match="was removed from the scene while it was being segmented"):
        job.finish()
    assert scene_snapshot(scene) == before


def test_output_removed_during_a_run_gets_a_new_node(scene, client, ct, run_folders):
    volume = volumeNodeFromImage(ct, "CT", scene)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Contours")
    job = SegMateLogic().startSegmentation(volume, output, organs=ORGANS, device="cpu", client=client)
    scene.RemoveNode(output)
    drive(job)
    run = job.finish()
    assert run.segmentationNode is not output and run.segmentationNode.GetScene() is scene
    assert list(run.segmentIds) == ORGANS


def test_an_error_in_the_worker_is_reported_and_the_worker_serves_the_next_request(scene, client, ct, run_folders,
                                                                                   scene_snapshot):
    volume = volumeNodeFromImage(ct, "CT", scene)
    job = SegMateLogic().startSegmentation(volume, None, organs=["spinal_cord", "no_such_organ"], device="cpu",
                                           client=client)
    pid = job.workerPid
    before = scene_snapshot(scene)
    drive(job)
    with pytest.raises(WorkerError, match="Unknown organ.*no_such_organ") as raised:
        job.finish()
    assert raised.value.errorType == "ValueError" and "Traceback" in raised.value.details
    assert scene_snapshot(scene) == before
    task = client.submit("models")
    assert task.wait(120) and task.error is None
    assert client.pid == pid
    listed = {entry["id"]: entry for entry in task.result["models"]}
    default = next(entry for entry in listed.values() if entry["default"])
    assert default["id"] == "segmate_hn_fastvit_t12" and default["installed"]
    assert default["organs"][0] == "spinal_cord" and len(default["organs"]) == 7


def test_cancel_in_mid_network_ends_the_process_tree_at_once(scene, client, ct, run_folders, scene_snapshot):
    job, before = start_in_mid_network(scene, client, ct, scene_snapshot)
    tree = [psutil.Process(job.workerPid)] + psutil.Process(job.workerPid).children(recursive=True)
    start = time.monotonic()
    job.cancel()
    job.poll()  # the panel's next timer tick
    ready_after = time.monotonic() - start
    assert job.done and ready_after < 2.0, f"the panel was ready again after {ready_after:.2f} s"
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
    assert not client.running and not client.busy
    with pytest.raises(SegmentationCancelled):
        job.finish()
    assert scene_snapshot(scene) == before
    started = client.startedProcesses
    task = client.submit("models")  # the next click starts a new worker
    assert task.wait(120) and task.error is None
    assert client.startedProcesses == started + 1 and client.running


def test_worker_killed_in_mid_run_gives_a_clear_error_and_an_unchanged_scene(scene, client, ct, run_folders,
                                                                             scene_snapshot):
    job, before = start_in_mid_network(scene, client, ct, scene_snapshot)
    os.kill(job.workerPid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    drive(job, timeout=30)
    with pytest.raises(WorkerCrashed, match=r"killed \(SIGKILL\).*out of memory.*smaller batch size"):
        job.finish()
    assert scene_snapshot(scene) == before
    assert not client.running


# ----------------------------------------------------------------------------------------------- failing workers


def fake_package(folder: Path, name: str, body: str) -> Path:
    """A package ``name`` whose import runs ``body``: put first on the worker's PYTHONPATH, it stands in
    for a broken installation of that package."""
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(textwrap.dedent(body))
    return folder


def test_worker_that_exits_with_an_error_gives_a_clear_error_and_an_unchanged_scene(scene, ct, run_folders, tmp_path,
                                                                                    scene_snapshot):
    broken = fake_package(tmp_path / "broken", "torch", """
        import os, sys
        sys.stderr.write("Intel MKL FATAL ERROR: Cannot load libmkl_avx2.so.2 or libmkl_def.so.2.\\n")
        sys.stderr.flush()
        os._exit(2)
        """)
    failing = WorkerClient(environment=worker_environment(run_folders, PYTHONPATH=str(broken)))
    volume = volumeNodeFromImage(ct, "CT", scene)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Contours")
    before = scene_snapshot(scene)
    job = SegMateLogic().startSegmentation(volume, output, organs=ORGANS, device="cpu", client=failing)
    drive(job, timeout=60)
    with pytest.raises(WorkerCrashed, match=r"exited with code 2.*Intel MKL FATAL ERROR: Cannot load libmkl_avx2"):
        job.finish()
    assert scene_snapshot(scene) == before
    assert not failing.running


def test_a_crash_is_explained_with_what_to_try():
    segfault = describeExit(-signal.SIGSEGV, ["Fatal Python error: Segmentation fault", ""])
    assert "segmentation fault" in segfault and "CPU device" in segfault
    assert "Its last message: Fatal Python error: Segmentation fault" in segfault
    assert "nothing was changed" in describeExit(-signal.SIGKILL, [])
    assert "exited with code 1" in describeExit(1, ["RuntimeError: CUDA error: out of memory"])


STAND_IN_WORKER = """
import json, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(json.dumps({"event": "ready", "pid": 0, "protocol": 1}), flush=True)
request = json.loads(sys.stdin.readline())
print("a line some library printed on standard output", flush=True)
print(json.dumps({"id": request["id"], "event": "progress", "stage": "network", "done": 1, "total": 9}), flush=True)
time.sleep(120)
"""


def test_cancel_ends_the_workers_children_too():
    stand_in = WorkerClient(command=[sys.executable, "-c", STAND_IN_WORKER])
    task = stand_in.submit("models")
    while task.progress().stage != "network":  # a line that is not a message is passed over
        assert not task.done, task.error
        task.poll()
    tree = [psutil.Process(stand_in.pid)] + psutil.Process(stand_in.pid).children(recursive=True)
    assert len(tree) == 2
    task.cancel()
    assert task.done and task.cancelRequested
    gone, alive = psutil.wait_procs(tree, timeout=5)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def test_worker_leaves_when_its_input_closes_or_after_its_idle_time():
    script = str(REPO / "SegMateSlicer" / "SegMateLib" / "worker.py")
    closed = subprocess.Popen([sys.executable, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert protocol.decode(closed.stdout.readline())["event"] == "ready"
    closed.stdin.close()  # Slicer exited, or the module was reloaded
    assert closed.wait(timeout=20) == 0
    idle = subprocess.Popen([sys.executable, script, "--idle-timeout", "0.5"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        events = [protocol.decode(line) for line in idle.stdout]
        assert idle.wait(timeout=20) == 0
    finally:
        killProcessTree(idle.pid)
    assert [e["event"] for e in events] == ["ready", "exiting"] and events[1]["reason"] == "idle"


def test_messages_are_plain_json_lines():
    message = {"id": 4, "event": "result", "result": {"volumes": {"liver": np.float32(1.5)}, "first": np.int64(3),
                                                      "path": Path("labels.nrrd"), "ratio": float("nan")}}
    line = protocol.encode(message)
    assert "\n" not in line
    assert protocol.decode(line) == {"id": 4, "event": "result", "result": {"volumes": {"liver": 1.5}, "first": 3,
                                                                           "path": "labels.nrrd", "ratio": None}}
    for bad in ("not json", "[1, 2]", '{"neither": 1}'):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode(bad)
    with pytest.raises(ValueError, match="Unknown worker command"):
        protocol.request(1, "exec", {})


def test_model_download_runs_in_the_worker_with_progress(tmp_path, monkeypatch):
    """The panel's download: the worker fetches a catalogue model it lacks, reporting bytes as progress."""
    import functools
    import json
    import shutil
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from segmatecore.hub.catalogue import file_sha256

    resources = tmp_path / "Resources"
    shutil.copytree(REPO / "Resources", resources, ignore=shutil.ignore_patterns("SampleData"))
    catalogue = json.loads((resources / "models.json").read_text(encoding="utf-8"))
    bundled = resources / "Models" / f"{catalogue['default_model']}.safetensors"
    (tmp_path / "server").mkdir()
    shutil.copy(bundled, tmp_path / "server" / "demo.safetensors")
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path / "server"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/demo.safetensors"
    catalogue["models"].append(dict(catalogue["models"][0], id="demo_download", url=url))
    (resources / "models.json").write_text(json.dumps(catalogue))
    monkeypatch.setenv("SEGMATE_RESOURCES", str(resources))
    monkeypatch.setenv("SEGMATE_HOME", str(tmp_path / "home"))

    reported = []

    class Events:
        def progress(self, stage, done, total):
            reported.append((stage, done, total))

    try:
        with pytest.raises(FileNotFoundError, match="not installed"):
            worker._modelPath("demo_download", False, Events())
        path = worker._modelPath("demo_download", True, Events())
    finally:
        server.shutdown()
    assert path == tmp_path / "home" / "models" / "demo_download.safetensors"
    assert file_sha256(path) == catalogue["models"][0]["sha256"]
    size = bundled.stat().st_size
    assert reported[0] == ("download", 0, size) and reported[-1] == ("download", size, size)
    assert all(stage == "download" for stage, _, _ in reported) and len(reported) >= 3
