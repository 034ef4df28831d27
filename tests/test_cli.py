"""The `vidanon` command line, run as users run it: `python -m vidanon ...` in a subprocess.

Fast settings everywhere (closed-form test model, landmark masks, few steps, CPU, tiny clips);
the clips and the runs on them are shared through module-scoped fixtures. Restoration
fidelity bounds are the pipeline tests' job; here we check that the right faces come back.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import types
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

import synth

from vidanon.atomic import stale_temps

REPO = Path(__file__).resolve().parents[1]
FAST = ["--model", "testing:gaussian", "--mask", "landmarks", "--steps", "8", "--device", "cpu"]
OUTPUTS: list[str] = []  # every stdout/stderr of every run, for the key-leak check


def env_for(root: Path) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf"), VIDANON_CACHE=str(root / "cache"),
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def vidanon(root: Path, *args, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "vidanon", *map(str, args)], cwd=cwd or root, env=env_for(root),
                       capture_output=True, text=True, timeout=timeout)
    OUTPUTS.extend([p.stdout, p.stderr])
    return p


def one_line_error(p: subprocess.CompletedProcess) -> str:
    """stderr must be exactly one `vidanon: error: ...` line, no traceback."""
    err = p.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith("vidanon: error: "), err
    return err


def tree_state(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def master_key(root) -> Path:
    p = vidanon(root, "keygen", "-o", "master.key")
    assert p.returncode == 0, p.stderr
    assert "master.key" in p.stdout and "safe" in p.stderr
    return root / "master.key"


# --- a folder run with bad files, resume, overwrite, report, dry run ---------------------------


@pytest.fixture(scope="module")
def tree(root, master_key):
    """in/ with three clips in nested folders, a truncated MP4 and a text file named .mp4; first run."""
    src = root / "in"
    for rel, seed in (("cam1/day1/a.mp4", 0), ("cam1/b.mov", 1), ("cam2/c.mkv", 2)):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        synth.make_clip(src / rel, width=160, height=120, frames=2, audio=rel.endswith(".mov"), seed=seed)
    synth.make_clip(src / "cam2/broken.mp4", width=160, height=120, frames=2, audio=False)
    data = (src / "cam2/broken.mp4").read_bytes()
    (src / "cam2/broken.mp4").write_bytes(data[: len(data) // 2])
    (src / "notes.mp4").write_text("not a video, just notes\n")
    first = vidanon(root, "anonymize", "in", "-o", "out", "--key-file", master_key, "--report", "report1.json", *FAST)
    return src, root / "out", first


GOOD = ("cam1/day1/a.mp4", "cam1/b.mov", "cam2/c.mkv")


def test_folder_run_keeps_going_past_bad_files(root, tree):
    src, out, p = tree
    assert p.returncode == 1, p.stderr
    # Mirrored tree, each video with its manifest and sealed originals, and nothing else (no temp, nothing for
    # the bad files).
    expected = {*GOOD, *(str(Path(g).with_suffix(s)) for g in GOOD for s in (".vidanon.json", ".vidanon.sealed"))}
    assert set(tree_state(out)) == expected
    for g in GOOD:
        header = json.loads((out / g).with_suffix(".vidanon.json").read_text())
        assert header["format"] == "vidanon-manifest" and header["video"]["frames"] == 2
        assert len(synth.read_frames(out / g)) == 2
    # The summary names both failures with their reasons.
    lines = p.stdout.splitlines()
    broken = next(line for line in lines if "broken.mp4" in line)
    notes = next(line for line in lines if "notes.mp4" in line)
    for line in (broken, notes):
        assert line.startswith("failed") and "not a readable video file" in line
    assert sum(line.startswith("done") for line in lines) == 3
    assert "5 files: 3 done, 2 failed" in lines[-1]
    # stderr is not a terminal here: no progress bars, so a redirected log holds no escape codes
    assert "\r" not in p.stderr and "\x1b[" not in p.stderr and "it/s" not in p.stderr


def test_report_matches_summary(root, tree):
    src, out, p = tree
    report = json.loads((root / "report1.json").read_text())
    assert report["exit_code"] == 1 and not report["interrupted"]
    assert report["totals"]["done"] == 3 and report["totals"]["failed"] == 2 and report["totals"]["files"] == 5
    by_input = {Path(f["input"]).as_posix(): f for f in report["files"]}
    assert set(by_input) == {f"in/{g}" for g in GOOD} | {"in/cam2/broken.mp4", "in/notes.mp4"}
    for g in GOOD:
        f = by_input[f"in/{g}"]
        assert f["status"] == "done" and f["frames"] == 2 and f["faces"] >= 2 and f["tracks"] >= 1
        assert Path(f["output"]).as_posix() == f"out/{g}"
        # The table line of this file says the same.
        assert any(line.split()[:4] == ["done", f"in/{g}", str(f["faces"]), str(f["tracks"])] for line in p.stdout.splitlines())
    for bad in ("in/cam2/broken.mp4", "in/notes.mp4"):
        assert by_input[bad]["status"] == "failed" and by_input[bad]["reason"] in p.stdout
    assert report["config"]["steps"] == 8 and report["config"]["model"] == "testing:gaussian"


def test_dry_run_rerun_and_overwrite(root, tree, master_key):
    src, out, _ = tree
    before = tree_state(root)
    p = vidanon(root, "anonymize", "in", "-o", "out", "--key-file", master_key, "--dry-run", *FAST)
    assert p.returncode == 1, p.stderr  # a dry run probes the inputs too: the two bad files would fail
    assert tree_state(root) == before  # writes nothing
    rows = {line.split()[1]: line.split()[0] for line in p.stdout.splitlines()[1:-1]}
    assert rows == {**{f"in/{g}": "skipped" for g in GOOD}, "in/cam2/broken.mp4": "failed", "in/notes.mp4": "failed"}

    # Without the bad files a rerun has nothing to do: everything skipped, exit 0, outputs untouched.
    (root / "bad").mkdir()
    for bad in ("cam2/broken.mp4", "notes.mp4"):
        (src / bad).rename(root / "bad" / Path(bad).name)
    outputs = tree_state(out)
    p = vidanon(root, "anonymize", "in", "-o", "out", "--key-file", master_key, *FAST)
    assert p.returncode == 0, p.stderr
    assert sum(line.startswith("skipped") for line in p.stdout.splitlines()) == 3
    assert tree_state(out) == outputs

    # --overwrite redoes every complete output: new videos, new manifests (fresh video_ids); -q prints nothing.
    def ids():
        return {g: json.loads((out / g).with_suffix(".vidanon.json").read_text())["video_id"] for g in GOOD}

    old = ids()
    p = vidanon(root, "anonymize", "in", "-o", "out", "--key-file", master_key, "--overwrite", "-q", *FAST)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and p.stderr == ""  # -q: warnings and errors only
    assert all(ids()[g] != old[g] for g in GOOD)
    assert set(tree_state(out)) == set(outputs)

    # A rerun with settings that change the output (here the steps) redoes every file, and says why.
    old = ids()
    fewer = [a if a != "8" else "6" for a in FAST]
    p = vidanon(root, "anonymize", "in", "-o", "out", "--key-file", master_key, *fewer)
    assert p.returncode == 0, p.stderr
    done = [line for line in p.stdout.splitlines() if line.startswith("done")]
    assert len(done) == 3 and all("redone: made with other settings (steps 8 -> 6)" in line for line in done), p.stdout
    assert all(ids()[g] != old[g] for g in GOOD)
    assert all(json.loads((out / g).with_suffix(".vidanon.json").read_text())["diffusion"]["steps"] == 6 for g in GOOD)


def test_output_folder_must_not_be_or_lie_in_an_input_folder(root, tree, master_key):
    p = vidanon(root, "anonymize", "in", "-o", "in", "--key-file", master_key, *FAST)
    assert p.returncode == 2
    assert "output folder is the input folder" in one_line_error(p)
    p = vidanon(root, "anonymize", "in", "-o", "in/anon", "--key-file", master_key, *FAST)
    assert p.returncode == 2
    assert "lies inside the input folder" in one_line_error(p) and not (root / "in" / "anon").exists()


# --- interrupt, resume, and the per-person flow on one clip ------------------------------------


@pytest.fixture(scope="module")
def flow(root, master_key):
    """An anonymize run stopped by SIGINT mid-file, then the rerun that completes it (lossless, 20 steps)."""
    d = root / "flow"
    d.mkdir()
    # Faces of 130-160 px: restoring a face much smaller than the 256 px crop is a separate matter (see report).
    clip = synth.large_faces_clip(d / "cam.mp4", width=640, height=360, frames=2)
    cmd = [sys.executable, "-m", "vidanon", "anonymize", "cam.mp4", "-o", "anon", "--key-file", master_key,
           "--model", "testing:gaussian", "--mask", "landmarks", "--steps", "20", "--device", "cpu", "--lossless"]
    proc = subprocess.Popen(cmd, cwd=d, env=env_for(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The hidden temporary output: once it is there, the run is in the middle of the file.
    deadline = time.monotonic() + 120
    while not stale_temps(d / "anon" / "cam.mp4") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    OUTPUTS.extend([out, err])
    left = sorted(os.listdir(d / "anon")) if (d / "anon").is_dir() else []
    interrupted = {"rc": proc.returncode, "stdout": out, "stderr": err, "files": left}

    # What a `kill -9` would have left: stale hidden temps. The rerun must clear them and finish.
    (d / "anon").mkdir(exist_ok=True)
    (d / "anon" / ".cam.mp4.x1y2.partial.mp4").write_bytes(b"stale partial video")
    (d / "anon" / ".cam.vidanon.json.x1y2.partial.json").write_text("{stale")
    rerun = vidanon(root, *cmd[3:], "-vv", cwd=d)
    return {"dir": d, "clip": clip, "interrupted": interrupted, "rerun": rerun}


def test_sigint_leaves_nothing_partial_and_rerun_completes(flow):
    i = flow["interrupted"]
    assert i["rc"] == 130, i["stderr"][-2000:]
    # Nothing under a final name: no video (with or without manifest), and the temp is cleaned.
    assert i["files"] == [], i["files"]
    assert "interrupted" in i["stdout"] and "Traceback" not in i["stderr"]
    assert "vidanon: error: interrupted" in i["stderr"]

    r = flow["rerun"]
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(os.listdir(flow["dir"] / "anon")) == ["cam.mp4", "cam.vidanon.json", "cam.vidanon.sealed"]
    assert len(synth.read_frames(flow["dir"] / "anon/cam.mp4")) == 2


def manifest_of(flow) -> dict:
    return json.loads((flow["dir"] / "anon/cam.vidanon.json").read_text())


def test_inspect_table_json_and_contact_sheet(root, flow):
    d = flow["dir"]
    man = manifest_of(flow)
    tb = Fraction(man["video"]["time_base"])
    p = vidanon(root, "inspect", "anon/cam.mp4", "--json", cwd=d)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert [t["id"] for t in info["tracks"]] == [t["id"] for t in man["tracks"]] and len(man["tracks"]) == 2
    for row, t in zip(info["tracks"], man["tracks"]):
        assert row["first_frame"] == t["first_frame"] and row["last_frame"] == t["last_frame"]
        assert row["frames"] == len(t["faces"])
        assert row["first_seconds"] == pytest.approx(float(t["first_pts"] * tb), abs=1e-3)
        assert row["last_seconds"] == pytest.approx(float(t["last_pts"] * tb), abs=1e-3)
        heights = [f["box"][3] - f["box"][1] for f in t["faces"]]
        assert row["mean_height"] == pytest.approx(np.mean(heights), abs=0.1)

    p = vidanon(root, "inspect", "anon/cam.mp4", "--contact-sheet", "sheet.png", cwd=d)
    assert p.returncode == 0, p.stderr
    table = p.stdout.splitlines()
    for row in info["tracks"]:
        line = next(line for line in table if line.split()[0] == str(row["id"]))
        assert line.split()[1:4] == [row["first_time"], row["last_time"], str(row["frames"])]
    png = (d / "sheet.png").read_bytes()
    assert png.startswith(b"\x89PNG") and not list(d.glob(".sheet.png*"))
    sheet = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert sheet is not None and sheet.shape[0] > 2 * 128 and sheet.std() > 10  # two rows of face tiles


def face_error(frames_a, frames_b, faces) -> float:
    """Mean absolute difference over the inner half of each face box (inside the replaced region)."""
    errs = []
    for f in faces:
        x0, y0, x1, y1 = f["box"]
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4, (y1 - y0) / 4
        ys, xs = slice(round(cy - h), round(cy + h)), slice(round(cx - w), round(cx + w))
        a, b = frames_a[f["frame"]][ys, xs], frames_b[f["frame"]][ys, xs]
        errs.append(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())
    return float(np.mean(errs))


def test_export_key_restores_only_that_person(root, flow):
    d = flow["dir"]
    man = manifest_of(flow)
    tid = man["tracks"][1]["id"]
    p = vidanon(root, "export-key", "anon/cam.mp4", "--key-file", root / "master.key", "--track", tid, "-o", "person.key", cwd=d)
    assert p.returncode == 0, p.stderr
    assert (d / "person.key").stat().st_mode & 0o777 == 0o600
    assert (d / "person.key").read_text().startswith("vidanon-track-key-v1:")
    p = vidanon(root, "export-key", "anon/cam.mp4", "--key-file", root / "master.key", "--track", 99, "-o", "x.key", cwd=d)
    assert p.returncode == 2 and "track 99 is not in this video" in one_line_error(p)

    p = vidanon(root, "deanonymize", "anon/cam.mp4", "--track-key", "person.key", "-o", "restored", cwd=d)
    assert p.returncode == 0, p.stderr
    assert " of 1 track from their sealed originals (exact) into " in p.stdout  # not "1 tracks"
    assert (d / "restored" / "cam.mp4").stat().st_mode & 0o077 == 0
    again = vidanon(root, "deanonymize", "anon/cam.mp4", "--track-key", "person.key", "-o", "restored", cwd=d)
    assert again.returncode == 2 and "already exists (use --overwrite" in one_line_error(again)
    orig, anon, rest = (synth.read_frames(d / v) for v in ("cam.mp4", "anon/cam.mp4", "restored/cam.mp4"))
    assert len(rest) == 2
    chosen, other = man["tracks"][1]["faces"], man["tracks"][0]["faces"]
    # The chosen person comes back (measured: mean error 15 restored vs 56 anonymized at 20 steps;
    # the fidelity bound is the pipeline tests' job) ...
    anon_err, rest_err = face_error(anon, orig, chosen), face_error(rest, orig, chosen)
    assert anon_err > 30 and rest_err < 0.4 * anon_err, (anon_err, rest_err)
    # ... the other stays exactly as anonymized (lossless), still far from the original.
    assert face_error(rest, anon, other) < 0.5
    assert face_error(rest, orig, other) > 30


def test_wrong_key_is_refused_and_nothing_written(root, flow):
    d = flow["dir"]
    p = vidanon(root, "keygen", "-o", "other.key", cwd=d)
    assert p.returncode == 0
    p = vidanon(root, "deanonymize", "anon/cam.mp4", "--key-file", "other.key", "-o", "wrong", cwd=d)
    assert p.returncode == 2
    assert "wrong key" in one_line_error(p)
    assert not (d / "wrong").exists()
    p = vidanon(root, "export-key", "anon/cam.mp4", "--key-file", "other.key", "--track", 0, "-o", "y.key", cwd=d)
    assert p.returncode == 2 and "wrong key" in one_line_error(p) and not (d / "y.key").exists()


# --- keys ---------------------------------------------------------------------------------------


def test_key_files_are_guarded(root, master_key, tree):
    before = master_key.read_bytes()
    p = vidanon(root, "keygen", "-o", master_key)
    assert p.returncode == 2 and "refusing to overwrite" in one_line_error(p)
    assert master_key.read_bytes() == before and master_key.stat().st_mode & 0o777 == 0o600

    garbage = root / "garbage.key"
    garbage.write_text("this is not a key\n")
    garbage.chmod(0o600)
    p = vidanon(root, "anonymize", "in", "-o", "out_g", "--key-file", garbage, *FAST)
    assert p.returncode == 2 and "not a vidanon key file" in one_line_error(p)

    shared = root / "shared.key"
    shared.write_bytes(before)
    shared.chmod(0o644)
    p = vidanon(root, "anonymize", "in", "-o", "out_s", "--key-file", shared, *FAST)
    assert p.returncode == 2
    err = one_line_error(p)
    assert "readable by others" in err and "chmod 600" in err
    assert not (root / "out_g").exists() and not (root / "out_s").exists()


# --- batch planning and resume rules, in process (no video work) -------------------------------


def test_plan_rules(tmp_path):
    from vidanon import folder_run
    from vidanon.errors import InputError

    src = tmp_path / "in"
    for rel in ("A.MP4", "sub/a.mov", "sub/a.mp4", "sub/c.avi", "sub/c.mkv", ".hidden.mp4", ".cache/x.mp4",
                "sub/notes.txt"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"x")
    jobs = folder_run.plan([src, src / "sub/a.mov"], tmp_path / "out")  # a.mov named twice: done once
    got = {j.input.relative_to(src).as_posix(): (j.output.relative_to(tmp_path / "out").as_posix(), j.status) for j in jobs}
    assert got == {  # hidden files and folders are not scanned
        "A.MP4": ("in/A.mp4", "pending"),  # several inputs: each folder keeps its name under outdir
        "sub/a.mov": ("in/sub/a.mov", "pending"),
        "sub/a.mp4": ("in/sub/a.mp4", "failed"),  # same manifest name sub/a.vidanon.json as a.mov
        "sub/c.avi": ("in/sub/c.mkv", "pending"),  # AVI cannot hold our H.264: .mkv
        "sub/c.mkv": ("in/sub/c.mkv", "failed"),
    }
    assert "would also be written for" in next(j for j in jobs if j.input.name == "a.mp4").reason
    assert [j.input.name for j in folder_run.plan([src], tmp_path / "o", patterns=["*.TXT"])] == ["notes.txt"]
    # one folder: its tree goes straight under outdir
    assert {j.output.relative_to(tmp_path / "o").as_posix() for j in folder_run.plan([src / "sub"], tmp_path / "o")} == {
        "a.mov", "a.mp4", "c.mkv"}


    # Complete = video and manifest; a video alone is redone.
    out = tmp_path / "o"
    (out / "sub").mkdir(parents=True)
    for name in ("A.mp4", "A.vidanon.json", "sub/a.mov"):
        (out / name).write_bytes(b"x")
    status = {j.input.name: (j.status, j.reason) for j in folder_run.plan([src], out)}
    assert status["a.mov"] == ("pending", "redo: incomplete output of an earlier run")
    assert status["A.MP4"] == ("pending", "redo: its manifest is unreadable")  # complete, but damaged
    assert {j.input.name: j.status for j in folder_run.plan([src], out, overwrite=True)}["A.MP4"] == "pending"

    for inputs, outdir, message in (([src], src, "is the input folder"), ([src / "A.MP4"], src, "holds the input"),
                                    ([src], src / "sub" / "anon", "lies inside the input folder"),
                                    ([tmp_path / "nope"], out, "no such file")):
        with pytest.raises(InputError, match=message):
            folder_run.plan(inputs, outdir)


def test_failed_redo_keeps_old_output_and_report(tmp_path):
    """--overwrite of a file that now fails puts the old output back; a lone video is never left behind."""
    from vidanon import folder_run
    from vidanon.config import Config

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for name in ("x.mp4", "y.mp4"):
        (src / name).write_text("no longer a readable video")
    (out / "x.mp4").write_bytes(b"old video")
    (out / "x.vidanon.json").write_text("old manifest")
    (out / ".x.mp4.abc.partial.mp4").write_bytes(b"stale")  # left by a killed run
    (out / ".x.vidanon.json.abc.partial.json").write_text("stale")
    (out / "y.mp4").write_bytes(b"video without manifest")
    jobs = folder_run.plan([src], out, overwrite=True)
    sentinel = types.SimpleNamespace(name="stub", image_shape=(3, 256, 256))  # nothing is loaded when model and detector are given
    report = folder_run.run_batch(jobs, b"k" * 32, Config(model="testing:gaussian"), model=sentinel, detector=sentinel,
                             progress=False)
    assert [j.status for j in jobs] == ["failed", "failed"] and report.exit_code == 1
    assert "not a readable video file" in jobs[0].reason
    assert sorted(p.name for p in out.iterdir()) == ["x.mp4", "x.vidanon.json"]
    assert (out / "x.mp4").read_bytes() == b"old video" and (out / "x.vidanon.json").read_text() == "old manifest"
    report.write(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["totals"]["failed"] == 2 and data["exit_code"] == 1 and [f["status"] for f in data["files"]] == ["failed"] * 2
    assert "2 failed" in report.summary().splitlines()[-1]


def test_parallel_runs_share_the_files_out(tmp_path):
    """Runs over the same folders at once (one per GPU) never work on the same output: a file another run
    holds is skipped, and so is one another run finished after this run planned. Its own locks are removed."""
    import fcntl

    from vidanon import folder_run
    from vidanon.config import Config

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("a", "b", "c"):
        synth.no_face_clip(src / f"{name}.mp4", frames=3)
    jobs = folder_run.plan([src], out)
    out.mkdir()
    with open(out / ".a.mp4.lock", "a") as held:  # another run is on a.mp4 ...
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (out / "b.mp4").write_bytes(b"theirs")  # ... and has finished b.mp4 since this run planned
        (out / "b.vidanon.json").write_text("theirs")
        cfg = Config(model="testing:gaussian", mask="landmarks", device="cpu", steps=2)
        report = folder_run.run_batch(jobs, b"k" * 32, cfg, progress=False)
    assert [(j.input.name, j.status, j.reason) for j in jobs] == [
        ("a.mp4", "skipped", "another vidanon run is working on it"),
        ("b.mp4", "skipped", "done meanwhile by another vidanon run"),
        ("c.mp4", "done", "")]
    assert report.exit_code == 0 and (out / "b.mp4").read_bytes() == b"theirs"
    assert sorted(p.name for p in out.iterdir()) == [".a.mp4.lock", "b.mp4", "b.vidanon.json", "c.mp4", "c.vidanon.json",
                                                     "c.vidanon.sealed"]


def test_leftovers_of_a_killed_run_are_cleared(tmp_path):
    """What a killed worker leaves (hidden temps, its lock, a video and sidecar renamed in without their manifest)
    is removed; an old output a killed redo had not touched yet is put back; a complete output is left alone."""
    from vidanon import folder_run
    from vidanon.sealed import sidecar_path

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for name in ("a", "b", "c"):
        (src / f"{name}.mp4").write_bytes(b"x")
    (out / "b.mp4").write_bytes(b"old video")
    (out / "b.vidanon.json").write_text("old manifest")
    (out / "c.mp4").write_bytes(b"done")
    (out / "c.vidanon.json").write_text("done")
    jobs = {j.input.stem: j for j in folder_run.plan([src], out, overwrite=True)}
    (out / ".a.mp4.x1.partial.mp4").write_bytes(b"temp")  # a: killed after its video got its final name
    (out / ".a.vidanon.json.x1.partial.json").write_text("{")
    (out / f".{sidecar_path(out / 'a.mp4').name}.x1.partial.sealed").write_bytes(b"sealed originals, half written")
    (out / "a.mp4").write_bytes(b"new video, no manifest yet")
    sidecar_path(out / "a.mp4").write_bytes(b"its sealed originals, no manifest yet")
    (out / ".a.mp4.lock").write_text("")
    os.replace(out / "b.vidanon.json", out / ".b.vidanon.json.old")  # b: killed early in a redo
    (out / ".b.mp4.x2.partial.mp4").write_bytes(b"temp")
    for job in jobs.values():
        folder_run.clear_leftovers(job)
    assert sorted(p.name for p in out.iterdir()) == ["b.mp4", "b.vidanon.json", "c.mp4", "c.vidanon.json"]
    assert (out / "b.vidanon.json").read_text() == "old manifest" and (out / "c.mp4").read_bytes() == b"done"


# --- help, doctor, models -----------------------------------------------------------------------


def run_all(root: Path, commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Start the commands together (each pays Python's start-up; in parallel that costs less)."""
    procs = [subprocess.Popen([sys.executable, "-m", "vidanon", *c], cwd=root, env=env_for(root), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands]
    results = []
    for c, pr in zip(commands, procs):
        out, err = pr.communicate(timeout=120)
        OUTPUTS.extend([out, err])
        results.append(subprocess.CompletedProcess(c, pr.returncode, out, err))
    return results


def test_help_shows_defaults(root):
    commands = ["keygen", "anonymize", "inspect", "export-key", "deanonymize", "doctor", "models"]
    results = run_all(root, [["--help"]] + [[c, "--help"] for c in commands])
    for r in results:
        assert r.returncode == 0 and r.stdout.startswith("usage: vidanon"), r.stderr
    # Compared without whitespace: argparse wraps lines (and breaks "non-commercial" at its hyphen).
    text = {c: "".join(r.stdout.split()) for c, r in zip(["top"] + commands, results)}
    for c in commands:
        assert c in text["top"]
    a = text["anonymize"]
    for expected in ("(default: ffhq)", "(default: 50)", "(default: 0)", "(default: auto)", "(default: centerface)",
                     "(default: 17)", "(default: medium)", "(default: 20)", "(default: no, H.264 at --crf)",
                     "non-commercial", "*.mp4 *.mov"):
        assert "".join(expected.split()) in a, expected
    assert "(default:themodelrecordedinthemanifest)" in text["deanonymize"]
    assert "Steps,diffusionschedule,masksandencoding(losslessorcrf)comefromthemanifest" in text["deanonymize"]
    assert "about12xlarger" in a and "High4:4:4Predictive" in a
    assert "(default:alltracksthekeyopens)" in text["deanonymize"]
    assert "(default:atable)" in text["inspect"]


def test_doctor_and_models_offline(root):
    doctor, models, pull = run_all(root, [["doctor"], ["models"], ["models", "pull", "ffhq"]])
    for expected in ("torch", "CUDA", "onnxruntime", "encoder libx264rgb", "CenterFace ONNX", "HF cache",
                     "vidanon models pull ffhq", "face parser"):
        assert expected in doctor.stdout, expected
    # The default model is not in this empty cache: that is an essential missing, not "all in place".
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert "PROBLEM: the default model is not cached" in doctor.stdout
    assert "some essentials are missing" in doctor.stdout and "all essentials are in place" not in doctor.stdout
    assert str(root / "hf") in doctor.stdout  # the HF cache it looked in
    assert models.returncode == 0, models.stderr
    for name in ("ffhq", "celebahq", "testing:gaussian", "face-parser", "MIT"):
        assert name in models.stdout
    assert pull.returncode == 2
    err = one_line_error(pull)
    assert "'ffhq'" in err and "PolLabarbarie/diffusion-signflip-anon-face" in err and "HF_HUB_OFFLINE" in err
    [nosuch] = run_all(root, [["models", "pull", "nosuch"]])
    err = one_line_error(nosuch)  # what can be pulled; the built-in test model is not among it
    assert nosuch.returncode == 2 and "'nosuch'" in err and "ffhq, celebahq, face-parser" in err
    assert "testing:gaussian" not in err


# --- last: no key anywhere ----------------------------------------------------------------------


def test_keys_never_appear_in_outputs(root, master_key, flow, tree):
    """No written file (videos, manifests, reports, PNG) and no stdout/stderr (-vv logs too) holds a key."""

    def forms(key_file: Path) -> tuple[bytes, list[str]]:
        b64 = key_file.read_text().strip().rsplit(":", 1)[1]
        raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
        return raw, [b64, raw.hex(), raw.hex().upper()]

    person = root / "flow" / "person.key"
    secrets = {"master": forms(master_key), **({"track": forms(person)} if person.exists() else {})}
    key_files = {master_key, person, root / "shared.key", root / "flow" / "other.key"}
    files = [p for p in root.rglob("*") if p.is_file() and p not in key_files]
    assert len(files) > 15
    for p in files:
        data = p.read_bytes()
        for name, (raw, texts) in secrets.items():
            assert raw not in data and not any(t.encode() in data for t in texts), f"{name} key found in {p}"
    assert len(OUTPUTS) > 30
    for out in OUTPUTS:
        for name, (_, texts) in secrets.items():
            assert not any(t in out for t in texts), f"{name} key in a command's output"


def test_camera_folders_with_the_same_file_names_do_not_collide(tmp_path):
    from vidanon import folder_run

    for cam in ("cam1", "cam2"):
        (tmp_path / cam / "2026-11-01").mkdir(parents=True)
        (tmp_path / cam / "2026-11-01" / "clip.mp4").write_bytes(b"x")
    jobs = folder_run.plan([tmp_path / "cam1", tmp_path / "cam2"], tmp_path / "out")
    assert [(j.output.relative_to(tmp_path / "out").as_posix(), j.status) for j in jobs] == [
        ("cam1/2026-11-01/clip.mp4", "pending"), ("cam2/2026-11-01/clip.mp4", "pending")]


def test_bad_settings_and_outputs_stop_before_any_file(tmp_path):
    """Exit 2 with one line before any video work: a mistyped config value, a report in a missing
    folder, an output folder that cannot be made. Nothing is written."""
    (tmp_path / "demo.key").write_text("vidanon-key-v1:" + "A" * 43 + "\n")
    (tmp_path / "demo.key").chmod(0o600)
    (tmp_path / "bad.yaml").write_text("steps: 4.5\n")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "in.mp4").write_bytes(b"not read")
    base = ["anonymize", "in.mp4", "--key-file", "demo.key", "--model", "testing:gaussian", "-q"]
    cases = [
        ([*base, "-o", "out1", "--config", "bad.yaml"], "bad.yaml: config: steps must be a whole number"),
        ([*base, "-o", "out2", "--report", "missing/r.json"], "missing/r.json: the report's folder does not exist"),
        ([*base, "-o", "afile/x"], "afile/x: cannot create the output folder"),
        ([*base, "-o", "out3", "--model", "nosuchmodel"], "model 'nosuchmodel': not a local directory"),
        ([*base[:1], "missing.mp4", *base[2:], "-o", "out4"], "missing.mp4: no such file or folder"),
        ([*base, "-o", "out5", "--device", "gpu"], "config: device must be auto, cpu, cuda or cuda:N"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append(([*base, "-o", "out6", "--device", "cuda"], "device 'cuda' requested but torch sees no CUDA GPU"))
    results = run_all(tmp_path, [c for c, _ in cases])
    for r, (_, message) in zip(results, cases):
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"vidanon: error: {message}"), r.stderr
    # Nothing was written: not even an empty output folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "bad.yaml", "demo.key", "in.mp4"]


def test_inspect_of_a_missing_video_says_the_video_is_missing(tmp_path):
    p = vidanon(tmp_path, "inspect", "nothere.mp4")
    assert p.returncode == 2 and "nothere.mp4: no such file" in one_line_error(p)


# --- a new user's first runs: nothing silent, nothing slow to refuse -------------------------------------


def test_keygen_if_missing_keeps_the_key_so_the_quick_start_runs_twice(tmp_path):
    first = vidanon(tmp_path, "keygen", "--if-missing", "-o", "demo.key")
    key = (tmp_path / "demo.key").read_bytes()
    again = vidanon(tmp_path, "keygen", "--if-missing", "-o", "demo.key")
    assert first.returncode == 0 and again.returncode == 0, again.stderr
    assert "wrote a new master key" in first.stdout and "kept the existing master key in demo.key" in again.stdout
    assert (tmp_path / "demo.key").read_bytes() == key and (tmp_path / "demo.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "notes.txt").write_text("my notes\n")
    p = vidanon(tmp_path, "keygen", "--if-missing", "-o", "notes.txt")  # a file that is no key is never taken for one
    assert p.returncode == 2 and "notes.txt: not a vidanon key file" in one_line_error(p)
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"
    p = vidanon(tmp_path, "keygen", "-o", "demo.key")  # without --if-missing: refused, as before
    assert p.returncode == 2 and "refusing to overwrite" in one_line_error(p)


def test_a_bad_input_is_refused_before_any_model_loads_and_q_never_hides_it(tmp_path):
    """A text file named .mp4 fails at once, naming the file, with -q too; the default model (not in this empty
    cache) is never loaded for it. A dry run probes as well and lists it as refused, with the reason."""
    vidanon(tmp_path, "keygen", "-o", "demo.key")
    (tmp_path / "notavideo.mp4").write_text("not a video\n")
    base = ["anonymize", "notavideo.mp4", "-o", "out", "--key-file", "demo.key"]
    quiet, dry = run_all(tmp_path, [[*base, "-q"], [*base, "--dry-run"]])
    assert quiet.returncode == 1 and quiet.stdout == ""
    assert one_line_error(quiet).startswith("vidanon: error: notavideo.mp4: not a readable video file")
    assert dry.returncode == 1, dry.stderr
    [line] = [line for line in dry.stdout.splitlines() if "notavideo.mp4" in line]
    assert line.startswith("failed") and "not a readable video file" in line
    assert not (tmp_path / "out").exists()


def test_the_parser_note_comes_once_per_run_and_never_under_q(tmp_path):
    """--mask auto without parser weights: one note for a folder of two files; none with -q."""
    vidanon(tmp_path, "keygen", "-o", "demo.key")
    (tmp_path / "in").mkdir()
    for name in ("a.mp4", "b.mp4"):
        synth.make_clip(tmp_path / "in" / name, width=160, height=120, frames=2, audio=False)
    fast = [a for a in FAST if a not in ("--mask", "landmarks")]
    normal, quiet = run_all(tmp_path, [["anonymize", "in", "-o", out, "--key-file", "demo.key", *fast, *q]
                                       for out, q in (("out1", []), ("out2", ["-q"]))])
    assert normal.returncode == 0 and quiet.returncode == 0, normal.stderr + quiet.stderr
    assert normal.stderr.count("face-parsing weights") == 1 and "vidanon: note: no face-parsing weights" in normal.stderr
    assert quiet.stderr == "" and quiet.stdout == ""


def test_the_library_draws_no_progress_bar_into_a_log(tmp_path, capsys):
    """anonymize_video(progress=True), the library default, with stderr redirected: no bar, no escape codes."""
    from vidanon.anonymize import anonymize_video
    from vidanon.config import Config

    clip = synth.make_clip(tmp_path / "a.mp4", width=160, height=120, frames=2, audio=False)
    anonymize_video(clip.path, tmp_path / "out" / "a.mp4", bytes(32),
                    Config(model="testing:gaussian", mask="landmarks", steps=2, device="cpu"), progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b[" not in err and "frame/s" not in err and "it/s" not in err, err
