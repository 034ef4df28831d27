"""The config layering: defaults < YAML file < flags, typed and checked; which settings change an output."""

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from vidanon.config import Config, changed_settings, load_config, restore_config
from vidanon.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_documents_every_setting_with_its_default():
    documented = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert documented == Config().to_dict()
    assert set(documented) == {f.name for f in fields(Config)}


def test_config_layering_and_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 20\ncrf: 23\n")
    c = load_config(f, crf=18, model=None)
    assert (c.steps, c.crf, c.model) == (20, 18, "ffhq")
    f.write_text("stepz: 20\n")
    with pytest.raises(InputError, match="unknown setting.*stepz"):
        load_config(f)
    with pytest.raises(InputError, match="steps must be"):
        load_config(None, steps=0)
    with pytest.raises(InputError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text, message", [
    ("steps: 4.5\n", "steps must be a whole number, got 4.5"),
    ("steps: ten\n", "steps must be a whole number, got 'ten'"),
    ('lossless: "no"\n', "lossless must be true or false, got 'no'"),
    ("crf: true\n", "crf must be a whole number, got True"),
    ("threshold: 1.5\n", "threshold must be in"),
    ("preset: quick\n", "preset must be one of"),
    ("detector: yolo\n", "detector must be"),
    ("detect_blur: -1\n", "detect_blur must be >= 0"),
])
def test_config_values_are_type_checked_naming_the_file(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match=message) as e:
        load_config(f)
    assert str(e.value).startswith(str(f))
    assert load_config(None, threshold=0.3, iou_threshold=1 / 3).threshold == 0.3


def test_settings_that_change_the_output_are_compared_with_the_recorded_ones():
    recorded = Config(model="testing:gaussian", steps=8, lossless=True).to_dict()
    assert changed_settings(recorded, Config(model="testing:gaussian", steps=8, lossless=True, batch_size=2, device="cpu")) == []
    assert changed_settings(recorded, Config(steps=8, lossless=True)) == ["model testing:gaussian -> ffhq"]
    assert changed_settings(recorded, Config(model="testing:gaussian", steps=8)) == ["lossless True -> False"]
    # 25 vs 25.0 is no change; a setting the recorded run did not know had its default then
    old = {k: v for k, v in recorded.items() if k != "min_face"} | {"iou_threshold": 0.3}
    assert changed_settings(old, Config(model="testing:gaussian", steps=8, lossless=True)) == []


def test_restore_config_ignores_settings_a_newer_vidanon_added():
    cfg = restore_config({**Config(steps=7).to_dict(), "device": "cuda:3", "from_the_future": 1}, batch_size=2)
    assert (cfg.steps, cfg.device, cfg.batch_size) == (7, "auto", 2)


def test_device_is_checked_with_the_config():
    with pytest.raises(InputError, match="device must be auto, cpu, cuda or cuda:N"):
        Config(device="gpu")
    assert Config(device="cuda:1").device == "cuda:1"


# One other valid value for each setting that changes the output. A new output setting must be added here
# (the test below fails until it is), so that a rerun with it changed is seen to redo the file.
OTHER_VALUE = {"model": "celebahq", "steps": 9, "detector": "scrfd", "threshold": 0.35, "min_face": 24, "floor": 0.1,
               "detect_blur": 0.0, "mask": "auto", "parser_weights": "other.onnx", "feather": 4, "max_gap": 6,
               "extend": 2, "iou_threshold": 0.4, "bridge": 10, "lossless": True, "crf": 23, "preset": "fast",
               "seal": False, "index_identities": True, "recognizer": "arcface"}
SPEED_ONLY = {"batch_size": 3, "device": "cpu", "compile": True}


@pytest.fixture(scope="module")
def done_output(tmp_path_factory):
    """A complete output (video and manifest) of a 2-frame clip, made with BASE."""
    import synth
    from vidanon.anonymize import anonymize_video

    work = tmp_path_factory.mktemp("rerun")
    (work / "in").mkdir()
    clip = synth.make_clip(work / "in" / "a.mp4", width=160, height=120, frames=2, audio=False)
    anonymize_video(clip.path, work / "out" / "a.mp4", bytes(32), BASE, progress=False)
    return work / "in", work / "out"


BASE = Config(model="testing:gaussian", steps=2, mask="landmarks", device="cpu")


def test_every_output_setting_changed_alone_redoes_the_file(done_output):
    from vidanon import folder_run
    from vidanon.config import OUTPUT_SETTINGS

    src, out = done_output
    assert set(OTHER_VALUE) == set(OUTPUT_SETTINGS) and not set(SPEED_ONLY) & set(OUTPUT_SETTINGS)
    assert "recognizer" in OUTPUT_SETTINGS  # the one a rerun once skipped as done
    [same] = folder_run.plan([src], out, BASE)
    assert same.status == "skipped"
    for name, value in OTHER_VALUE.items():
        [job] = folder_run.plan([src], out, Config(**{**BASE.to_dict(), name: value}))
        assert job.status == "pending" and job.overwrite and name in job.redo, (name, job.reason)
    for name, value in SPEED_ONLY.items():  # how fast it is made, not what it holds
        [job] = folder_run.plan([src], out, Config(**{**BASE.to_dict(), name: value}))
        assert job.status == "skipped", (name, job.reason)
