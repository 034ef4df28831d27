"""The GPU check's smoke mode: the same parts and code paths at tiny sizes on the CPU, so the script cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(out), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = run(out, "--smoke", "--parts", "env,core,precision,compile,pipeline,profile")
    return proc, out, json.loads((out / "gpu_check.json").read_text())


def test_every_part_runs_and_reports(smoke):
    proc, out, result = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + (out / "gpu_check.log").read_text()[-3000:]
    parts = result["parts"]
    assert list(parts) == ["env", "core", "precision", "compile", "pipeline", "profile"]
    assert all(p["status"] == "ok" for p in parts.values())
    assert "| pipeline / core |" in proc.stdout and (out / "gpu_check.md").read_text() in proc.stdout


def test_core_figures_are_measured(smoke):
    core = smoke[2]["parts"]["core"]["figures"]
    assert [b["batch"] for b in core["batches"]] == [1, 2]
    assert all(b["faces_per_s"] > 0 and 0 < b["of_ceiling"] for b in core["batches"])
    assert core["naive"]["faces_per_s"] > 0 and core["speedup_over_naive"] > 0
    assert core["flops"]["tflop_per_face"] > 0 and core["switches"]["cudnn_benchmark"] in (True, False)
    compiled = smoke[2]["parts"]["compile"]["figures"]
    assert compiled["batch"] == 2 and compiled["compiled"]["faces_per_s"] > 0 and compiled["compiled_over_eager"] > 0


def test_precision_and_batch_invariance_are_measured(smoke):
    prec = smoke[2]["parts"]["precision"]["figures"]
    assert set(prec["eps_rel_err"]) == {"980", "500", "20"}
    # bf16 against fp32 on the (tiny) real architecture: the 1 % bound holds at these sizes too
    assert all(0 < e < 0.01 for e in prec["eps_rel_err"].values())
    assert all(v["bf16"] < 0.01 for v in prec["batch_invariance_eps"].values())
    assert prec["face_psnr_bf16_vs_fp32_db"] > 40


def test_pipeline_figures_cover_short_and_long_clips(smoke):
    pipe = smoke[2]["parts"]["pipeline"]["figures"]
    assert pipe["short"]["frames"] == 4 and pipe["long"]["frames"] == 8
    assert 0 < pipe["long"]["core_busy"] <= 1.05 and pipe["pipeline_over_core"] > 0
    assert pipe["short"]["detector_providers"] == ["CPUExecutionProvider"]
    assert smoke[2]["parts"]["env"]["figures"]["torch"]


def test_a_part_over_its_budget_is_stopped_and_reported(tmp_path):
    proc = run(tmp_path, "--smoke", "--parts", "core", "--budget-scale", "0.005")
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 1
    assert result["parts"]["core"]["status"].startswith("over budget")
    assert result["parts"]["core"]["seconds"] < 10


def test_unknown_part_is_refused(tmp_path):
    proc = run(tmp_path, "--parts", "core,warp")
    assert proc.returncode == 2 and "unknown part(s) warp" in proc.stderr


def test_the_profile_part_times_the_unet_each_way_and_names_its_top_operators(smoke):
    prof = smoke[2]["parts"]["profile"]["figures"]
    assert len(prof["unet_call"]["rows"]) == 3 and all(r["ms_per_unet_call"] > 0 for r in prof["unet_call"]["rows"].values())
    assert "aten::" in prof["top_ops"]
