"""Streaming video I/O with PyAV: probe a file, decode its frames, write a re-encoded copy.

Reading streams frames one at a time (the video is never held in memory). Writing keeps
what a viewer or an investigator relies on:

- timing: the output video uses the input's time_base and every frame keeps its input pts,
  so variable frame rate survives and the frame count is unchanged;
- audio, subtitle and data streams: copied packet for packet, never re-encoded;
- container metadata, the video stream's metadata, colour tags and display matrix (rotation).

Output goes to a hidden temporary file beside the destination (atomic.py) and is renamed onto it
only when close() succeeds, so an interrupted run never leaves a half-written file under the
final name. The input is opened read-only and never modified.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.sidedata.sidedata
import numpy as np

from .atomic import commit, temp_beside
from .errors import InputError, VidanonError

log = logging.getLogger(__name__)

# Containers that hold H.264 (also RGB H.264 for lossless mode) and copy most audio codecs.
_KEEP_CONTAINERS = {".mp4", ".m4v", ".mov", ".mkv"}
# Metadata that describes the old file rather than the recording; the muxer writes its own.
_DROP_METADATA = {"major_brand", "minor_version", "compatible_brands", "encoder", "duration",
                  "vidanon_video_id"}  # an anonymized video's own id (binding.py) never passes to another file
# MP4 and QuickTime keep only their own atoms unless asked to write every metadata tag.
_MOV_OPTIONS = {"movflags": "use_metadata_tags"}
# AVColorSpace (stream tag) -> swscale matrix name, so the RGB->YUV conversion matches the tag.
_SWS_MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020"}


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int  # coded size of decoded frames (before any display rotation)
    height: int
    fps: float  # average rate; informational only, never used for timing
    frames: int | None  # frame count from the container, if it stores one
    duration_s: float | None
    time_base: Fraction  # of the video stream
    rotation: int  # counter-clockwise degrees from the display matrix (PyAV's convention)
    has_audio: bool
    codec: str
    display_matrix: tuple[int, ...] | None = None  # the full 3x3 matrix (keeps flips too)
    still: bool = False  # a still image (PNG, JPEG, ... whatever its name), not a video


@dataclass
class Frame:
    index: int  # 0-based decode order
    rgb: np.ndarray  # (H, W, 3) uint8
    pts: int | None
    time_base: Fraction


def _open_input(path: Path) -> av.container.InputContainer:
    """Open `path` for reading or raise InputError naming the file."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    try:
        # Camera metadata is not always valid UTF-8; it must not stop us reading the video.
        container = av.open(str(path), metadata_errors="replace")
    except (av.FFmpegError, OSError) as e:
        raise InputError(f"{path}: not a readable video file ({_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: contains no video stream")
    return container


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e).splitlines()[0]


def _kept(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k.lower() not in _DROP_METADATA}


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe the first video stream of `path`; decodes one frame to prove the file is usable."""
    path = Path(path)
    with _open_input(path) as container:
        stream = container.streams.video[0]
        try:
            first = next(_decode(container, stream), None)
        except av.FFmpegError as e:
            raise InputError(f"{path}: cannot decode the video stream ({_reason(e)})") from None
        if first is None:
            raise InputError(f"{path}: the video stream has no decodable frame")
        matrix = first.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
        if stream.duration is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = None
        return VideoInfo(
            path=path,
            width=first.width,
            height=first.height,
            fps=float(stream.average_rate or stream.guessed_rate or 0),
            frames=stream.frames or None,  # 0 means "not stored" (e.g. Matroska)
            duration_s=duration,
            time_base=stream.time_base,
            rotation=first.rotation,
            has_audio=bool(container.streams.audio),
            codec=stream.codec_context.name,
            display_matrix=struct.unpack("=9i", bytes(matrix)) if matrix is not None else None,
            still=container.format.name == "image2" or container.format.name.endswith("_pipe"),
        )


def probe_input(path: str | os.PathLike, still_images: bool = False) -> VideoInfo:
    """probe(path) of a file to anonymize: a still image named like a video is refused unless `still_images`."""
    info = probe(path)
    if info.still and not still_images:
        raise InputError(f"{path}: is a still image, not a video (whatever its name says); pass --still-images to "
                         "anonymize it as a one-frame video")
    return info


def _decode(container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
    """One demux loop with an explicit flush."""
    for packet in container.demux(stream):
        # Empty packets are PyAV's end-of-stream marker (or empty frames in some containers);
        # sending one would put the decoder into draining mode, so flush once, below.
        if packet.size:
            yield from stream.decode(packet)
    # The decoder holds back the last frames (B-frame reordering, frame threads) until flushed.
    yield from stream.decode(None)


def read_frames(path: str | os.PathLike, info: VideoInfo | None = None) -> Iterator[Frame]:
    """Yield every frame of the first video stream as RGB, in decode order, one at a time."""
    path = Path(path)
    info = info or probe(path)
    index, end = 0, None
    with _open_input(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in _decode(container, stream):
                yield Frame(index, frame.to_ndarray(format="rgb24"), frame.pts, stream.time_base)
                index += 1
                if frame.pts is not None:
                    shown = float((frame.pts + (frame.duration or 0)) * stream.time_base)
                    end = shown if end is None else max(end, shown)
        except av.FFmpegError as e:
            raise InputError(f"{path}: decode error at frame {index} ({_reason(e)})") from None
    # A cut-off file (e.g. an interrupted recording) decodes up to where the data stops.
    if info.frames is not None and index < info.frames:
        log.warning("%s: decoded %d of the %d frames the container lists; the file may be truncated",
                    path, index, info.frames)
    elif info.frames is None and end is not None and info.duration_s and info.duration_s - end > _missing(info):
        # Containers that list no frame count (Matroska, WebM) still record the duration.
        log.warning("%s: decoded %d frames up to %.2f s of the %.2f s the container lists; the file may be truncated",
                    path, index, end, info.duration_s)


def _missing(info: VideoInfo) -> float:
    """How much shorter than the container's duration the decoded video may end (an audio tail, rounding)."""
    return max(0.5, 3 / info.fps) if info.fps else 0.5


