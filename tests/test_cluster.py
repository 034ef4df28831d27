"""Folder runs on Ray (`vidanon anonymize ... --ray`), as users run them, on one local Ray instance.

The instance (2 CPUs, a small object store) is started once for the session; each `vidanon` run joins it
with `--ray-address` as a second driver, the way a run joins a cluster, and starts 2 CPU actors on it.
Fast settings: closed-form model, landmark masks, 8 steps, short 640x360 clips with two large faces.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import synth

from vidanon import folder_run, keys
from vidanon.atomic import stale_temps
from vidanon.config import Config
from vidanon.restore import deanonymize_video
from vidanon.sealed import sidecar_path

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[test,ray]'")

REPO = Path(__file__).resolve().parents[1]
FAST = ["--model", "testing:gaussian", "--mask", "landmarks", "--steps", "8", "--device", "cpu", "--lossless"]
CONFIG = Config(model="testing:gaussian", mask="landmarks", steps=8, device="cpu", lossless=True)
CLIPS = ("c0.mp4", "c1.mp4", "c2.mp4", "c3.mp4")


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray instance for every test here; its worker processes import this tree."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old) if p)  # inherited by Ray's workers
    try:
        ctx = ray.init(num_cpus=2, object_store_memory=80 << 20, include_dashboard=False,
                       logging_level=logging.WARNING, log_to_driver=False)
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def env_for(root: Path) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf"), VIDANON_CACHE=str(root / "cache"),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    return env


# Runs the CLI and says on stderr whether Ray was imported: the local path must not import it.
CLI = ("import sys; from vidanon.cli import main; rc = main(sys.argv[1:]); "
       "print('ray imported' if 'ray' in sys.modules else 'ray not imported', file=sys.stderr); sys.exit(rc)")


def start(root: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLI, *map(str, args)], cwd=root, env=env_for(root),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def vidanon(root: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    p = start(root, *args)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def anonymize_on_ray(address: str, src: str, out: str, *extra) -> list:
    return ["anonymize", src, "-o", out, "--key-file", "master.key", *FAST, "--ray", "--ray-address", address,
            "--ray-actors", "2", "-v", *extra]


def hidden(folder: Path) -> list[str]:
    """Temps, locks, set-aside manifests: everything a run keeps out of sight while it works."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def tree_state(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def video_timing(path: Path) -> list[int]:
    with av.open(str(path)) as f:
        return sorted(frame.pts for frame in f.decode(video=0))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """in/: 4 short clips; long.mp4: a clip long enough to be caught mid-file; the master key."""
    root = tmp_path_factory.mktemp("cluster")
    (root / "in").mkdir()
    for i, name in enumerate(CLIPS):
        synth.large_faces_clip(root / "in" / name, width=640, height=360, frames=2, seed=i)
    synth.large_faces_clip(root / "long.mp4", width=640, height=360, frames=24)
    keys.save_master_key(root / "master.key", keys.generate_master_key())
    return root


@pytest.fixture(scope="module")
def runs(root, ray_address):
    """The same folder anonymized on Ray (2 actors) and by the plain local path."""
    on_ray = vidanon(root, *anonymize_on_ray(ray_address, "in", "ray", "--report", "ray.json"))
    local = vidanon(root, "anonymize", "in", "-o", "local", "--key-file", "master.key", *FAST, "-q")
    return on_ray, local


def face_psnr(original: list[np.ndarray], restored: list[np.ndarray], manifest: dict) -> float:
    """PSNR of the restored faces against the originals, over every face box of every frame."""
    err = []
    for track in manifest["tracks"]:
        for face in track["faces"]:
            x0, y0, x1, y1 = (round(v) for v in face["box"])
            a, b = original[face["frame"]][y0:y1, x0:x1], restored[face["frame"]][y0:y1, x0:x1]
            err.append(((a.astype(np.float64) - b.astype(np.float64)) ** 2).ravel())
    mse = np.concatenate(err).mean()
    return float(10 * np.log10(255.0**2 / mse)) if mse else float("inf")


