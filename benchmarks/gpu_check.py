"""The GPU figures in one short run: every speed and precision target of the core and the pipeline.

    python benchmarks/gpu_check.py OUTDIR                  # on the GPU machine, ≈ 5 minutes
    python benchmarks/gpu_check.py OUTDIR --parts core     # one part alone (env, core, compile, precision, pipeline)
    python benchmarks/gpu_check.py OUTDIR --parts profile  # after the check: where the eager UNet's time goes
    python benchmarks/gpu_check.py OUTDIR --smoke          # on a CPU: tiny sizes, the same code paths (the tests run it)

Each part runs in its own process under a time budget of its own, so one slow part (a long compile, say)
cannot starve the rest; a part that runs out of time keeps the figures it had written so far. Every figure,
with the GPU name, driver and torch/CUDA versions, goes to OUTDIR/gpu_check.json; OUTDIR/gpu_check.md holds
the summary table (also printed) and OUTDIR/gpu_check.log every part's own output.
`benchmarks/gpu_check.sh` wraps this for a machine without network (carried wheels; see that file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# Seconds per part on the GPU machine and in --smoke; the GPU ones add up to 5 minutes. From the H200 runs
# (docs/benchmarks.md): env 12 s, core 78-83 s, precision 39-40 s; compiling takes 36 s at batch 32 (48 s at 64, which
# then ran out of 75 s), so the compile part runs at 32; the pipeline's clip is short enough for its long version
# to finish once detection runs on the GPU. Smoke: ≈ 70 s in all on an idle 2-core CPU; generous, since a smoke run
# only checks that the code paths still run.
BUDGETS = {"env": (12, 60), "core": (85, 180), "precision": (43, 180), "compile": (60, 180), "pipeline": (100, 240),
           "profile": (60, 120)}
PARTS = tuple(BUDGETS)
DEFAULT_PARTS = PARTS[:-1]  # profile: for the device time left after the check, on the core's largest gap
COMPILE_BATCH = 32


_STARTED = time.perf_counter()


def note(what: str) -> None:
    """A timestamped line in the part's log, so a part that runs out of time shows where its time went."""
    print(f"[{time.perf_counter() - _STARTED:6.1f} s] {what}", flush=True)


