"""Face masks: landmark fallback, latent mask, paste alpha, and the ONNX face parser on a model built here."""


import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vidanon import masks
from vidanon.align import CROP_SIZE, ffhq_affine, landmarks_in_crop
from vidanon.errors import ModelNotFoundError
from vidanon.masks import (
    PARSER_KEEP,
    FaceParser,
    landmark_mask,
    latent_mask,
    load_face_parser,
    paste_alpha,
)
from vidanon.progress import NOTE

# The astronaut's face in skimage.data.astronaut(), as CenterFace finds it (insightface order).
ASTRONAUT = np.array([[203.15, 101.68], [247.01, 104.51], [223.26, 125.08], [203.38, 142.33], [241.33, 144.42]])


def test_landmark_mask_covers_the_face_and_not_the_background():
    lm = landmarks_in_crop(ASTRONAUT, ffhq_affine(ASTRONAUT))
    mask = landmark_mask(lm)
    assert mask.shape == (CROP_SIZE, CROP_SIZE) and mask.dtype == bool
    eye_l, eye_r, nose, mouth_l, mouth_r = lm
    s = np.hypot(*(eye_r - eye_l))
    up, side = np.array([0.0, -1.0]), np.array([1.0, 0.0])  # the crop is upright
    must = [
        *lm,
        eye_l + 0.35 * s * up, eye_r + 0.35 * s * up,  # brows
        eye_l - 0.3 * s * side, eye_r + 0.3 * s * side,  # outer eye corners
        (eye_l + mouth_l) / 2 - 0.25 * s * side, (eye_r + mouth_r) / 2 + 0.25 * s * side,  # cheeks
        (mouth_l + mouth_r) / 2 - 0.6 * s * up,  # chin
    ]
    for x, y in np.round(must).astype(int):
        assert mask[y, x], (x, y)
    assert not mask[:30].any() and not mask[:, :40].any() and not mask[:, -40:].any()  # hair top, background sides
    assert 0.15 < mask.mean() < 0.4


def test_landmark_mask_turns_with_the_face():
    lm = landmarks_in_crop(ASTRONAUT, ffhq_affine(ASTRONAUT))
    rot = cv2.getRotationMatrix2D((127.5, 127.5), 40, 1.0)
    turned = landmark_mask(lm @ rot[:, :2].T + rot[:, 2])
    expected = cv2.warpAffine(landmark_mask(lm).astype(np.uint8), rot, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_NEAREST) > 0
    assert (turned & expected).sum() / (turned | expected).sum() > 0.97
    assert (turned != landmark_mask(lm)).mean() > 0.02


def test_latent_mask_is_binary_area_majority():
    mask = np.zeros((2, CROP_SIZE, CROP_SIZE), bool)
    mask[0, :4, :2] = True  # cell (0, 0) exactly half covered -> 1
    mask[0, 4:7, 4:8] = True  # cell (1, 1): 12 of 16 -> 1, cell (1, 0) untouched
    mask[0, 8:12, 8:10] = True  # cell (2, 2): 8 of 16 -> 1
    mask[0, 12:15, 12:14] = True  # cell (3, 3): 6 of 16 -> 0
    mask[1] = True
    m = latent_mask(mask)
    assert m.shape == (2, 64, 64) and m.dtype == np.float32
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert m[0, 0, 0] == 1 and m[0, 1, 1] == 1 and m[0, 2, 2] == 1 and m[0, 3, 3] == 0 and m[0, 1, 0] == 0
    assert m[0].sum() == 3 and m[1].all()
    assert latent_mask(mask[0].astype(np.float32)).shape == (64, 64)
    with pytest.raises(ValueError):
        latent_mask(np.zeros((250, 250)))


def test_paste_alpha_is_one_on_the_region_and_feathers_outside():
    ml = np.zeros((64, 64), np.float32)
    cv2.circle(ml, (30, 34), 15, 1.0, -1)
    alpha = paste_alpha(ml, feather=8)
    region = np.kron(ml, np.ones((4, 4))) == 1
    assert alpha.shape == (CROP_SIZE, CROP_SIZE) and alpha.dtype == np.float32
    assert alpha.min() >= 0 and alpha.max() <= 1
    assert np.all(alpha[region] == 1)
    dist = cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    assert np.all(alpha[dist >= 9] == 0)
    ring = (dist > 0) & (dist < 9)
    assert np.all((alpha[ring] > 0) & (alpha[ring] < 1))
    # Smooth: no step between neighbours larger than the ramp's steepest slope (1.5 / 9).
    assert np.abs(np.diff(alpha, axis=0)).max() < 0.2 and np.abs(np.diff(alpha, axis=1)).max() < 0.2
    assert not paste_alpha(np.zeros((64, 64))).any()
    assert np.array_equal(paste_alpha(ml, feather=0), region.astype(np.float32))


# --- face parser -----------------------------------------------------------------------------

