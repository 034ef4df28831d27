"""Face masks in the aligned crop: where the key flip applies, and how the result is pasted.

* `FaceParser`: BiSeNet face parsing (ONNX, MIT weights from yakhyo/face-parsing),
  keeping the classes the paper's code keeps.
* `landmark_mask`: a weight-free fallback, an ellipse placed from the 5 landmarks.
* `latent_mask`: crop mask -> binary latent mask M (the flip is an involution only for M in {0, 1}).
* `paste_alpha`: M back at crop size, exactly 1 on the flipped region and feathered outside it.
* `face_mask`: the mask policy of a run: the parser's face classes, never less than the landmark template.
"""

from __future__ import annotations

import functools
import http.client
import logging
import math
import os
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from .align import CROP_SIZE
from .atomic import atomic_file
from .device import onnx_providers
from .errors import ModelNotFoundError
from .progress import note
from .weights import vidanon_cache

log = logging.getLogger(__name__)

LATENT_SIZE = 64
# BiSeNet / CelebAMask-HQ ids kept: skin, brows, eyes, glasses, ears, nose, mouth, lips, neck (paper's code).
PARSER_KEEP = (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14)
# Documented in the yakhyo/face-parsing README and download.sh (release tag "weights"; older READMEs
# name the tag "v0.0.1", tried second). Not verifiable offline.
PARSER_URL = "https://github.com/yakhyo/face-parsing/releases/download/weights/resnet18.onnx"
PARSER_URLS = (PARSER_URL, "https://github.com/yakhyo/face-parsing/releases/download/v0.0.1/resnet18.onnx")
PARSER_INPUT = 512
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def landmark_mask(landmarks_crop: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """bool (size, size): forehead-to-chin ellipse from 5 landmarks in crop coordinates.

    Proportions are in units of s = max(eye distance, 0.9 * eye-to-mouth distance)
    (the eye distance for a frontal face; the second term keeps turned heads big
    enough), along and across the eye line.
    """
    lm = np.asarray(landmarks_crop, dtype=np.float64).reshape(5, 2)
    eye_avg = (lm[0] + lm[1]) / 2
    mouth_avg = (lm[3] + lm[4]) / 2
    eye_to_eye = lm[1] - lm[0]
    s = max(math.hypot(*eye_to_eye), 0.9 * math.hypot(*(mouth_avg - eye_avg)), 1.0)
    along = eye_to_eye / max(math.hypot(*eye_to_eye), 1e-6)
    down = np.array([-along[1], along[0]])  # from forehead to chin
    mouth_down = max(float((mouth_avg - eye_avg) @ down), 0.5 * s)
    top, bottom = -0.8 * s, mouth_down + 0.75 * s  # hairline above the eyes, chin below the mouth
    # Centre between eyes and mouth along the eye line (follows a turned head).
    centre = eye_avg + down * (top + bottom) / 2 + along * float((mouth_avg - eye_avg) @ along) / 2
    axes = (0.95 * s, (bottom - top) / 2)
    angle = math.degrees(math.atan2(along[1], along[0]))
    # cv2 draws with integer coordinates; `shift` keeps 1/256 px precision.
    shift = 8
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.ellipse(
        mask,
        tuple(int(round(v * (1 << shift))) for v in centre),
        tuple(int(round(v * (1 << shift))) for v in axes),
        angle, 0, 360, 1, thickness=-1, lineType=cv2.LINE_8, shift=shift,
    )
    return mask.astype(bool)


def latent_mask(mask: np.ndarray, latent_size: int = LATENT_SIZE) -> np.ndarray:
    """(..., size, size) -> (..., latent, latent) float32 in {0, 1}: cell coverage >= 0.5."""
    m = np.asarray(mask, dtype=np.float32)
    size = m.shape[-1]
    if m.ndim < 2 or m.shape[-2] != size or size % latent_size:
        raise ValueError(f"mask of shape {m.shape} is not square with a side divisible by {latent_size}")
    f = size // latent_size
    cells = m.reshape(*m.shape[:-2], latent_size, f, latent_size, f).mean(axis=(-3, -1))
    return (cells >= 0.5).astype(np.float32)


def paste_alpha(mask_latent: np.ndarray, size: int = CROP_SIZE, feather: int = 8) -> np.ndarray:
    """(size, size) float32 alpha: 1 on the flipped region, a smooth ramp to 0 over `feather` px outside it."""
    ml = np.asarray(mask_latent) >= 0.5
    f = size // ml.shape[-1]
    region = np.repeat(np.repeat(ml, f, axis=0), f, axis=1)
    if not region.any():
        return np.zeros((size, size), dtype=np.float32)
    # Euclidean distance of every pixel to the flipped region (0 inside it).
    dist = cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    t = np.clip(1.0 - dist / (feather + 1), 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)  # smoothstep: no visible seam at either end


class FaceParser:
    """BiSeNet face parsing: RGB crops -> bool masks of the PARSER_KEEP classes.

    The yakhyo/face-parsing export takes (B, 3, 512, 512) float32, RGB scaled to
    0..1 then ImageNet mean/std, and its first output is (B, 19, 512, 512) logits.
    """

    def __init__(self, path: str | os.PathLike, providers: list | tuple | None = None):
        import onnxruntime as ort

        self.path = str(path)
        self.session = ort.InferenceSession(self.path, providers=list(providers or ["CPUExecutionProvider"]))
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        classes = out.shape[1] if len(out.shape) == 4 else None
        if len(inp.shape) != 4 or len(out.shape) != 4 or (isinstance(classes, int) and classes != 19):
            raise ValueError(f"input {inp.shape} / output {out.shape} are not BiSeNet's (B,3,512,512) -> (B,19,512,512)")
        self.input_name, self.output_name = inp.name, out.name
        # A model exported with a fixed batch size is fed (zero-padded) chunks of exactly that size.
        self.fixed_batch = isinstance(inp.shape[0], int) and inp.shape[0] > 0
        self.batch = inp.shape[0] if self.fixed_batch else 8  # 8 crops of logits = 160 MB

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        size = crops.shape[1]
        masks = [np.zeros((0, size, size), bool)]  # so that no crops give an empty batch
        for start in range(0, len(crops), self.batch):
            chunk = crops[start : start + self.batch]
            n = len(chunk)
            x = np.stack([cv2.resize(c, (PARSER_INPUT, PARSER_INPUT), interpolation=cv2.INTER_LINEAR) for c in chunk])
            x = ((x.astype(np.float32) / 255.0 - _MEAN) / _STD).transpose(0, 3, 1, 2)
            if self.fixed_batch and n < self.batch:
                x = np.concatenate([x, np.zeros((self.batch - n, *x.shape[1:]), np.float32)])
            logits = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x)})[0][:n]
            keep = np.isin(logits.argmax(axis=1), PARSER_KEEP).astype(np.float32)
            # Back to crop size by area average + majority vote.
            masks.append(np.stack([cv2.resize(k, (size, size), interpolation=cv2.INTER_AREA) >= 0.5 for k in keep]))
        return np.concatenate(masks)


