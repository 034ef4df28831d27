"""torch.compile for the core: on by default on a GPU only, --no-compile, inductor's cache kept between runs,
and the one batch shape a compiled model is given."""

import os

import numpy as np
import pytest
import torch
from test_diffusion import tiny_models

from vidanon import compiling, stages
from vidanon.config import Config, load_config, restore_config
from vidanon.diffusion import make_schedule
from vidanon.models import COMPVIS_SCHEDULER, GaussianModel, LatentDiffusion
from vidanon.options import build_parser


@pytest.mark.parametrize("requested, device, expected", [
    (None, "cuda", True), (None, "cuda:1", True), (None, "cpu", False),
    (False, "cuda", False), (True, "cpu", True),
])
def test_compile_is_on_by_default_on_a_gpu_only(requested, device, expected):
    assert compiling.wanted(requested, torch.device(device)) is expected


def test_a_cpu_model_is_not_compiled_unless_asked():
    assert Config().compile is None
    model = LatentDiffusion(*tiny_models(), COMPVIS_SCHEDULER, name="t", digest="-", device="cpu", dtype=torch.float32)
    assert model.compiled is False
    assert model.memory_format == torch.contiguous_format  # channels_last is the GPU's default only


def test_compile_flags_reach_the_config():
    parser = build_parser({name: print for name in ("keygen", "anonymize", "inspect", "export-key", "deanonymize",
                                                    "doctor", "models", "find")})
    base = ["anonymize", "in.mp4", "-o", "out", "--key-file", "k.key"]
    for flags, expected in (([], None), (["--compile"], True), (["--no-compile"], False)):
        args = parser.parse_args(base + flags)
        assert load_config(None, compile=args.compile).compile is expected
    with pytest.raises(Exception, match="compile must be true, false or null"):
        Config(compile="yes")


def test_restoring_compiles_as_this_machine_does_not_as_the_recorded_run():
    recorded = {**Config().to_dict(), "compile": True}
    assert restore_config(recorded).compile is None
    assert restore_config(recorded, compile=False).compile is False


def test_inductor_cache_goes_to_vidanon_cache_unless_the_user_chose_one(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("VIDANON_CACHE", str(tmp_path / "vidanon"))
    monkeypatch.delenv(compiling.CACHE_ENV, raising=False)
    assert compiling.cache_dir() == tmp_path / "vidanon" / "torch-compile"
    assert inductor_cache_dir() == str(tmp_path / "vidanon" / "torch-compile")  # where inductor then writes
    # inductor puts its temporary default into the environment once it has looked: that is not the user's choice
    monkeypatch.setenv(compiling.CACHE_ENV, default_cache_dir())
    assert compiling.cache_dir() == tmp_path / "vidanon" / "torch-compile"
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path / "mine"))
    assert compiling.cache_dir() == tmp_path / "mine"
    assert os.environ[compiling.CACHE_ENV] == str(tmp_path / "mine")


def _jobs(model, n):
    rng = np.random.default_rng(0)
    h = model.latent_shape[1]
    return [stages.FaceJob(track=i, signs=np.where(rng.random(int(np.prod(model.latent_shape))) < 0.5, -1.0, 1.0).astype(np.float32),
                           affine=np.eye(2, 3), crop=rng.uniform(0, 255, (256, 256, 3)).astype(np.float32),
                           mask=np.ones((h, h), bool), alpha=np.ones((256, 256), np.float32)) for i in range(n)]


@pytest.mark.parametrize("compiled, shapes", [(False, [4, 1]), (True, [4, 4])])
def test_a_compiled_model_gets_one_batch_shape_and_padding_changes_no_face(compiled, shapes, monkeypatch):
    model = GaussianModel()
    model.compiled = compiled
    seen = []
    eps = model.eps
    monkeypatch.setattr(model, "eps", lambda z, t: (seen.append(z.shape[0]), eps(z, t))[1])
    jobs = _jobs(model, 5)
    sched = make_schedule(model.scheduler_config, 2)
    stages.run_core(model, jobs, sched, 4)
    assert sorted(set(seen), reverse=True) == sorted(set(shapes), reverse=True)
    alone = _jobs(model, 5)[4:]
    stages.run_core(GaussianModel(), alone, sched, 4)
    assert np.array_equal(jobs[4].out, alone[0].out)  # the padded batch's real face is the face run alone