# Colours (RGB) that the test model labels as these BiSeNet classes.
COLOURS = {
    1: (255, 0, 0), 17: (0, 255, 0), 0: (0, 0, 255), 10: (255, 255, 255), 9: (255, 255, 0),
    4: (110, 110, 110), 16: (150, 150, 150),  # two greys told apart only after mean/std normalisation
}


def _parser_model(path, batch="batch") -> str:
    """A 1x1 conv whose argmax is the nearest colour prototype, after BiSeNet's normalisation.

    A parser that fed BGR, or skipped the mean/std, would label these colours wrongly.
    """
    weight = np.zeros((19, 3, 1, 1), np.float32)
    bias = np.full(19, -1e4, np.float32)
    for label, rgb in COLOURS.items():
        proto = (np.array(rgb, np.float32) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        weight[label, :, 0, 0] = proto
        bias[label] = -0.5 * proto @ proto
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W", "B"], ["output"])],
        "parser",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 512, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 19, 512, 512])],
        [helper.make_tensor("W", TensorProto.FLOAT, weight.shape, weight.ravel()),
         helper.make_tensor("B", TensorProto.FLOAT, bias.shape, bias)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _quadrant_crops() -> tuple[np.ndarray, np.ndarray]:
    crops = np.zeros((3, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    h = CROP_SIZE // 2
    crops[0, :h, :h], crops[0, :h, h:] = COLOURS[1], COLOURS[17]  # skin | hair
    crops[0, h:, :h], crops[0, h:, h:] = COLOURS[0], COLOURS[10]  # background | nose
    crops[1] = COLOURS[9]  # earring: not kept
    crops[1, 64:192, 64:192] = COLOURS[1]
    crops[1, 200:, :h], crops[1, 200:, h:] = COLOURS[4], COLOURS[16]  # eye | cloth
    crops[2] = crops[0, ::-1]
    expected = np.zeros((3, CROP_SIZE, CROP_SIZE), bool)
    expected[0, :h, :h] = expected[0, h:, h:] = True
    expected[1, 64:192, 64:192] = expected[1, 200:, :h] = True
    expected[2] = expected[0, ::-1]
    return crops, expected


@pytest.mark.parametrize("batch", ["batch", 1])
def test_face_parser_keeps_the_paper_classes(tmp_path, batch):
    assert {1, 4, 10} <= set(PARSER_KEEP) and not {0, 9, 16, 17} & set(PARSER_KEEP)
    parser = FaceParser(_parser_model(tmp_path / "p.onnx", batch), ["CPUExecutionProvider"])
    crops, expected = _quadrant_crops()
    got = parser(crops)
    assert got.shape == expected.shape and got.dtype == bool
    # Compare away from the colour edges, where resizing blends neighbouring colours.
    edges = cv2.dilate(cv2.Canny(expected.reshape(-1, CROP_SIZE).astype(np.uint8) * 255, 50, 150), np.ones((7, 7)))
    away = edges.reshape(expected.shape) == 0
    np.testing.assert_array_equal(got[away], expected[away])
    np.testing.assert_array_equal(parser(crops[1]), got[1:2])  # a single crop works too
    assert parser(crops[:0]).shape == (0, CROP_SIZE, CROP_SIZE)


def test_load_face_parser_explicit_path(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelNotFoundError, match="nope.onnx"):
        load_face_parser(missing)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelNotFoundError, match="junk.onnx"):
        load_face_parser(junk)
    assert isinstance(load_face_parser(_parser_model(tmp_path / "ok.onnx")), FaceParser)


def test_cache_dir_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDANON_CACHE", str(tmp_path / "v"))
    assert masks.cache_dir() == tmp_path / "v" / "face-parsing"
    monkeypatch.delenv("VIDANON_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert masks.cache_dir() == tmp_path / "x" / "vidanon" / "face-parsing"


def test_load_face_parser_from_cache_or_download(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("VIDANON_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "face-parsing" / "resnet18.onnx"
    with caplog.at_level(NOTE, logger="vidanon.masks"):  # a note (not a warning): shown once, never under -q
        assert load_face_parser(download=False) is None
    assert "landmark" in caplog.text

    # Network failure: a warning and None, nothing left in the cache.
    monkeypatch.setattr(masks, "PARSER_URLS", ((tmp_path / "absent.onnx").as_uri(),))
    assert load_face_parser() is None
    assert not any(cached.parent.iterdir())

    # A "download" (file:// URL) lands atomically in the cache and is used from then on.
    source = _parser_model(tmp_path / "served.onnx")
    monkeypatch.setattr(masks, "PARSER_URLS", (f"file://{source}",))
    assert isinstance(load_face_parser(), FaceParser)
    assert cached.read_bytes() == open(source, "rb").read()
    assert [p.name for p in cached.parent.iterdir()] == ["resnet18.onnx"]
    monkeypatch.setattr(masks, "PARSER_URLS", ())
    assert isinstance(load_face_parser(download=False), FaceParser)
