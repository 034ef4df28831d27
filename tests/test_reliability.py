"""Nothing silently wrong (docs/reliability.md): a manifest bound to its video, restoring safe under
concurrency and crashes, every bad input and OS error answered in one line that names the file."""

import errno
import json
import logging
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import synth

from vidanon import binding, cli, folder_run, keys, restore
from vidanon.anonymize import anonymize_video
from vidanon.atomic import stale_temps
from vidanon.config import Config
from vidanon.errors import InputError, KeyFileError
from vidanon.manifest import FaceLog, inspect_video, manifest_path
from vidanon.sealed import sidecar_path
from vidanon.video import probe, read_frames

MASTER = bytes(range(32))
# 10 steps: at 2 the closed-form model's anonymizations differ too little to tell apart (docs/benchmarks.md, "Binding")
CFG = Config(model="testing:gaussian", mask="landmarks", device="cpu", steps=10)


def release(folder: Path, video: Path, manifest_from: Path | None = None) -> Path:
    """`video` in its own folder with the manifest and sidecar of `manifest_from` (default: its own)."""
    folder.mkdir(parents=True)
    src = manifest_from or video
    shutil.copy(video, folder / "cam.mp4")
    shutil.copy(manifest_path(src), folder / "cam.vidanon.json")
    shutil.copy(sidecar_path(src), folder / "cam.vidanon.sealed")
    return folder / "cam.mp4"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One input with two faces, anonymized twice (two video_ids: two anonymizations of the same recording)."""
    work = tmp_path_factory.mktemp("bind")
    w, h, end = 480, 270, 3
    movers = [synth.Mover(synth.astronaut_sprite(110), [(0, 130, 135), (end, 140, 138)]),
              synth.Mover(synth.t1_sprite(1, 80), [(0, 340, 120), (end, 330, 125)])]
    clip = synth.make_clip(work / "cam.mp4", width=w, height=h, frames=end + 1, sprites=movers, lossless=False, audio=False)
    a = anonymize_video(clip.path, work / "a" / "cam.mp4", MASTER, CFG, progress=False).output
    b = anonymize_video(clip.path, work / "b" / "cam.mp4", MASTER, CFG, progress=False).output
    return work, clip, a, b


# --- item 2: the manifest is bound to its video ------------------------------------------------


def test_the_video_carries_its_id_and_each_face_its_fingerprint(made, tmp_path):
    work, clip, a, _ = made
    man = inspect_video(a)
    assert binding.container_tag(a) == man.video_id.hex()
    assert man.header.binding.container_tag == binding.TAG and man.header.binding.fingerprint == binding.KIND
    assert all(f.fingerprint for t in man.tracks for f in t.faces)
    # Matroska keeps it too (its tags come back upper-cased)
    mkv = anonymize_video(clip.path, tmp_path / "cam.mkv", MASTER, CFG, progress=False).output
    assert binding.container_tag(mkv) == inspect_video(mkv).video_id.hex()
    # a restored video does not pass the anonymized video's id on
    restored = restore.deanonymize_video(a, tmp_path / "r" / "cam.mp4", MASTER, progress=False)
    assert binding.container_tag(restored.output) is None


@pytest.mark.parametrize("method", ["sealed", "flip"])
def test_the_manifest_of_another_anonymization_is_refused_before_anything_is_written(made, tmp_path, method):
    work, clip, a, b = made
    video = release(tmp_path / "swapped", a, manifest_from=b)  # a's video, b's manifest and sidecar
    dst = tmp_path / "out" / "cam.mp4"
    with pytest.raises(InputError, match="belongs to another video, or to another anonymization"):
        restore.deanonymize_video(video, dst, MASTER, progress=False, method=method)
    assert not dst.parent.exists()


def test_without_the_container_tag_the_fingerprints_tell(made, tmp_path):
    work, clip, a, b = made
    # b's video stripped of its metadata (re-encoded at crf 0: its pixels all but kept), beside a's manifest
    stripped = synth.reencode(b, tmp_path / "b.mp4", 0)
    assert binding.container_tag(stripped) is None
    video = release(tmp_path / "swapped", stripped, manifest_from=a)
    dst = tmp_path / "out" / "cam.mp4"
    with pytest.raises(InputError, match="its faces do not match its manifest"):
        restore.deanonymize_video(video, dst, MASTER, progress=False)
    # another recording of the same size and length, even with a's id forged into its metadata
    other = synth.make_clip(tmp_path / "rec2.mp4", width=480, height=270, frames=4, lossless=False, audio=False)
    elsewhere = anonymize_video(other.path, tmp_path / "e" / "cam.mp4", MASTER, CFG, progress=False).output
    forged = synth.reencode(elsewhere, tmp_path / "forged.mp4", 17, tags={binding.TAG: inspect_video(a).video_id.hex()})
    video = release(tmp_path / "forged", forged, manifest_from=a)
    with pytest.raises(InputError, match="its faces do not match its manifest"):
        restore.deanonymize_video(video, dst, MASTER, progress=False)
    assert not dst.parent.exists()


@pytest.mark.parametrize("crf, keep_tag, expected", [(35, True, "it was re-encoded"),
                                                     (23, False, "its metadata was stripped")])
def test_a_reencoded_video_restores_with_a_warning(made, tmp_path, caplog, crf, keep_tag, expected):
    work, clip, a, _ = made
    tags = {binding.TAG: inspect_video(a).video_id.hex()} if keep_tag else None
    video = release(tmp_path / "re", synth.reencode(a, tmp_path / "re.mp4", crf, tags), manifest_from=a)
    with caplog.at_level(logging.WARNING, logger="vidanon"):
        result = restore.deanonymize_video(video, tmp_path / "out" / "cam.mp4", MASTER, progress=False, method="flip")
    assert result.frames == clip.frames
    assert any(expected in r.message and "key-flip restoration will be approximate" in r.message for r in caplog.records)
    # sealed originals: still exact in their pixels, and the warning says so
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vidanon"):
        restore.deanonymize_video(video, tmp_path / "out2" / "cam.mp4", MASTER, progress=False)
    assert any("sealed originals are put back exactly" in r.message for r in caplog.records)


def test_a_cut_video_is_refused(made, tmp_path):
    work, clip, a, _ = made
    video = release(tmp_path / "cut", synth.reencode(a, tmp_path / "cut.mp4", 17, frames=2), manifest_from=a)
    with pytest.raises(InputError, match="re-encoded, resized or cut"):
        restore.deanonymize_video(video, tmp_path / "out" / "cam.mp4", MASTER, progress=False)
    assert not (tmp_path / "out").exists()


def test_the_video_as_written_restores_without_a_warning(made, tmp_path, caplog):
    work, clip, a, _ = made
    with caplog.at_level(logging.WARNING, logger="vidanon"):
        restore.deanonymize_video(a, tmp_path / "out" / "cam.mp4", MASTER, progress=False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- items 1 and 4: concurrent restores, private from the start -------------------------------


def test_a_second_restore_into_the_same_output_is_refused_while_the_first_is_held(made, tmp_path, monkeypatch):
    work, clip, a, _ = made
    man = inspect_video(a)
    t0, t1 = (keys.TrackKey(man.video_id, t.id, keys.track_key(MASTER, man.video_id, t.id)) for t in man.tracks)
    held, go = threading.Event(), threading.Event()
    real = restore.read_frames

    def paused(*args, **kw):  # the first run stops after its first frame, until told to go on
        for i, frame in enumerate(real(*args, **kw)):
            yield frame
            if i == 0 and not held.is_set():
                held.set()
                assert go.wait(60)

    monkeypatch.setattr(restore, "read_frames", paused)
    dst = tmp_path / "out" / "cam.mp4"
    first: dict = {}
    thread = threading.Thread(target=lambda: first.update(r=restore.deanonymize_video(a, dst, t0, progress=False)))
    thread.start()
    try:
        assert held.wait(60)
        # item 4: what is being written holds real faces: readable by its owner only, from its creation
        temps = stale_temps(dst)
        assert len(temps) == 1 and temps[0].stat().st_mode & 0o077 == 0
        with pytest.raises(InputError, match="another vidanon run is writing this output"):
            restore.deanonymize_video(a, dst, t1, progress=False)
        with pytest.raises(InputError, match="another vidanon run is writing this output"):
            restore.deanonymize_video(a, dst, t1, progress=False, overwrite=True)
    finally:
        go.set()
        thread.join(60)
    assert first["r"].tracks == 1 and dst.stat().st_mode & 0o077 == 0
    # the output holds the first run's track: its faces restored, the other track's still anonymized
    back, anon, orig = (read_frames(p) for p in (dst, a, clip.path))
    f0 = next(t for t in man.tracks if t.id == t0.track_id).faces[0]
    x0, y0, x1, y1 = (int(v) for v in f0.box)
    b, n, o = (next(iter(f)).rgb[y0:y1, x0:x1].astype(int) for f in (back, anon, orig))
    assert np.abs(b - o).mean() < 0.3 * np.abs(n - o).mean()
    with pytest.raises(InputError, match="already exists"):  # once done, a new run is refused as before
        restore.deanonymize_video(a, dst, t1, progress=False)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["cam.mp4"]  # no lock, no temporary file left


def test_keygen_killed_while_writing_leaves_no_key_file(tmp_path, monkeypatch):
    import os

    def killed(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        keys.save_master_key(tmp_path / "m.key", keys.generate_master_key())
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert cli.main(["keygen", "-o", str(tmp_path / "m.key")]) == 0  # nothing blocks the next keygen
    assert (tmp_path / "m.key").stat().st_mode & 0o777 == 0o600


# --- item 3: inspect never says "verified" without a key --------------------------------------


def test_inspect_says_authenticity_needs_the_key(made, capsys):
    work, clip, a, _ = made
    assert cli.main(["inspect", str(a)]) == 0
    out = capsys.readouterr().out
    assert "authenticity needs the key" in out and "verified" not in out
    assert cli.main(["inspect", str(a), "--json"]) == 0
    assert "authenticity needs the key" in json.loads(capsys.readouterr().out)["checked"]


# --- item 5: an unreadable folder is a failure, not a silence ---------------------------------


def test_an_unreadable_input_folder_is_reported_as_failed(tmp_path, monkeypatch):
    import os

    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    synth.no_face_clip(src / "a.mp4", frames=2)
    real = os.scandir

    def scandir(path="."):  # what a folder without read permission does (the tests may run as root)
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    jobs = folder_run.plan([src], tmp_path / "out")
    failed = [j for j in jobs if j.status == "failed"]
    assert len(failed) == 1 and failed[0].input == src / "locked"
    assert failed[0].reason == f"{src / 'locked'}: cannot read this folder (Permission denied)"
    report = folder_run.Report(jobs)
    assert report.exit_code == 1 and "locked" in report.summary()


# --- item 6: errors early, and OS errors in one line naming the file --------------------------


def test_an_unwritable_report_fails_before_any_work(tmp_path, capsys):
    key = tmp_path / "m.key"
    keys.save_master_key(key, MASTER)
    synth.no_face_clip(tmp_path / "a.mp4", frames=2)
    code = cli.main(["anonymize", str(tmp_path / "a.mp4"), "-o", str(tmp_path / "out"), "--key-file", str(key),
                     "--model", "testing:gaussian", "--report", "/sys/vidanon-report.json"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "vidanon: error: /sys/vidanon-report.json: cannot write the report there (Permission denied)"
    assert not (tmp_path / "out").exists()


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    def full(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write to an unnamed temporary file raises it

    monkeypatch.setattr(FaceLog, "add", full)
    (tmp_path / "in").mkdir()
    synth.make_clip(tmp_path / "in" / "a.mp4", width=320, height=240, frames=2, audio=False)
    jobs = folder_run.plan([tmp_path / "in"], tmp_path / "out")
    folder_run.run_batch(jobs, MASTER, Config(model="testing:gaussian", mask="landmarks", device="cpu", steps=2),
                         progress=False)
    assert jobs[0].status == "failed"
    assert jobs[0].reason == f"{tmp_path / 'out' / 'a.mp4'}: No space left on device"
    # and from the command line (here: restoring), one line, no traceback
    monkeypatch.undo()
    a = anonymize_video(tmp_path / "in" / "a.mp4", tmp_path / "anon" / "a.mp4", MASTER, CFG, progress=False)
    monkeypatch.setattr(restore, "restore_sealed", lambda *a: full(None))
    key = tmp_path / "m.key"
    keys.save_master_key(key, MASTER)
    assert cli.main(["deanonymize", str(a.output), "-o", str(tmp_path / "r"), "--key-file", str(key)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"vidanon: error: {tmp_path / 'r'}: No space left on device"]


# --- item 7: messages that say what is wrong ---------------------------------------------------


def test_binary_and_bom_key_files_are_not_vidanon_key_files(tmp_path):
    line = (tmp_path / "k").as_posix()
    keys.save_master_key(line, MASTER)
    text = Path(line).read_bytes()
    for name, data in (("raw.key", bytes(range(200, 232))), ("bom.key", b"\xef\xbb\xbf" + text), ("utf16.key", b"\xff\xfe" + text)):
        p = tmp_path / name
        p.write_bytes(data)
        p.chmod(0o600)
        with pytest.raises(KeyFileError, match="not a vidanon key file") as e:
            keys.load_key(p)
        assert "codec" not in str(e.value)


# --- item 8: truncated Matroska warns; a still image is not a video ----------------------------


def test_a_truncated_mkv_warns_like_a_truncated_mp4(tmp_path, caplog):
    clip = synth.make_clip(tmp_path / "c.mkv", width=160, height=120, frames=30)
    data = clip.path.read_bytes()
    (tmp_path / "t.mkv").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="vidanon"):
        assert len(list(read_frames(clip.path))) == 30
        assert not caplog.records  # the whole file: no warning
        n = len(list(read_frames(tmp_path / "t.mkv")))
    assert 0 < n < 30 and any("may be truncated" in r.message for r in caplog.records)


def test_a_truncation_warning_shows_with_q(tmp_path, capsys):
    clip = synth.make_clip(tmp_path / "c.mkv", width=160, height=120, frames=30, audio=False)
    data = clip.path.read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "t.mkv").write_bytes(data[: len(data) // 2])
    key = tmp_path / "m.key"
    keys.save_master_key(key, MASTER)
    code = cli.main(["anonymize", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--key-file", str(key), "-q",
                     "--model", "testing:gaussian", "--mask", "landmarks", "--steps", "2", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0 and captured.out == ""
    assert "t.mkv: decoded" in captured.err and "may be truncated" in captured.err


def test_a_still_image_named_mp4_is_refused_unless_asked(tmp_path):
    rgb = synth.background(160, 120)
    cv2.imwrite(str(tmp_path / "photo.png"), rgb[..., ::-1])
    shutil.copy(tmp_path / "photo.png", tmp_path / "photo.mp4")
    assert probe(tmp_path / "photo.mp4").still
    with pytest.raises(InputError, match="is a still image, not a video"):
        anonymize_video(tmp_path / "photo.mp4", tmp_path / "out" / "photo.mp4", MASTER, CFG, progress=False)
    assert not (tmp_path / "out").exists()
    done = anonymize_video(tmp_path / "photo.mp4", tmp_path / "out" / "photo.mp4", MASTER,
                           Config(model="testing:gaussian", mask="landmarks", device="cpu", steps=2), progress=False,
                           still_images=True)
    assert done.frames == 1
    assert not probe(synth.no_face_clip(tmp_path / "v.mp4", frames=2).path).still


def test_refusing_to_replace_works_without_hard_links(tmp_path, monkeypatch):
    """Outputs that must not replace a finished file (keys, restores without --overwrite) are renamed by a hard
    link where the file system has them; a USB stick's exFAT has none, and still gets the file."""
    import os

    from vidanon.atomic import write_atomic

    def no_links(src, dst):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), src)

    monkeypatch.setattr(os, "link", no_links)
    write_atomic(tmp_path / "k", b"one", replace=False)
    with pytest.raises(FileExistsError):
        write_atomic(tmp_path / "k", b"two", replace=False)
    assert (tmp_path / "k").read_bytes() == b"one" and os.listdir(tmp_path) == ["k"]