def output_suffix(src: str | os.PathLike, lossless: bool = False) -> str:
    """The output extension for `src`: its own when that container holds H.264, else .mkv.

    MP4/MOV/MKV hold both yuv H.264 and lossless RGB H.264 (libx264rgb), so `lossless`
    does not change the answer; it is accepted so callers need not care.
    """
    suffix = Path(src).suffix.lower()
    return suffix if suffix in _KEEP_CONTAINERS else ".mkv"


class VideoWriter:
    """Encode RGB frames into `dst` with the timing, streams and metadata of `src`.

    Default: H.264 (libx264) at `crf` (17 is visually lossless), yuv420p, or yuv444p when
    the width or height is odd (4:2:0 needs even sizes; this keeps the output size equal to
    the input's). `lossless=True`: libx264rgb at qp 0, decoded RGB equals written RGB.
    `private=True` (restored faces): the file is mode 0600 from its creation, not from its rename.
    `tags`: container metadata to add (anonymize writes the video's id there, binding.py).
    `replace=False`: refuse to rename onto an existing `dst` (InputError), with no window for two writers.
    """

    def __init__(self, src: VideoInfo, dst: str | os.PathLike, *, lossless: bool = False,
                 crf: int = 17, preset: str = "medium", private: bool = False, tags: dict[str, str] | None = None,
                 replace: bool = True) -> None:
        self.src, self.dst = src, Path(dst)
        if self.dst.resolve() == src.path.resolve():
            raise VidanonError(f"{self.dst}: the output would overwrite the input")
        try:
            self._tmp = temp_beside(self.dst, 0o600 if private else None)
        except OSError as e:
            raise VidanonError(f"{self.dst}: cannot write this output file ({_reason(e)})") from None
        self._in = self._out = None
        self._frames = self._packets = 0
        self._last_pts: int | None = None
        self._step = 1
        self._done = False
        self._replace = replace
        try:
            self._in = _open_input(src.path)
            mov = self.dst.suffix.lower() in (".mp4", ".m4v", ".mov")
            try:
                self._out = av.open(str(self._tmp), "w", options=dict(_MOV_OPTIONS) if mov else None)
            except (av.FFmpegError, OSError, ValueError) as e:
                raise VidanonError(f"{self.dst}: cannot write this output file ({_reason(e)})") from None
            self._out.metadata.update(_kept(self._in.metadata))
            self._out.metadata.update(tags or {})
            self._setup_video(lossless, crf, preset)
            self._setup_copies()
            try:
                # Write the header now: a stream this container cannot hold fails here, not mid-run.
                self._out.start_encoding()
            except (av.FFmpegError, ValueError) as e:
                raise VidanonError(f"{self.dst}: cannot write this output file ({_reason(e)})") from None
        except BaseException:
            self.abort()
            raise

    def _setup_video(self, lossless: bool, crf: int, preset: str) -> None:
        src_stream = self._in.streams.video[0]
        src_ctx = src_stream.codec_context
        rate = src_stream.average_rate or src_stream.guessed_rate or Fraction(25)
        options = {"qp": "0", "preset": preset} if lossless else {"crf": str(crf), "preset": preset}
        # `rate` is only x264's rate-control hint; timestamps come from the frames.
        v = self._out.add_stream("libx264rgb" if lossless else "libx264", rate=rate, options=options)
        v.width, v.height = self.src.width, self.src.height
        odd = self.src.width % 2 or self.src.height % 2
        v.pix_fmt = "rgb24" if lossless else ("yuv444p" if odd else "yuv420p")
        # Same time base as the input on both the stream and the encoder: pts pass unchanged.
        v.time_base = self.src.time_base
        v.codec_context.time_base = self.src.time_base
        v.metadata.update(_kept(src_stream.metadata))
        if self.src.display_matrix is not None:
            v.set_display_matrix(self.src.display_matrix)
        self._convert: dict = {}
        if not lossless:
            # Encode with the input's YUV matrix and range and tag them, so players show the
            # colours we decoded. Primaries/transfer are not converted, only carried as tags.
            matrix = _SWS_MATRIX.get(src_ctx.colorspace)
            rng = src_ctx.color_range or None
            if matrix is not None:
                v.codec_context.colorspace = src_ctx.colorspace
            if rng is not None:
                v.codec_context.color_range = rng
            v.codec_context.color_primaries = src_ctx.color_primaries
            v.codec_context.color_trc = src_ctx.color_trc
            self._convert = {"format": v.pix_fmt, "dst_colorspace": matrix, "dst_color_range": rng}
        self._video = v

    def _setup_copies(self) -> None:
        """Add one output stream per audio/subtitle/data input stream the container accepts."""
        self._copies: dict[int, av.stream.Stream] = {}
        for s in self._in.streams:
            if s.type not in ("audio", "subtitle", "data"):
                continue
            try:
                out = self._out.add_stream_from_template(s)
            except (ValueError, av.FFmpegError) as e:
                log.warning("%s: stream #%d (%s) is not copied: %s", self.dst, s.index, s.type, e)
                continue
            out.metadata.update(_kept(s.metadata))
            out.disposition = s.disposition
            self._copies[s.index] = out
        # The input opened a second time, as a demuxer of the copied streams only.
        streams = [self._in.streams[i] for i in self._copies]
        self._packets_in = self._in.demux(*streams) if streams else iter(())
        self._pending = self._next_copy()

    def _next_copy(self) -> av.Packet | None:
        for packet in self._packets_in:
            if packet.dts is not None:  # dts None: flush packets (no data to copy)
                return packet
        return None

    def _mux_copies(self, until: Fraction | None) -> None:
        """Mux copied packets whose dts is at or before `until` seconds (all if None)."""
        while self._pending is not None:
            packet = self._pending
            if until is not None and packet.dts * packet.time_base > until:
                return
            packet.stream = self._copies[packet.stream.index]  # re-tag; mux() rescales the time
            self._out.mux(packet)
            self._pending = self._next_copy()

    def write(self, rgb: np.ndarray, pts: int | None) -> None:
        """Encode one (H, W, 3) uint8 RGB frame shown at `pts` (in the input's time_base)."""
        if rgb.shape != (self.src.height, self.src.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"expected ({self.src.height}, {self.src.width}, 3) uint8, "
                             f"got {rgb.shape} {rgb.dtype}")
        if pts is None:  # rare (raw streams): continue the last spacing rather than invent a rate
            pts = 0 if self._last_pts is None else self._last_pts + self._step
        elif self._last_pts is not None and pts > self._last_pts:
            self._step = pts - self._last_pts
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if self._convert:
            frame = frame.reformat(**self._convert)
        frame.pts = pts
        # The input's time base, not self._video.time_base: the muxer may change the latter.
        frame.time_base = self.src.time_base
        self._last_pts = pts
        try:
            self._mux_copies(until=pts * self.src.time_base)
            self._mux_video(frame)
        except av.FFmpegError as e:
            raise VidanonError(f"{self.dst}: cannot write frame {self._frames} ({_reason(e)})") from None
        self._frames += 1

    def _mux_video(self, frame: av.VideoFrame | None) -> None:
        packets = self._video.encode(frame)
        self._packets += len(packets)
        self._out.mux(packets)

    def close(self) -> None:
        """Flush the encoder, copy the remaining packets, and move the file onto `dst`."""
        if self._done:
            return
        try:
            if self._frames == 0:
                raise VidanonError(f"{self.dst}: no frames were written")
            self._mux_video(None)  # flush: x264 holds back frames for lookahead/B-frames
            self._mux_copies(until=None)
            if self._packets != self._frames:
                raise VidanonError(f"{self.dst}: encoder wrote {self._packets} frames "
                                   f"for {self._frames} given")
            self._out.close()
            self._in.close()
            try:
                commit(self._tmp, self.dst, replace=self._replace)
            except FileExistsError:
                raise InputError(f"{self.dst}: already exists (written meanwhile by another run); not replaced") from None
            self._done = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close everything and delete the temporary file; `dst` is left untouched."""
        self._done = True
        for container in (self._out, self._in):
            if container is not None:
                try:
                    container.close()
                except Exception:  # already failing; the temp file goes anyway
                    pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
