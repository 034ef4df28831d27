"""Alignment: FFHQ affine, crop, paste and the least-squares inverse of the paste.

Measured (this machine): a random-noise 256 crop pasted at 1.5x with a 20 degree
rotation through a binary disc alpha comes back from `restore_crop` at ~41 dB
PSNR inside the disc (~56 dB two pixels in from its edge), against ~17.6 dB for
a plain `crop_face` of the pasted frame.
"""

import cv2
import numpy as np
import pytest
from skimage import data

from vidanon.align import CROP_SIZE, crop_face, ffhq_affine, landmarks_in_crop, paste_face, restore_crop

# A frontal face, relative to its centre, in units of the eye distance: insightface order
# (image-left eye, image-right eye, nose, image-left mouth corner, image-right mouth corner).
FRONTAL = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.5], [-0.4, 0.95], [0.4, 0.95]])


def face_landmarks(eye_dist: float, angle_deg: float, centre) -> np.ndarray:
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return FRONTAL * eye_dist @ rot.T + np.asarray(centre, dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    err = (a.astype(np.float64) - b.astype(np.float64))[where] ** 2
    return float(10 * np.log10(255.0**2 / err.mean()))


def test_frontal_face_is_upright_centred_and_ffhq_sized():
    lm = face_landmarks(40.0, 0.0, (300, 200))
    a = ffhq_affine(lm)
    assert a.shape == (2, 3) and a.dtype == np.float64
    c = landmarks_in_crop(lm, a)
    left_eye, right_eye, nose, mouth_l, mouth_r = c
    assert abs(left_eye[1] - right_eye[1]) < 1e-9  # eyes level
    assert left_eye[0] < right_eye[0] and mouth_l[0] < mouth_r[0]  # not mirrored
    assert left_eye[1] < nose[1] < mouth_l[1]  # not upside down
    # FFHQ: half the crop side is max(2 * eye distance, 1.8 * eye-to-mouth), here 2 * eye distance.
    assert right_eye[0] - left_eye[0] == pytest.approx(CROP_SIZE / 4)
    # Centred: eye_avg + 0.1 * eye_to_mouth sits at the crop centre (pixel-centre coordinates).
    centre = (left_eye + right_eye) / 2 + 0.1 * ((mouth_l + mouth_r) / 2 - (left_eye + right_eye) / 2)
    np.testing.assert_allclose(centre, [CROP_SIZE / 2 - 0.5] * 2, atol=1e-9)


@pytest.mark.parametrize("angle,scale,shift", [(30.0, 2.5, (50, -20)), (-75.0, 0.3, (-400, 900)), (180.0, 1.0, (0, 0))])
def test_crop_landmarks_are_invariant_to_similarity(angle, scale, shift):
    lm = face_landmarks(37.0, 8.0, (250, 180)) + [[0, 0], [0, 3], [1, 0], [-2, 1], [0, 0]]  # not a perfect face
    t = np.deg2rad(angle)
    rot = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    moved = lm @ rot.T + shift
    np.testing.assert_allclose(landmarks_in_crop(moved, ffhq_affine(moved)), landmarks_in_crop(lm, ffhq_affine(lm)), atol=1e-7)


def test_crop_of_a_rotated_image_is_the_same_crop():
    img = data.astronaut()
    lm = face_landmarks(44.0, 0.0, (225, 115))
    m = cv2.getRotationMatrix2D((256, 256), 35, 1.2)
    rotated = cv2.warpAffine(img, m, (560, 560), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
    a = crop_face(img, ffhq_affine(lm))
    b = crop_face(rotated, ffhq_affine(lm @ m[:, :2].T + m[:, 2]))
    assert psnr(a, b, np.ones(a.shape[:2], bool)) > 28


def test_degenerate_landmarks_raise():
    with pytest.raises(ValueError):
        ffhq_affine(np.zeros((5, 2)))


def test_crop_face_partly_outside_the_frame():
    frame = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    a = ffhq_affine(face_landmarks(30.0, 10.0, (5, 230)))  # about three quarters off-frame
    crop = crop_face(frame, a)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8
    # Where the crop samples the inside of the frame, it is the plain bilinear warp: the border rule changes nothing
    # there. Both are OpenCV's fixed-point resampling, whose code paths for the two border modes may round apart
    # (opencv 5.1 differs from itself by one level in 21 of 56,619 pixels), so within one level, not bit for bit.
    plain = cv2.warpAffine(frame, a, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    inv = cv2.invertAffineTransform(a)
    ys, xs = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE]
    fx, fy = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2], inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    inside = (fx > 1) & (fx < 318) & (fy > 1) & (fy < 238)
    assert 0.05 < inside.mean() < 0.5
    diff = np.abs(crop[inside].astype(int) - plain[inside].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    # Outside the frame the crop is mirrored in, never black.
    assert crop[~inside].mean() > 50


@pytest.mark.parametrize("shape,centre", [((240, 320, 3), (-5000, 7000)), ((9, 17, 3), (8, 4)), ((1, 1, 3), (0, 0))])
def test_crop_face_never_crashes(shape, centre):
    frame = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    crop = crop_face(frame, ffhq_affine(face_landmarks(40.0, 20.0, centre)))
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8


def _disc_alpha(radius: int = 90) -> np.ndarray:
    alpha = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    cv2.circle(alpha, (128, 128), radius, 1.0, -1)
    return alpha


def test_paste_changes_only_pixels_under_alpha():
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    before = frame.copy()
    face = rng.integers(0, 256, (CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    alpha = _disc_alpha()
    a = ffhq_affine(face_landmarks(35.0, 25.0, (200, 140)))
    out = paste_face(frame, face, a, alpha)
    np.testing.assert_array_equal(frame, before)  # input untouched
    # Pixels whose sample point is more than 2 crop px from the disc must be bit-identical;
    # pixels well inside it are replaced (a random face differs from a random frame).
    near = cv2.dilate((alpha > 0).astype(np.uint8), np.ones((5, 5), np.uint8))
    inner = cv2.erode((alpha > 0).astype(np.uint8), np.ones((5, 5), np.uint8))
    warp = dict(dsize=(400, 300), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)
    outside = cv2.warpAffine(near, a, **warp) == 0
    inside = cv2.warpAffine(inner, a, **warp) == 1
    changed = np.any(out != frame, axis=2)
    assert outside.mean() > 0.5 and inside.sum() > 5000
    assert not changed[outside].any()
    assert changed[inside].mean() > 0.95


def test_paste_of_own_crop_is_nearly_invisible():
    img = data.astronaut()
    a = ffhq_affine(face_landmarks(44.0, 12.0, (225, 115)))
    alpha = np.ones((CROP_SIZE, CROP_SIZE), np.float32)
    out = paste_face(img, crop_face(img, a), a, alpha)
    region = cv2.warpAffine(np.ones((CROP_SIZE, CROP_SIZE), np.uint8), a, (512, 512),
                            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0) == 1
    assert region.sum() > 25000
    assert psnr(out, img, region) > 30


@pytest.mark.parametrize("centre", [(0, 150), (-3000, -3000)])
def test_paste_outside_the_frame(centre):
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    face = rng.integers(0, 256, (CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    a = ffhq_affine(face_landmarks(40.0, -15.0, centre))
    out = paste_face(frame, face, a, np.ones((CROP_SIZE, CROP_SIZE), np.float32))
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.any(out != frame) == (centre == (0, 150))
    # Alpha is zero outside the crop: nothing beyond its footprint changes.
    footprint = cv2.warpAffine(np.ones((CROP_SIZE, CROP_SIZE), np.uint8), a, (300, 200),
                               flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)
    beyond = cv2.dilate(footprint, np.ones((5, 5), np.uint8)) == 0
    assert beyond.mean() > 0.3
    assert not np.any(out != frame, axis=2)[beyond].any()
    restored = restore_crop(out, a, np.ones((CROP_SIZE, CROP_SIZE), np.float32), iters=5)
    assert restored.shape == (CROP_SIZE, CROP_SIZE, 3) and restored.dtype == np.float32


def test_restore_crop_inverts_an_upscaled_paste():
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (600, 720, 3), dtype=np.uint8)
    noise = rng.integers(0, 256, (CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    alpha = _disc_alpha()
    # Eye distance 96 px on the frame: the 256 crop covers 384 px, a 1.5x upscale.
    a = ffhq_affine(face_landmarks(96.0, 20.0, (360, 300)))
    assert np.sqrt(abs(np.linalg.det(a[:, :2]))) == pytest.approx(1 / 1.5)
    pasted = paste_face(frame, noise, a, alpha)
    restored = restore_crop(pasted, a, alpha)
    assert restored.dtype == np.float32 and restored.shape == noise.shape
    disc = alpha == 1
    restored_db, cropped_db = psnr(restored, noise, disc), psnr(crop_face(pasted, a), noise, disc)
    assert restored_db >= 35, restored_db
    assert cropped_db < 25, cropped_db


def test_degenerate_landmarks_fall_back_to_the_box():
    """A detection whose 5 points coincide is still aligned (from its box), never dropped or crashed on."""
    from vidanon.align import face_affine, landmarks_from_box

    box = (100.0, 50.0, 180.0, 150.0)
    affine, lm = face_affine(np.full((5, 2), 120.0), box)
    assert np.allclose(lm, landmarks_from_box(box))
    centre = affine @ np.array([140.0, 100.0, 1.0])
    assert 64 < centre[0] < 192 and 64 < centre[1] < 192  # the box's centre lands inside the crop
    good = np.array([[120, 90], [160, 90], [140, 110], [125, 130], [155, 130]], float)
    assert np.allclose(face_affine(good, box)[0], ffhq_affine(good))