def test_folder_on_ray_matches_the_local_run(root, runs):
    on_ray, local = runs
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    assert local.returncode == 0, local.stderr[-3000:]
    assert "ray not imported" in local.stderr  # the local path never imports Ray
    assert on_ray.stderr.count("Ray worker ready on") == 2  # two actors, each with its model
    report = json.loads((root / "ray.json").read_text())
    assert report["exit_code"] == 0 and report["totals"]["done"] == 4 and report["totals"]["files"] == 4
    assert sorted(Path(f["input"]).name for f in report["files"] if f["status"] == "done") == list(CLIPS)
    assert "4 files: 4 done" in on_ray.stdout.splitlines()[-1]
    for name in CLIPS:  # a line per file as it finished, like the local run
        assert f"done: in/{name} -> ray/{name}" in on_ray.stderr
    assert hidden(root / "ray") == []
    master = keys.load_master_key(root / "master.key")
    for name in CLIPS:
        src, out = root / "in" / name, root / "ray" / name
        manifest = json.loads(out.with_suffix(".vidanon.json").read_text())
        assert manifest["video"]["frames"] == 2 and sidecar_path(out).is_file()
        assert video_timing(out) == video_timing(src)  # same frames, same timestamps
        # Restores with the master key as the local path's output does: exactly from the sealed originals,
        # and by the key flip alone within 0.5 dB.
        original = synth.read_frames(src)
        psnrs = {}
        for folder in ("ray", "local"):
            man = json.loads((root / folder / name).with_suffix(".vidanon.json").read_text())
            for method in ("sealed", "flip"):
                restored = deanonymize_video(root / folder / name, root / f"restored-{folder}-{method}" / name, master,
                                             config=CONFIG, method=method, progress=False)
                psnrs[folder, method] = face_psnr(original, synth.read_frames(restored.output), man)
        anonymized = face_psnr(original, synth.read_frames(out), manifest)
        assert psnrs["ray", "sealed"] == psnrs["local", "sealed"] == float("inf"), psnrs  # bit for bit
        # Measured: 18.8 dB by the flip (both paths, within 0.002 dB), 13.3 dB anonymized (8 steps, ~190 px faces).
        assert psnrs["ray", "flip"] > anonymized + 3, (psnrs, anonymized)
        assert abs(psnrs["ray", "flip"] - psnrs["local", "flip"]) <= 0.5, psnrs


