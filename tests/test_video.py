"""Tests for vidanon.video: clips are generated with PyAV in tmp_path at test time."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vidanon.atomic import stale_temps
from vidanon.errors import InputError, VidanonError
from vidanon.video import VideoInfo, VideoWriter, output_suffix, probe, read_frames

TB = Fraction(1, 1000)
SR = 16000  # audio sample rate


def pattern(i: int, w: int, h: int) -> np.ndarray:
    """A smooth gradient with a square moving across it: frame i, RGB uint8."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                    np.full_like(xx, (40 + 9 * i) % 256)], axis=-1).astype(np.uint8)
    x0, y0 = (3 * i) % (w - 8), (2 * i) % (h - 8)
    img[y0:y0 + 8, x0:x0 + 8] = (250, 30, 30)
    return img


def make_clip(path: Path, w: int = 64, h: int = 48, pts: list[int] | None = None, audio: bool = True,
              rotation: int | None = None, metadata: dict | None = None,
              options: dict | None = None, full_range_709: bool = False) -> Path:
    """Write an H.264 clip (time_base 1/1000, frames at `pts`) with an optional AAC sine track."""
    pts = pts if pts is not None else [40 * i for i in range(20)]
    with av.open(str(path), "w", options=options or {}) as c:
        c.metadata.update(metadata or {})
        v = c.add_stream("libx264", rate=25)
        v.width, v.height = w, h
        v.pix_fmt = "yuv444p" if w % 2 or h % 2 else "yuv420p"
        v.time_base = v.codec_context.time_base = TB
        if full_range_709:  # as many IP cameras tag their H.264
            v.codec_context.colorspace = v.codec_context.color_primaries = v.codec_context.color_trc = 1
            v.codec_context.color_range = 2
        if rotation is not None:
            v.set_display_rotation(rotation)
        a = c.add_stream("aac", rate=SR, layout="mono") if audio else None
        wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SR * 3) / SR)).astype(np.float32)
        n_audio = 0
        for i, p in enumerate(pts):
            f = av.VideoFrame.from_ndarray(pattern(i, w, h), format="rgb24")
            if full_range_709:
                f = f.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="JPEG")
            f.pts, f.time_base = p, TB
            c.mux(v.encode(f))
            while a is not None and n_audio * 1024 < (p + 40) * SR // 1000:  # audio up to this frame's end
                af = av.AudioFrame.from_ndarray(wave[None, n_audio * 1024:(n_audio + 1) * 1024],
                                                format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = SR, n_audio * 1024, Fraction(1, SR)
                c.mux(a.encode(af))
                n_audio += 1
        c.mux(v.encode())
        if a is not None:
            c.mux(a.encode())
    return path


def audio_packets(path: Path) -> list[tuple[bytes, int]]:
    with av.open(str(path)) as c:
        return [(bytes(p), p.pts) for p in c.demux(c.streams.audio[0]) if p.dts is not None]


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def transcode(src: Path, dst: Path, edit=None, **kw) -> tuple[VideoInfo, list]:
    """Read src, optionally edit each frame, write dst; returns (input info, [(rgb written, pts)])."""
    info = probe(src)
    written = []
    with VideoWriter(info, dst, **kw) as w:
        for f in read_frames(src, info):
            rgb = edit(f.rgb) if edit else f.rgb
            w.write(rgb, f.pts)
            written.append((rgb, f.pts))
    return info, written


def invert_box(rgb: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    out[5:20, 7:30] = 255 - out[5:20, 7:30]  # an "anonymized face": the writer must keep exactly this
    return out


def test_lossless_round_trip_is_bit_exact_and_keeps_timing_audio_metadata(tmp_path):
    meta = {"title": "cam 3", "creation_time": "2024-05-01T10:00:00Z"}
    src = make_clip(tmp_path / "cam.mp4", metadata=meta)
    before = fingerprint(src)
    dst = tmp_path / "out.mp4"
    info, written = transcode(src, dst, edit=invert_box, lossless=True)

    out_frames = list(read_frames(dst))
    assert len(out_frames) == len(written) == info.frames == 20
    for (rgb, _), f in zip(written, out_frames):
        assert np.array_equal(f.rgb, rgb)
    out_info = probe(dst)
    assert out_info.time_base == info.time_base
    assert [f.pts for f in out_frames] == [p for _, p in written]
    assert out_info.frames == info.frames and out_info.has_audio

    src_audio, dst_audio = audio_packets(src), audio_packets(dst)
    assert len(src_audio) > 10 and dst_audio == src_audio  # bytes and pts of every AAC packet

    with av.open(str(dst)) as c:
        assert c.metadata["title"] == "cam 3"
        assert c.metadata["creation_time"].startswith("2024-05-01T10:00:00")
    assert fingerprint(src) == before  # the input is never modified
    assert not list(tmp_path.glob(".*partial*"))


def test_h264_is_visually_lossless_and_keeps_frames(tmp_path):
    src = make_clip(tmp_path / "cam.mkv", w=160, h=120)
    dst = tmp_path / "out.mkv"
    info, written = transcode(src, dst)  # default: libx264 crf 17 yuv420p
    out_frames = list(read_frames(dst))
    assert len(out_frames) == len(written) == 20
    assert [f.pts for f in out_frames] == [p for _, p in written]
    worst = min(psnr(f.rgb, rgb) for (rgb, _), f in zip(written, out_frames))
    assert worst >= 40, worst
    with av.open(str(dst)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.name, v.codec_context.pix_fmt) == ("h264", "yuv420p")


def color_tags(path: Path) -> tuple[int, int, int, int]:
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        return cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc


def test_colour_tags_follow_the_input(tmp_path):
    src = make_clip(tmp_path / "cam.mp4", w=160, h=120, full_range_709=True, audio=False)
    assert color_tags(src) == (1, 2, 1, 1)
    # read_frames honours the tags: the decoded frames match what the clip was made from.
    assert min(psnr(f.rgb, pattern(f.index, 160, 120)) for f in read_frames(src)) >= 35
    dst = tmp_path / "out.mp4"
    _, written = transcode(src, dst)
    assert color_tags(dst) == color_tags(src)
    assert min(psnr(f.rgb, rgb) for (rgb, _), f in zip(written, read_frames(dst))) >= 40


def test_odd_frame_size_keeps_size(tmp_path):
    src = make_clip(tmp_path / "odd.mp4", w=641, h=361, pts=[0, 40, 80], audio=False)
    dst = tmp_path / "out.mp4"
    _, written = transcode(src, dst)
    out = probe(dst)
    assert (out.width, out.height) == (641, 361)
    out_frames = list(read_frames(dst))
    assert len(out_frames) == 3
    assert min(psnr(f.rgb, rgb) for (rgb, _), f in zip(written, out_frames)) >= 40


@pytest.mark.parametrize("src_suffix,dst_suffix", [(".mkv", ".mkv"), (".mp4", ".mp4"), (".mkv", ".mp4")])
def test_variable_frame_rate_survives(tmp_path, src_suffix, dst_suffix):
    # mkv -> mp4: the muxer picks another time base for the output (1/16000); times must not move.
    irregular = [0, 40, 80, 200, 210, 400, 1000, 1033, 1500]
    src = make_clip(tmp_path / f"vfr{src_suffix}", pts=irregular)
    dst = tmp_path / f"out{dst_suffix}"
    transcode(src, dst)
    seconds = [f.pts * f.time_base for f in read_frames(dst)]
    assert seconds == [Fraction(p, 1000) for p in irregular]


def test_clip_without_audio(tmp_path):
    src = make_clip(tmp_path / "silent.mp4", audio=False)
    assert not probe(src).has_audio
    dst = tmp_path / "out.mp4"
    transcode(src, dst, lossless=True)
    info = probe(dst)
    assert not info.has_audio and info.frames == 20


def test_rotation_is_kept(tmp_path):
    src = make_clip(tmp_path / "rot.mp4", rotation=90, audio=False, pts=[0, 40, 80])
    info = probe(src)
    assert info.rotation == 90 and (info.width, info.height) == (64, 48)  # frames stay coded size
    for name in ("out.mp4", "out.mkv"):
        transcode(src, tmp_path / name)
        out = probe(tmp_path / name)
        assert out.rotation == 90 and out.display_matrix == info.display_matrix


def test_probe_reports_stream_facts(tmp_path):
    info = probe(make_clip(tmp_path / "cam.mp4"))
    assert (info.width, info.height, info.frames, info.codec) == (64, 48, 20, "h264")
    assert info.has_audio and info.rotation == 0 and info.display_matrix is None
    assert info.fps == pytest.approx(25) and info.duration_s == pytest.approx(0.8)


def _zero_byte(p: Path) -> None:
    p.write_bytes(b"")


def _text(p: Path) -> None:
    p.write_text("this is not a video\n" * 50)


def _truncated(p: Path) -> None:
    make_clip(p)  # moov is written at the end, so half the file has none
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _audio_only(p: Path) -> None:
    with av.open(str(p), "w") as c:
        a = c.add_stream("aac", rate=SR, layout="mono")
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts, af.time_base = SR, 0, Fraction(1, SR)
        c.mux(a.encode(af))
        c.mux(a.encode())


@pytest.mark.parametrize("make,problem", [
    (None, "no such file"),
    (_zero_byte, "empty"),
    (_text, "not a readable video"),
    (_truncated, "not a readable video"),
    (_audio_only, "no video stream"),
])
def test_probe_errors_name_the_file(tmp_path, make, problem):
    path = tmp_path / "clip_under_test.mp4"
    if make is not None:
        make(path)
        before = fingerprint(path)
    with pytest.raises(InputError) as err:
        probe(path)
    message = str(err.value)
    assert "clip_under_test.mp4" in message and problem in message and "\n" not in message
    with pytest.raises(InputError):
        next(read_frames(path))
    if make is not None:
        assert fingerprint(path) == before


def test_truncated_faststart_mp4_reads_what_is_there(tmp_path, caplog):
    # With moov first, a cut-off recording still opens; the frames present are decoded.
    path = make_clip(tmp_path / "cut.mp4", options={"movflags": "faststart"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with caplog.at_level(logging.WARNING, logger="vidanon.video"):
        n = sum(1 for _ in read_frames(path))
    assert 0 < n < 20
    assert "truncated" in caplog.text and "cut.mp4" in caplog.text


def test_decode_error_mid_file_names_file_and_frame(tmp_path):
    path = make_clip(tmp_path / "broken.mp4", audio=False)
    with av.open(str(path)) as c:
        pos = [p.pos for p in c.demux(video=0) if p.size][12]
    data = bytearray(path.read_bytes())
    data[pos:pos + 4] = b"\xff\xff\xff\xff"  # an impossible NAL length inside packet 12
    path.write_bytes(bytes(data))
    assert probe(path).frames == 20  # the container is intact; only one packet is bad
    with pytest.raises(InputError, match=r"broken\.mp4: decode error at frame \d+"):
        for _ in read_frames(path):
            pass


@pytest.mark.parametrize("existing", [False, True])
def test_exception_inside_writer_leaves_nothing(tmp_path, existing):
    src = make_clip(tmp_path / "cam.mp4")
    dst = tmp_path / "out.mp4"
    if existing:
        dst.write_bytes(b"previous result")
    info = probe(src)
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(info, dst) as w:
            for f in read_frames(src, info):
                w.write(f.rgb, f.pts)
                if f.index == 5:
                    raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["cam.mp4", "out.mp4"] if existing else ["cam.mp4"])
    if existing:
        assert dst.read_bytes() == b"previous result"


def test_abort_deletes_temp_and_writer_checks_input(tmp_path):
    src = make_clip(tmp_path / "cam.mp4", audio=False, pts=[0, 40])
    info = probe(src)
    w = VideoWriter(info, tmp_path / "out.mp4")
    w.write(pattern(0, 64, 48), 0)
    temp = stale_temps(tmp_path / "out.mp4")  # a hidden temp name while writing
    assert [p.name[:9] for p in temp] == [".out.mp4."] and temp[0].name.endswith(".partial.mp4")
    assert temp[0].stat().st_mode & 0o777 != 0o600  # an ordinary output follows the umask
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.mp4"]

    # A private output (restored faces) is never readable by others, not even before its rename.
    w = VideoWriter(info, tmp_path / "restored.mp4", private=True)
    w.write(pattern(0, 64, 48), 0)
    assert stale_temps(tmp_path / "restored.mp4")[0].stat().st_mode & 0o777 == 0o600
    w.close()
    assert (tmp_path / "restored.mp4").stat().st_mode & 0o777 == 0o600
    (tmp_path / "restored.mp4").unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.mp4"]

    with pytest.raises(VidanonError, match="overwrite the input"):
        VideoWriter(info, src)
    with pytest.raises(ValueError, match="expected"), VideoWriter(info, tmp_path / "x.mp4") as w:
        w.write(np.zeros((48, 64), np.uint8), 0)
    with pytest.raises(VidanonError, match="no frames"), VideoWriter(info, tmp_path / "x.mp4"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.mp4"]


def test_output_suffix():
    assert output_suffix(Path("a/cam.MP4"), lossless=False) == ".mp4"
    assert output_suffix(Path("cam.mov"), lossless=True) == ".mov"
    assert output_suffix(Path("cam.avi"), lossless=False) == ".mkv"
    assert output_suffix(Path("cam.ts"), lossless=True) == ".mkv"


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not on PATH")
def test_frame_count_matches_ffprobe(tmp_path):
    src = make_clip(tmp_path / "vfr.mkv", pts=[0, 40, 80, 200, 210, 400])
    dst = tmp_path / "out.mkv"
    transcode(src, dst)
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(dst)],
                         capture_output=True, text=True, check=True).stdout
    assert int(out.strip()) == 6