class Figures:
    """A part's figures, rewritten to its file after every update, so a part killed at its budget keeps them."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def __setitem__(self, key, value):
        self.update({key: value})

    def update(self, items: dict):
        self.data.update(items)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


# --- the parts (each runs in its own process) --------------------------------------------------


def part_env(fig: Figures, smoke: bool) -> None:
    import onnxruntime
    import torch

    fig["python"] = platform.python_version()
    fig["cpu_count"] = os.cpu_count()
    fig["torch"], fig["cuda"], fig["cudnn"] = torch.__version__, torch.version.cuda, torch.backends.cudnn.version()
    fig["onnxruntime"], fig["onnxruntime_providers"] = onnxruntime.__version__, onnxruntime.get_available_providers()
    for mod in ("diffusers", "av", "numpy", "cryptography"):
        try:
            fig[mod] = __import__(mod).__version__
        except ImportError as e:
            fig[mod] = f"missing: {e}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        fig["gpu"], fig["gpu_memory_gib"], fig["sm_count"] = p.name, p.total_memory / 2**30, p.multi_processor_count
        fig["compute_capability"] = f"{p.major}.{p.minor}"
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=10)
            fig["nvidia_smi"] = q.stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            fig["nvidia_smi"] = f"unavailable: {e}"
    else:
        fig["gpu"] = f"none (CPU, {torch.get_num_threads()} torch threads)"


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def part_core(fig: Figures, smoke: bool) -> None:
    import torch

    from bench_core import batch_speed, core_model, flop_figures, naive_speed, set_global_switches

    dev = _device()
    steps, sizes, naive_faces = (2, (1, 2), 1) if smoke else (50, (8, 16, 32, 64), 2)
    fig["switches"] = set_global_switches(dev)  # before either side runs: the same for vidanon and the naive loop
    fig["steps"], fig["dtype"] = steps, "bf16"
    model = core_model(dev, torch.bfloat16, tiny=smoke)
    note("model built")
    flops = flop_figures(model, steps)
    fig["flops"] = flops
    note("FLOPs counted, matmul ceiling measured")
    rows = []
    for b in sizes:
        try:
            rows.append(batch_speed(model, b, steps, flops))
        except torch.OutOfMemoryError:
            rows.append({"batch": b, "out_of_memory": True})
            break
        fig["batches"] = rows
        note(f"batch {b}: {rows[-1]['faces_per_s']:.2f} faces/s")
    fig["batches"] = rows
    best = max((r for r in rows if "faces_per_s" in r), key=lambda r: r["faces_per_s"])
    fig["best"] = best
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    naive = naive_speed(dev, steps, naive_faces, tiny=smoke)
    note("naive loop timed")
    fig["naive"] = {"faces_per_s": naive, "faces_timed": naive_faces, "dtype": "fp32", "batch": 1}
    fig["speedup_over_naive"] = best["faces_per_s"] / naive


def part_compile(fig: Figures, smoke: bool, core: dict) -> None:
    import torch

    from bench_core import batch_speed, core_model, flop_figures, inputs, set_global_switches, sync
    from vidanon.diffusion import flip_faces, make_schedule

    dev = _device()
    steps = 2 if smoke else 50
    batch = 2 if smoke else COMPILE_BATCH  # not the core's best: each batch size is a compile of its own
    if smoke:  # inductor's C++ codegen takes minutes on a 2-core CPU: trace with dynamo, run eagerly
        compile_ = torch.compile
        torch.compile = lambda *a, **k: compile_(*a, **{**k, "backend": "eager"})
        fig["backend"] = "eager (smoke)"
    fig["switches"] = set_global_switches(dev)
    fig["batch"], fig["steps"] = batch, steps
    # FLOPs counted on an eager model: counting at batch 1 on the compiled one would compile it a second time
    flops = core.get("flops") or flop_figures(core_model(dev, torch.bfloat16, tiny=smoke), steps)
    model = core_model(dev, torch.bfloat16, tiny=smoke, compile=True)
    x, m, r = inputs(model, batch)
    note(f"model built; compiling at batch {batch}")
    t = time.perf_counter()
    flip_faces(model, x, m, r, make_schedule(model.scheduler_config, 1))  # the first UNet call compiles it
    sync(dev)
    fig["compile_s"] = time.perf_counter() - t
    note(f"compiled in {fig.data['compile_s']:.1f} s")
    fig["compiled"] = batch_speed(model, batch, steps, flops)
    note("compiled batch timed")
    eager = [row for row in core.get("batches", []) if row.get("batch") == batch and "faces_per_s" in row]
    if eager:  # the same batch, eager, from the core part
        fig["eager_faces_per_s"] = eager[0]["faces_per_s"]
        fig["compiled_over_eager"] = fig.data["compiled"]["faces_per_s"] / eager[0]["faces_per_s"]


def part_precision(fig: Figures, smoke: bool) -> None:
    from bench_core import precision_figures, set_global_switches

    dev = _device()
    fig["switches"] = set_global_switches(dev)
    fig.update(precision_figures(dev, 2 if smoke else 50, tiny=smoke, batch=4 if smoke else 32))


def part_pipeline(fig: Figures, smoke: bool) -> None:
    from bench_pipeline import measure

    size = dict(width=480, height=270, frames=4, long=2, steps=2) if smoke else dict(width=1920, height=1080, frames=20, long=3, steps=50)
    args = argparse.Namespace(model=None, device="auto", batch_size=0, fps=25, tiny=smoke, **size)
    measure(args, on_result=lambda name, out: (fig.update(out), note(f"{name} clip done")))


def part_profile(fig: Figures, smoke: bool) -> None:
    """Where the eager core's time goes: one bf16 UNet call at batch 32 with the memory format and cuDNN autotune
    each way (time and peak memory), then the kernels that take the most time."""
    import torch

    from bench_core import real_architecture, set_global_switches, timed

    dev = _device()
    fig["switches"] = set_global_switches(dev)
    unet = real_architecture(tiny=smoke, device=dev)[0].to(dtype=torch.bfloat16).eval()
    b = 2 if smoke else 32
    z = torch.randn(b, 3, 64, 64, device=dev, dtype=torch.bfloat16)
    t = torch.full((b,), 500, device=dev)
    rows = {}
    for name, fmt, autotune in (("channels_last, autotune", torch.channels_last, True),
                                ("contiguous, autotune", torch.contiguous_format, True),
                                ("channels_last, no autotune", torch.channels_last, False)):
        torch.backends.cudnn.benchmark = autotune and dev.type == "cuda"
        unet, x = unet.to(memory_format=fmt), z.contiguous(memory_format=fmt)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        with torch.no_grad():
            sec = timed(lambda: unet(x, t), dev, repeat=2 if smoke else 10)
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        rows[name] = {"ms_per_unet_call": sec * 1e3, "peak_gib": peak}
        fig["unet_call"] = {"batch": b, "rows": rows}
        note(f"{name}: {sec * 1e3:.1f} ms per UNet call at batch {b}")
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    unet, x = unet.to(memory_format=torch.channels_last), z.contiguous(memory_format=torch.channels_last)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            unet(x, t)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    fig["top_ops"] = prof.key_averages().table(sort_by=key, row_limit=20)
    note("profiled")
    print(fig.data["top_ops"])


# --- the driver ----------------------------------------------------------------------------------


def run_part(name: str, out: Path, smoke: bool, results: dict, log, budget_scale: float = 1.0) -> None:
    budget = round(BUDGETS[name][1 if smoke else 0] * budget_scale, 1)
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / f"{name}.json"
        core = results.get("core", {}).get("figures", {})
        cmd = [sys.executable, __file__, str(out), "--part", name, "--figures", str(figures), "--core", json.dumps(core)]
        cmd += ["--smoke"] if smoke else []
        t = time.perf_counter()
        log.write(f"\n===== {name} (budget {budget} s) =====\n")
        log.flush()
        # a session of its own, so a part over budget is ended with everything it started (pipeline children)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_child_env())
        try:
            status = "ok" if proc.wait(timeout=budget) == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"over budget ({budget} s): figures so far kept"
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        results[name] = {"status": status, "seconds": round(time.perf_counter() - t, 1), "budget_s": budget,
                         "figures": json.loads(figures.read_text()) if figures.exists() else {}}


def _child_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = str(HERE.parent)  # the project itself, importable without installing it
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _pct(x):
    return "–" if x is None else f"{x:.1%}"


def _num(x, fmt=".2f"):
    return "–" if x is None else format(x, fmt)


def summary(results: dict, smoke: bool) -> str:
    """The table of targets and figures, as Markdown."""
    g = lambda part, *path: _dig(results.get(part, {}).get("figures", {}), path)  # noqa: E731
    env = results.get("env", {}).get("figures", {})
    best = g("core", "best") or {}
    eps = g("precision", "eps_rel_err") or {}
    inv = g("precision", "batch_invariance_eps") or {}
    pipe = results.get("pipeline", {}).get("figures", {})
    long = pipe.get("long", {})
    rows = [
        ("core: best batch", _num(best.get("batch"), "d") if best.get("batch") else "–", ""),
        ("core: faces/s at 50 steps (bf16)", _num(best.get("faces_per_s")), "≥ 24 on an H100"),
        ("core: achieved TFLOP/s", _num(best.get("tflops"), ".1f"), ""),
        ("core: of the measured bf16 matmul ceiling", _pct(best.get("of_ceiling")), "≥ 60 %"),
        ("core: matmul ceiling TFLOP/s (8192², bf16)", _num(g("core", "flops", "matmul_peak_tflops"), ".0f"), ""),
        ("core: peak GPU memory GiB at best batch", _num(best.get("peak_gib")), ""),
        ("naive diffusers loop faces/s (fp32, 1 face)", _num(g("core", "naive", "faces_per_s"), ".3f"), ""),
        ("core / naive", _num(g("core", "speedup_over_naive"), ".1f") + "×", "≥ 10×"),
        ("compile: compile time s", _num(g("compile", "compile_s"), ".0f"), "reported apart"),
        (f"compile: faces/s (batch {g('compile', 'batch') or '–'})", _num(g("compile", "compiled", "faces_per_s")), ""),
        ("compile: of ceiling", _pct(g("compile", "compiled", "of_ceiling")), ""),
        ("compile: compiled / eager", _num(g("compile", "compiled_over_eager"), ".2f") + "×", ""),
        ("bf16 ε rel. error vs fp32 (max over t)", _pct(max(eps.values()) if eps else None), "≤ 1 %"),
        ("bf16 ε alone vs in batch of 32 (max over t)", _pct(max(v["bf16"] for v in inv.values()) if inv else None), "≤ 1 %"),
        ("bf16 face alone vs in batch (50 steps), rel. / PSNR",
         f"{_pct(g('precision', 'face_rel_err_alone_vs_batch_bf16'))} / {_num(g('precision', 'face_psnr_alone_vs_batch_bf16_db'), '.1f')} dB", ""),
        ("bf16 vs fp32 face after the key flip, rel. / PSNR",
         f"{_pct(g('precision', 'face_rel_err_bf16_vs_fp32'))} / {_num(g('precision', 'face_psnr_bf16_vs_fp32_db'), '.1f')} dB", ""),
        ("pipeline: frames/s (long clip)", _num(long.get("frames_per_s")), ""),
        ("pipeline: faces/s (long clip)", _num(long.get("faces_per_s")), ""),
        ("pipeline: core busy / detection busy", f"{_pct(long.get('core_busy'))} / {_pct(long.get('detect_busy'))}", ""),
        ("pipeline: core alone faces/s (same batch)", _num(pipe.get("core_alone_faces_per_s")), ""),
        ("pipeline / core", _pct(pipe.get("pipeline_over_core")), "≥ 80 %"),
        ("pipeline: peak RSS long / short", _num(pipe.get("rss_long_over_short")) + "×"
         + (f" ({pipe.get('long_factor')}× the frames)" if pipe else ""), "flat (≈ 1×)"),
        ("pipeline: detection runs with", ", ".join(long.get("detector_providers", [])) or "–", "torch's CUDA here (no onnxruntime-gpu)"),
    ]
    calls = g("profile", "unet_call", "rows") or {}
    if calls:
        rows.append((f"profile: ms per UNet call at batch {g('profile', 'unet_call', 'batch')} ({' / '.join(calls)})",
                     " / ".join(_num(r["ms_per_unet_call"], ".1f") for r in calls.values()), ""))
    head = (f"GPU check{' (SMOKE: tiny sizes, not figures)' if smoke else ''}: {env.get('gpu', '?')}; "
            f"{env.get('nvidia_smi', 'no nvidia-smi')}; torch {env.get('torch', '?')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}; "
            f"{env.get('cpu_count')} CPUs")
    parts = "; ".join(f"{k} {v['status']} in {v['seconds']} s" for k, v in results.items())
    lines = [head, "", f"parts: {parts}", "", "| figure | measured | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def _dig(d, path):
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder for gpu_check.json, gpu_check.md and gpu_check.log")
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                   help=f"comma-separated, from {', '.join(PARTS)} (default: all but profile)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on a CPU: checks that the script runs, measures nothing")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's time budget (default 1)")
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    p.add_argument("--figures", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--core", default="{}", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.part:  # a child: one part, its figures to --figures
        fig = Figures(a.figures)
        fn = globals()[f"part_{a.part}"]
        fn(fig, a.smoke, json.loads(a.core)) if a.part == "compile" else fn(fig, a.smoke)
        return 0
    parts = [s.strip() for s in a.parts.split(",") if s.strip()]
    unknown = [s for s in parts if s not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    started = time.perf_counter()
    with open(a.out / "gpu_check.log", "w") as log:
        for name in sorted(parts, key=PARTS.index):  # compile reads the core part's eager figures
            run_part(name, a.out, a.smoke, results, log, a.budget_scale)
            table = summary(results, a.smoke)
            (a.out / "gpu_check.json").write_text(json.dumps({"smoke": a.smoke, "parts": results,
                                                               "wall_s": time.perf_counter() - started}, indent=1, default=str))
            (a.out / "gpu_check.md").write_text(table)
            print(f"{name}: {results[name]['status']} in {results[name]['seconds']} s", flush=True)
    print(table)
    print(f"wall {time.perf_counter() - started:.0f} s; figures in {a.out}/gpu_check.json")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