def test_rerun_skips_every_complete_output(root, runs, ray_address):
    before = tree_state(root / "ray")
    p = vidanon(root, *anonymize_on_ray(ray_address, "in", "ray"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert sum(line.startswith("skipped") for line in p.stdout.splitlines()) == 4
    assert "Ray worker ready" not in p.stderr  # nothing to do: no actor started
    assert tree_state(root / "ray") == before


def holder_of(path: Path) -> int | None:
    """The process that has `path` open (Linux /proc), or None."""
    target = str(path)
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.readlink(fd) == target:
                    return int(fd_dir.parent.name)
        except OSError:  # gone, or not ours
            continue
    return None


def caught_mid_file(root: Path, proc: subprocess.Popen, out: str) -> tuple[Path, int]:
    """Wait until an actor is writing long.mp4's output; return its hidden temp and the actor's pid."""
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        temp, pid = writer_of(root / out / "long.mp4")
        if pid is not None:
            return temp, pid
        time.sleep(0.01)
    pytest.fail(f"no actor started long.mp4: {proc.communicate()[1][-3000:]}")


def writer_of(output: Path) -> tuple[Path | None, int | None]:
    """The hidden temp being written for `output` and the process writing it, or (None, None)."""
    for temp in stale_temps(output):
        pid = holder_of(temp.resolve())
        if pid is not None:
            return temp, pid
    return None, None


def folder_with_long_clip(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    shutil.copy(root / "long.mp4", folder / "long.mp4")
    for clip in CLIPS[:3]:
        shutil.copy(root / "in" / clip, folder / clip)
    return folder


@pytest.fixture(scope="module")
def killed(root, ray_address):
    """A run over long.mp4, 3 short clips and 2 bad files, whose actor is killed in the middle of long.mp4."""
    folder = folder_with_long_clip(root, "kill")
    data = (root / "in" / CLIPS[3]).read_bytes()
    (folder / "broken.mp4").write_bytes(data[: len(data) // 2])
    (folder / "notes.mp4").write_text("not a video, just notes\n")
    proc = start(root, *anonymize_on_ray(ray_address, "kill", "kill-out", "--report", "kill.json"))
    temp, pid = caught_mid_file(root, proc, "kill-out")
    os.kill(pid, signal.SIGSTOP)  # hold the actor where it is: mid-file, its temp on disk
    assert temp.exists()
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    files = {Path(f["input"]).name: f for f in json.loads((root / "kill.json").read_text())["files"]}
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), files


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the actor's process through /proc")
def test_an_actor_killed_mid_file_is_replaced_and_the_file_redone(root, killed):
    p, files = killed
    assert p.returncode == 1, p.stderr[-3000:]  # the bad files; see the next test
    assert "long.mp4: its Ray worker died" in p.stderr and "redoing it on another" in p.stderr
    assert [files[n]["status"] for n in ("long.mp4", *CLIPS[:3])] == ["done"] * 4
    assert len(files) == 6 and "4 done, 2 failed" in p.stdout.splitlines()[-1]  # every file listed once
    assert hidden(root / "kill-out") == []  # no temp or lock left, by the killed actor or anyone
    long = json.loads((root / "kill-out/long.vidanon.json").read_text())
    assert long["video"]["frames"] == 24 and video_timing(root / "kill-out/long.mp4") == video_timing(root / "long.mp4")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the actor's process through /proc")
def test_bad_files_fail_with_their_reason_as_locally(root, killed):
    p, files = killed
    assert p.returncode == 1
    assert files["broken.mp4"]["status"] == files["notes.mp4"]["status"] == "failed"
    assert "not a readable video file" in files["broken.mp4"]["reason"]
    # The local path says the same about the same files.
    local = folder_run.plan([root / "kill/broken.mp4", root / "kill/notes.mp4"], root / "bad-local", CONFIG)
    report = folder_run.run_batch(local, keys.load_master_key(root / "master.key"), CONFIG, progress=False)
    assert report.exit_code == 1
    for job in local:
        assert job.status == "failed"
        assert files[job.input.name]["reason"] == job.reason.replace(str(job.input), f"kill/{job.input.name}")
    assert sorted(p.name for p in (root / "kill-out").iterdir()) == sorted(
        n for c in ("long", "c0", "c1", "c2") for n in (f"{c}.mp4", f"{c}.vidanon.json", f"{c}.vidanon.sealed"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the actor's process through /proc")
def test_retries_are_bounded_then_the_file_is_reported_failed(root, ray_address):
    """From Python, on the Ray connection this process already has, with no retry: one death fails the file."""
    import threading

    from vidanon.cluster import RayOptions, run_on_ray

    (root / "once").mkdir()
    shutil.copy(root / "long.mp4", root / "once/long.mp4")
    jobs = folder_run.plan([root / "once"], root / "once-out", CONFIG)
    done = []
    driver = threading.Thread(target=lambda: done.append(
        run_on_ray(jobs, root / "master.key", CONFIG, RayOptions(retries=0), progress=False)))
    driver.start()
    deadline = time.monotonic() + 180
    while (pid := writer_of(root / "once-out/long.mp4")[1]) is None and driver.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pid is not None, "no actor started long.mp4"
    os.kill(pid, signal.SIGKILL)
    driver.join(timeout=120)
    report = done[0]
    assert report.exit_code == 1 and jobs[0].status == "failed"
    assert "its Ray worker died 1 time; last:" in jobs[0].reason
    assert list((root / "once-out").iterdir()) == []  # its temps and lock cleared, nothing under a final name
    assert ray.is_initialized()  # a connection it did not make is left as it was


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the actor's process through /proc")
def test_ctrl_c_stops_the_cluster_work_and_leaves_nothing_partial(root, ray_address):
    folder_with_long_clip(root, "stop")
    proc = start(root, *anonymize_on_ray(ray_address, "stop", "stop-out", "--report", "stop.json"))
    caught_mid_file(root, proc, "stop-out")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in out and "Traceback" not in err
    report = json.loads((root / "stop.json").read_text())
    assert report["interrupted"] and {f["status"] for f in report["files"]} <= {"done", "interrupted", "pending"}
    assert next(f for f in report["files"] if f["input"].endswith("long.mp4"))["status"] == "interrupted"
    assert hidden(root / "stop-out") == []
    done = {Path(f["output"]).name for f in report["files"] if f["status"] == "done"}
    assert {p.name for p in (root / "stop-out").iterdir()} == done | {
        n.replace(".mp4", suffix) for n in done for suffix in (".vidanon.json", ".vidanon.sealed")}


def test_without_ray_the_flag_says_how_to_install_it(root):
    script = ("import sys; sys.modules['ray'] = None  # as if Ray were not installed\n"
              "from vidanon.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", script, "anonymize", "in", "-o", "none", "--key-file", "master.key",
                        *FAST, "--ray"], cwd=root, env=env_for(root), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == "vidanon: error: running on Ray needs the ray extra: pip install 'vidanon[ray]'"
