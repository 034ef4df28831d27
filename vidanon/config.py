"""One frozen config object for a run: defaults, then a YAML file, then command-line flags.

`configs/default.yaml` documents every field below with its default; a test keeps the two in step.
The resolved config is recorded in every manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .device import DEVICES, parse_device
from .errors import InputError


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
_TYPES = {"str": (str,), "int": (int,), "bool": (bool,), "bool | None": (bool, type(None)), "float": (float, int),
          "float | None": (float, int, type(None)), "str | None": (str, type(None))}
_NAMES = {"str": "a string", "int": "a whole number", "bool": "true or false", "bool | None": "true, false or null",
          "float": "a number",
          "float | None": "a number or null", "str | None": "a string or null"}


def speed_only(default):
    """A setting that changes how fast an output is made, never what it holds. Every other field changes the output
    (config.OUTPUT_SETTINGS), so a setting added without thought errs on the side of redoing a file."""
    return field(default=default, metadata={"speed_only": True})


@dataclass(frozen=True)
class Config:
    model: str = "ffhq"  # alias (ffhq, celebahq), hub id owner/repo[/subfolder], local folder, or testing:gaussian
    steps: int = 50  # DDIM steps for inversion and denoising (paper: 50)
    batch_size: int = speed_only(0)  # faces per diffusion batch; 0 = auto (32 on GPU, 4 on CPU)
    device: str = speed_only("auto")  # auto | cpu | cuda | cuda:N
    compile: bool | None = speed_only(None)  # torch.compile the UNet and VQ; None = auto: on a GPU (compiled once per machine), not on a CPU
    detector: str = "centerface"  # centerface (offline, MIT) | scrfd (insightface, non-commercial licence)
    threshold: float | None = None  # detector score threshold; None = the detector's own default
    min_face: int = 20  # smallest face height in pixels the detector is run to find
    floor: float = 0.05  # weak candidates down to this score may continue a tracked face (never start one)
    detect_blur: float = 0.8  # sigma (px) of a Gaussian blur of the detector's input, never of the output; 0 = off
    mask: str = "auto"  # auto (parser if its weights are cached, else landmarks) | parser | landmarks
    parser_weights: str | None = None  # path to BiSeNet face-parsing ONNX; None = user cache / download
    feather: int = 8  # px of soft edge outside the replaced region when pasting back
    max_gap: int = 12  # frames a face may go undetected and still be covered by interpolation
    extend: int = 4  # frames covered before a face's first and after its last detection
    iou_threshold: float = 0.3  # tracker matching threshold
    bridge: int = 75  # frames a track may live on weak candidates alone, before or after its detections
    lossless: bool = False  # lossless RGB H.264 (libx264rgb qp 0) for evidential archives
    crf: int = 17  # H.264 quality when not lossless (17 ≈ visually lossless)
    preset: str = "medium"  # x264 preset
    seal: bool = True  # seal each face's original pixels under its track key (<stem>.vidanon.sealed): exact restoration
    index_identities: bool = False  # seal an identity embedding per track in the manifest, for `vidanon find`
    recognizer: str = "dlib"  # face recognizer of --index-identities and --keep-photo (identity.py)

    def __post_init__(self):
        for f in fields(self):  # YAML gives strings, floats and bools where ints are meant: say so early
            value, accepted = getattr(self, f.name), _TYPES[f.type]
            if isinstance(value, bool) and bool not in accepted or not isinstance(value, accepted):
                raise InputError(f"config: {f.name} must be {_NAMES[f.type]}, got {value!r}")
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 0, "batch_size must be >= 0"),
            (self.mask in ("auto", "parser", "landmarks"), "mask must be auto, parser or landmarks"),
            (0 <= self.crf <= 51, "crf must be in 0..51"),
            (self.min_face >= 8, "min_face must be >= 8"),
            (self.max_gap >= 0 and self.extend >= 0 and self.feather >= 0, "max_gap, extend, feather must be >= 0"),
            (0 < self.iou_threshold < 1, "iou_threshold must be in (0, 1)"),
            (self.threshold is None or 0 < self.threshold < 1, "threshold must be in (0, 1)"),
            (0 < self.floor < 1, "floor must be in (0, 1)"),
            (self.bridge >= 0, "bridge must be >= 0"),
            (self.detect_blur >= 0, "detect_blur must be >= 0"),
            (self.detector in ("centerface", "scrfd"), "detector must be centerface or scrfd"),
            (self.recognizer in ("dlib", "arcface"), "recognizer must be dlib or arcface"),
            (self.preset in X264_PRESETS, f"preset must be one of {', '.join(X264_PRESETS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"config: {message}")
        try:
            parse_device(self.device)
        except InputError:
            raise InputError(f"config: device must be {DEVICES}, got {self.device!r}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in fields(Config)}
# The settings that change what an output holds: every field but the speed-only ones (batch_size, device,
# compile). A rerun redoes a file whose manifest recorded other values.
OUTPUT_SETTINGS = tuple(f.name for f in fields(Config) if not f.metadata.get("speed_only"))

def changed_settings(recorded: dict, cfg: Config) -> list[str]:
    """'name old -> new' for each output-changing setting in which `cfg` differs from the settings a
    manifest recorded. A setting the recorded run did not know had its default then."""
    default, now = Config().to_dict(), cfg.to_dict()
    changes = []
    for name in OUTPUT_SETTINGS:
        if name == "crf" and cfg.lossless:
            continue  # lossless output has no crf
        before = recorded.get(name, default[name])
        if before != now[name]:
            changes.append(f"{name} {before} -> {now[name]}")
    return changes


def load_config(path: str | Path | None = None, **overrides) -> Config:
    """Defaults < YAML file < overrides (None values in overrides mean 'not given')."""
    values: dict = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise InputError(f"{path}: cannot read config ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: config must be a mapping of setting: value")
        unknown = set(loaded) - FIELDS
        if unknown:
            raise InputError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(FIELDS))}")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Config(**values)
    except InputError as e:
        raise InputError(f"{path}: {e}" if path is not None else str(e)) from None


def restore_config(stored: dict, **overrides) -> Config:
    """The settings a video was anonymized with (from its manifest), for restoring it on this machine:
    fields a newer vidanon added are ignored, the device and compiling are this machine's ("auto") unless overridden."""
    known = {k: v for k, v in stored.items() if k in FIELDS}
    return Config(**{**known, "device": "auto", "compile": None, **{k: v for k, v in overrides.items() if v is not None}})