def cache_dir() -> Path:
    """Where downloaded face-parsing weights live (see weights.vidanon_cache)."""
    return vidanon_cache() / "face-parsing"


def _download(url: str, dest: Path) -> None:
    """Fetch url to dest atomically: a partial download never sits under the final name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=60) as response, atomic_file(dest) as f:
        while block := response.read(1 << 20):
            f.write(block)


def load_face_parser(
    path: str | os.PathLike | None = None, *, download: bool = True, providers: list | tuple | None = None
) -> FaceParser | None:
    """The face parser, or None (with a warning) when no weights can be had; callers then use landmark_mask.

    An explicit `path` must load: otherwise ModelNotFoundError naming it.
    """
    if path is not None:
        if not Path(path).is_file():
            raise ModelNotFoundError(f"face-parsing model not found: {path}")
        try:
            return FaceParser(path, providers)
        except Exception as e:  # onnxruntime raises its own, unrelated exception types
            raise ModelNotFoundError(f"{path}: not a usable face-parsing ONNX model ({_first_line(e)})") from e

    cached = cache_dir() / Path(PARSER_URL).name
    if not cached.is_file():
        if not download:
            note(__name__, f"no face-parsing weights in {cached.parent}; using landmark masks "
                           "(`vidanon models pull face-parser` fetches them)")
            return None
        for url in PARSER_URLS:
            try:
                log.info("downloading face-parsing weights from %s", url)
                _download(url, cached)
                break
            except (OSError, http.client.HTTPException, ValueError) as e:
                log.warning("could not download %s (%s)", url, _first_line(e))
        else:
            log.warning("no face-parsing weights; using landmark masks")
            return None
    try:
        return FaceParser(cached, providers)
    except Exception as e:
        log.warning("cached face-parsing weights %s are unusable (%s); removed, using landmark masks", cached, _first_line(e))
        cached.unlink(missing_ok=True)
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def face_mask(crop: np.ndarray, lm_crop: np.ndarray, parser: FaceParser | None) -> tuple[np.ndarray, str]:
    """Latent mask of one aligned face and how it was made: the parser's face classes, never less than the
    landmark template, so a parser that misses part of a blurry, tiny CCTV face cannot leave that part
    un-anonymized."""
    template = landmark_mask(lm_crop)
    if parser is None:
        return latent_mask(template), "landmarks"
    return latent_mask(parser(crop[None].astype(np.uint8))[0] | template), "parser+landmarks"


@functools.lru_cache(maxsize=4)
def face_parser(weights: str | None, download: bool, device: str) -> FaceParser | None:
    """Loaded once per process, not once per file of a folder run. Only `--mask parser` downloads:
    `auto` uses cached weights or none, so a run on an air-gapped CCTV server never reaches out."""
    return load_face_parser(weights, download=download, providers=onnx_providers(device))
