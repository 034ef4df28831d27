"""The GPU check's smoke mode: every part and code path at tiny sizes on the CPU, so the script cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
ALL = ["env", "warmup", "profile", "core", "pipeline", "batches", "naive", "precision",
       "lever-eager", "lever-cudagraphs", "lever-contiguous", "lever-vq-bf16"]


def run(out: Path, *args: str) -> subprocess.CompletedProcess:
    # every part of the smoke: 43 s in all on this 2-core machine under a load of 11 (docs/benchmarks.md)
    return subprocess.run([sys.executable, str(SCRIPT), str(out), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = run(out, "--smoke", "--parts", "all")
    return proc, out, json.loads((out / "gpu_check.json").read_text())


def figures(smoke, part):
    return smoke[2]["parts"][part]["figures"]


def test_every_part_runs_in_order_and_reports(smoke):
    proc, out, result = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + (out / "gpu_check.log").read_text()[-3000:]
    assert list(result["parts"]) == ALL
    assert all(p["status"] == "ok" for p in result["parts"].values())
    assert "| pipeline / core, same batch |" in proc.stdout and (out / "gpu_check.md").read_text() in proc.stdout
    log = (out / "gpu_check.log").read_text()
    assert "===== pipeline (budget 60.0 s) =====" in log and "window written at" in log
    # one worker ran them all: the model was built once, by the warm-up
    assert log.count("model built in") == 1 and log.count("@@part env start") == 1


def test_the_warm_up_builds_and_compiles_the_default_model_once(smoke):
    warm = figures(smoke, "warmup")
    assert warm["compiled"] is True and warm["batch"] == 2 and warm["warm_up_s"] > 0
    assert warm["flops"]["tflop_per_face"] > 0 and warm["flops"]["ceiling_faces_per_s"] > 0
    # every compiled model called torch.compile (the identity in a smoke run): UNet, VQ encode, VQ decode
    assert warm["smoke_compile_calls"][:3] == ["None", "None", "None"]
    assert "reduce-overhead" in figures(smoke, "lever-cudagraphs")["smoke_compile_calls"]
    env = figures(smoke, "env")
    assert env["torch"] and env["compile_by_default"] is False  # no GPU here
    assert Path(env["inductor_cache"]).name == "torch-compile" or "TORCHINDUCTOR_CACHE_DIR" in os.environ


def test_core_and_profile_figures_are_measured(smoke):
    core = figures(smoke, "core")
    assert core["result"]["batch"] == 2 and core["result"]["faces_per_s"] > 0 and 0 < core["result"]["of_ceiling"]
    assert core["compiled"] is True and core["switches"]["cudnn_benchmark"] in (True, False)
    prof = figures(smoke, "profile")
    assert set(prof["calls"]) == {"as run", "eager"}
    assert all(c["ms_per_unet_call"] > 0 and "aten::" in c["top_ops"] for c in prof["calls"].values())


def test_pipeline_reports_steady_state_against_the_core_alone(smoke):
    pipe = figures(smoke, "pipeline")
    assert pipe["frames"] == 3 and pipe["faces"] >= 6 and pipe["windows"] >= 2
    assert pipe["steady_faces_per_s"] > 0 and pipe["first_window_s"] > 0 and 0 < pipe["core_busy"] <= 1.05
    assert pipe["core_alone_same_batch"]["faces_per_s"] > 0 and pipe["pipeline_over_core_same_batch"] > 0
    assert pipe["pipeline_over_core"] > 0  # against the core part's batch
    assert pipe["detector"] == ["CPUExecutionProvider"] and pipe["clip"]["width"] == 480


def test_on_request_parts_and_levers_are_measured(smoke):
    assert [b["batch"] for b in figures(smoke, "batches")["batches"]] == [1]
    naive = figures(smoke, "naive")
    assert naive["faces_per_s"] > 0 and naive["core_over_naive"] > 0
    for lever in ALL[-4:]:
        f = figures(smoke, lever)
        assert f["result"]["faces_per_s"] > 0 and f["over_default"] > 0 and f["warm_up_s"] > 0
    assert figures(smoke, "lever-eager")["compiled"] is False


def test_precision_and_batch_invariance_are_measured(smoke):
    prec = figures(smoke, "precision")
    assert set(prec["eps_rel_err"]) == {"980", "500", "20"}
    # bf16 against fp32 on the (tiny) real architecture: the 1 % bound holds at these sizes too
    assert all(0 < e < 0.01 for e in prec["eps_rel_err"].values())
    assert all(v["bf16"] < 0.01 for v in prec["batch_invariance_eps"].values())
    assert prec["face_psnr_bf16_vs_fp32_db"] > 40 and prec["face_rel_err_vq_bf16_vs_fp32"] >= 0


def test_a_part_over_its_budget_is_ended_and_the_next_runs_in_a_fresh_worker(tmp_path):
    proc = run(tmp_path, "--smoke", "--parts", "env,core,naive", "--budget", "core=0.25", "--budget-scale", "2")
    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert proc.returncode == 1
    assert parts["env"]["status"] == "ok" and parts["naive"]["status"] == "ok"
    assert parts["core"]["status"].startswith("over budget (0.5 s)") and parts["core"]["seconds"] < 10
    assert parts["naive"]["figures"]["faces_per_s"] > 0
    assert (tmp_path / "gpu_check.log").read_text().count("@@part naive start") == 1


def test_unknown_part_is_refused(tmp_path):
    proc = run(tmp_path, "--parts", "core,warp")
    assert proc.returncode == 2 and "unknown part(s) warp" in proc.stderr
