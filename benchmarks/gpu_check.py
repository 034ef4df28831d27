"""The GPU check: the compiled core at batch 64 and the pipeline in steady state, in one run of ≤ 5 minutes.

    bash benchmarks/gpu_check.sh "$OUT"                        # on the GPU machine: the default parts, ≤ 5 minutes
    python benchmarks/gpu_check.py OUTDIR                      # the same without the carried-wheel setup
    python benchmarks/gpu_check.py OUTDIR --parts levers       # on request: each lever against the default core
    python benchmarks/gpu_check.py OUTDIR --parts batches,naive,precision   # on request: figures already known
    python benchmarks/gpu_check.py OUTDIR --smoke --parts all  # on a CPU: tiny sizes, every code path (the tests)
    python benchmarks/gpu_check.py --make-clip                 # here, once: the carried 1080p clip (.gpu_clip/)

One worker process runs the parts in order, so torch is imported, and the model built and compiled, once.
The driver gives each part a time budget of its own: when one runs over, it ends the worker and starts a fresh
one on the next part, so a slow compile cannot starve the rest. Every part logs timestamped steps and its
figures as it goes (OUTDIR/gpu_check.log, and this process's output); OUTDIR/gpu_check.json (every figure,
with the GPU, driver and versions) and OUTDIR/gpu_check.md (the table of targets, also printed last) are
rewritten after each part, so a run that is cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

# The clip the pipeline part anonymizes: generated here by --make-clip (deterministic; 2.3 MiB), kept out of git
# (.gitignore) and carried with the working tree (the device call's `carry` names .gpu_clip). 160 frames at 25 fps
# with 4 real faces (40-200 px high): 640 face-frames, 20 batches of 32 after the tracker's look-ahead (~80 frames).
CLIP = ROOT / ".gpu_clip" / "clip1080p25.mp4"
CLIP_SIZE = {"width": 1920, "height": 1080, "frames": 160, "fps": 25}
SMOKE_CLIP_SIZE = {"width": 480, "height": 270, "frames": 3, "fps": 25}

# Seconds per part: (GPU, --smoke). The default parts add up to 285 s, from the two H200 runs (docs/benchmarks.md):
# compiling at batch 32 took 36 s and at 64 48 s (UNet only; the VQ is compiled too now), an eager batch of 64
# faces at 50 steps 7 s. Smoke: 43 s for every part on this project's 2-core CPU under a load of 11 (20 s of CPU
# time; no part over 10 s); a smoke budget of 60 s holds six times that.
BUDGETS = {
    "env": (15, 60), "warmup": (90, 60), "profile": (25, 60), "core": (40, 60), "pipeline": (115, 60),
    "batches": (150, 60), "naive": (40, 60), "precision": (45, 60),  # on request: their figures are known
    "lever-eager": (45, 60), "lever-cudagraphs": (80, 60), "lever-contiguous": (70, 60), "lever-vq-bf16": (70, 60),
}
PARTS = tuple(BUDGETS)
DEFAULT_PARTS = ("env", "warmup", "profile", "core", "pipeline")
LEVERS = tuple(p for p in PARTS if p.startswith("lever-"))
ALIASES = {"levers": LEVERS, "all": PARTS}
CORE_BATCH = 64  # the target's batch (the issue: core ≥ 50 % of the ceiling at batch 64)
SLACK_S = 30  # a worker's start and the time between two parts: only Python's own start-up and bookkeeping

_STARTED = time.perf_counter()


def note(what: str) -> None:
    """A timestamped line in the log, so a part that runs out of time shows where its time went."""
    print(f"[{time.perf_counter() - _STARTED:6.1f} s] {what}", flush=True)


class Figures:
    """A part's figures, rewritten to its file after every update, so a part ended at its budget keeps them."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def __setitem__(self, key, value):
        self.update({key: value})

    def update(self, items: dict):
        self.data.update(items)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


# --- what the parts of one worker share ------------------------------------------------------------


class Run:
    """The device, the sizes, and the default model (built and warmed up once per worker, by the first part that
    needs it). Smoke: tiny model, one step, batch 2, one torch thread, and torch.compile replaced by the identity
    (dynamo on a 2-core CPU takes longer than the whole smoke run; tests/test_diffusion.py compiles with inductor)."""

    def __init__(self, smoke: bool, figures: Path):
        import torch
        from bench_core import set_global_switches

        self.smoke, self.figures = smoke, figures
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.switches = set_global_switches(self.device)  # TF32, cuDNN autotune: as vidanon sets them on a GPU
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32  # load_model's default
        self.steps, self.batch = (1, 2) if smoke else (50, CORE_BATCH)
        self.compiles: list[str] = []  # the modes torch.compile was called with (smoke)
        if smoke:
            torch.compile = lambda fn, **kw: (self.compiles.append(str(kw.get("mode"))), fn)[1]
            # one thread: on this 2-core machine under a load of 10, a 1-step flip took 0.8 s on one thread and
            # 3-12 s on two (OpenMP's threads wait for each other while the load deschedules them)
            torch.set_num_threads(1)
        self._model = self.flops = None

    def build(self, **settings):
        """The real architecture with random weights, as vidanon builds it here (compiled on a GPU) unless
        `settings` say otherwise (LatentDiffusion's keywords)."""
        import torch
        from bench_core import core_model

        if self.smoke:
            settings.setdefault("compile", True)  # the compiled path, at no compile cost
            settings.setdefault("memory_format", torch.channels_last)  # the GPU's; bf16 on a CPU is 10x slower without
        return core_model(self.device, self.dtype, tiny=self.smoke, **settings)

    def model(self, fig: Figures):
        """The default model, warmed up at the core's batch: its FLOPs counted, compiled, cuDNN autotuned. The part
        that builds it (the warm-up, or the first part of a fresh worker) records how, as it goes: it may run out."""
        if self._model is None:
            from bench_core import flop_figures, warm_up

            t = time.perf_counter()
            model = self.build()
            fig.update({"build_s": time.perf_counter() - t, "batch": self.batch, "compiled": model.compiled,
                        "dtype": str(model.dtype), "memory_format": str(model.memory_format), "switches": self.switches})
            note(f"model built in {fig.data['build_s']:.1f} s (compiled: {model.compiled}, {model.dtype}, {model.memory_format})")
            self.flops = flop_figures(model, self.steps)
            fig["flops"] = self.flops
            note(f"FLOPs per face {self.flops['tflop_per_face']:.2f} TFLOP; matmul ceiling "
                 f"{self.flops['matmul_peak_tflops']:.0f} TFLOP/s = {self.flops['ceiling_faces_per_s']:.2f} faces/s")
            fig["warm_up_s"] = warm_up(model, self.batch)
            note(f"warm-up (one step at batch {self.batch}: compile, autotune) {fig.data['warm_up_s']:.1f} s")
            self.reset_peak()
            self._model = model
        return self._model

    def reset_peak(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self):
        import torch

        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None

    def part_figures(self, name: str) -> dict:
        """Another part's figures in this run (from an earlier worker too), {} if it did not run."""
        path = self.figures / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def core_faces_per_s(self) -> float | None:
        return _dig(self.part_figures("core"), "result", "faces_per_s")


# --- the parts ---------------------------------------------------------------------------------------


def part_env(run: Run, fig: Figures) -> None:
    import onnxruntime
    import torch

    from vidanon import compiling

    fig["python"] = platform.python_version()
    fig["cpu_count"] = os.cpu_count()
    fig["torch"], fig["cuda"], fig["cudnn"] = torch.__version__, torch.version.cuda, torch.backends.cudnn.version()
    fig["onnxruntime"], fig["onnxruntime_providers"] = onnxruntime.__version__, onnxruntime.get_available_providers()
    for mod in ("diffusers", "av", "numpy", "cryptography", "triton"):
        try:
            fig[mod] = __import__(mod).__version__
        except ImportError as e:
            fig[mod] = f"missing: {e}"
    cache = compiling.cache_dir()
    fig["compile_by_default"] = compiling.wanted(None, run.device)
    fig["inductor_cache"] = str(cache)
    fig["inductor_cache_files_before"] = sum(len(f) for _, _, f in os.walk(cache)) if cache.exists() else 0
    if run.device.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        fig["gpu"], fig["gpu_memory_gib"], fig["sm_count"] = p.name, p.total_memory / 2**30, p.multi_processor_count
        fig["compute_capability"] = f"{p.major}.{p.minor}"
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=10, check=False)
            fig["nvidia_smi"] = q.stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            fig["nvidia_smi"] = f"unavailable: {e}"
    else:
        fig["gpu"] = f"none (CPU, {torch.get_num_threads()} torch threads)"
    note(f"{fig.data['gpu']}; torch {torch.__version__}; compile by default: {fig.data['compile_by_default']}; "
         f"inductor cache {cache} ({fig.data['inductor_cache_files_before']} files)")


def part_warmup(run: Run, fig: Figures) -> None:
    """Import, build and warm up once (one step at the core's batch), then reset the peak memory."""
    run.model(fig)


def part_profile(run: Run, fig: Figures) -> None:
    """One UNet call at the core's batch, as vidanon runs it (compiled on a GPU) and eager: time per call, kernels
    launched, and the operators that took the most GPU time."""
    import torch
    from bench_core import sync, timed

    model = run.model(fig)
    b, dev = run.batch, run.device
    z = torch.randn(b, *model.latent_shape, device=dev).contiguous(memory_format=model.memory_format)
    t = torch.tensor(500, device=dev)
    calls = {"as run": lambda: model.eps(z, 500), "eager": lambda: model.unet(z.to(model.dtype), t)}
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    rows = {}
    for name, call in calls.items():
        with torch.no_grad():
            sec = timed(call, dev, repeat=2 if run.smoke else 10)
            with torch.profiler.profile(activities=activities) as prof:
                call()
                sync(dev)
        events = prof.key_averages()
        kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA) if dev.type == "cuda" else None
        rows[name] = {"ms_per_unet_call": sec * 1e3, "kernels": kernels,
                      "top_ops": events.table(sort_by=key, row_limit=15)}
        fig.update({"batch": b, "compiled": model.compiled, "calls": rows})
        note(f"UNet call at batch {b}, {name}: {sec * 1e3:.1f} ms" + (f", {kernels} kernels" if kernels is not None else ""))
        print(rows[name]["top_ops"], flush=True)


def part_core(run: Run, fig: Figures) -> None:
    """The core as vidanon runs it (compiled on a GPU) at batch 64, 50 steps, bf16: after the warm-up, no batch
    here compiles; peak memory counts from the warm-up's end."""
    from bench_core import batch_speed

    model = run.model(fig)
    run.reset_peak()
    row = batch_speed(model, run.batch, run.steps, run.flops, repeat=1 if run.smoke else 2, warm=False)
    fig.update({"steps": run.steps, "dtype": str(model.dtype), "compiled": model.compiled, "flops": run.flops,
                "switches": run.switches, "result": row})
    note(f"core at batch {run.batch}: {row['faces_per_s']:.2f} faces/s = {row['tflops']:.1f} TFLOP/s = "
         f"{row['of_ceiling']:.1%} of the ceiling; peak {row['peak_gib']:.1f} GiB")


def part_pipeline(run: Run, fig: Figures) -> None:
    """The pipeline with its default settings on the carried clip (1080p, 25 fps, 160 frames, 4 faces), in
    this process with the warm model: steady-state face-frames/s after the first window, against the core alone
    at the pipeline's batch on the same model."""
    from bench_core import batch_speed, warm_up
    from bench_pipeline import steady_state

    from vidanon import anonymize, stages
    from vidanon.config import Config

    model = run.model(fig)
    # The defaults but the step count (smoke: 1) and the model, passed in; smoke: the core's batch, not compiling anew.
    cfg = Config(model=model.name, steps=run.steps, **({"batch_size": run.batch} if run.smoke else {}))
    batch = stages.batch_size(cfg.batch_size, model)
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "smoke.mp4", SMOKE_CLIP_SIZE) if run.smoke else carried_clip()
        fig["clip"] = {"path": str(clip), "mib": clip.stat().st_size / 2**20,
                       **(SMOKE_CLIP_SIZE if run.smoke else CLIP_SIZE)}
        fig.update({"batch": batch, "steps": cfg.steps, "compiled": model.compiled})
        if batch != run.batch:
            fig["warm_up_s"] = warm_up(model, batch)
            note(f"warm-up at the pipeline's batch {batch} (compile, autotune): {fig.data['warm_up_s']:.1f} s")
        detector = anonymize.detector_for(cfg)
        fig["detector"] = detector.session.get_providers() if hasattr(detector, "session") else []
        note(f"detector {fig.data['detector']}; anonymizing {clip.name}")
        run.reset_peak()
        out = steady_state(clip, cfg, model, detector, on_window=Windows())
    out["peak_gib"], out["peak_rss_mib"] = run.peak_gib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fig.update(out)
    note(f"pipeline: {out['faces']} faces in {out['wall_s']:.1f} s, steady {out.get('steady_faces_per_s', float('nan')):.2f} "
         f"faces/s after the first window ({out['first_window_s'] or float('nan'):.1f} s); core busy {out['core_busy']:.0%}, "
         f"detection busy {out['detect_busy']:.0%}")
    alone = batch_speed(model, batch, run.steps, run.flops, warm=False)
    fig["core_alone_same_batch"] = alone
    steady = out.get("steady_faces_per_s")
    if steady:
        fig["pipeline_over_core_same_batch"] = steady / alone["faces_per_s"]
        core = run.core_faces_per_s()
        if core:
            fig["pipeline_over_core"] = steady / core
    note(f"core alone at batch {batch}: {alone['faces_per_s']:.2f} faces/s; pipeline/core "
         f"{fig.data.get('pipeline_over_core_same_batch', float('nan')):.0%} (same batch), "
         f"{fig.data.get('pipeline_over_core', float('nan')):.0%} (core at batch {run.batch})")


class Windows:
    """Prints each window as it is written, with the steady-state rate so far: a pipeline part that runs out of
    time still shows it."""

    def __init__(self):
        self.first, self.faces, self.frames = None, 0, 0

    def __call__(self, t: float, frames: int, faces: int) -> None:
        if self.first is None:
            self.first = t
            note(f"first window written at {t:.1f} s: {frames} frames, {faces} faces")
            return
        self.faces, self.frames = self.faces + faces, self.frames + frames
        note(f"window written at {t:.1f} s: {frames} frames, {faces} faces; steady so far "
             f"{self.faces / (t - self.first):.2f} faces/s, {self.frames / (t - self.first):.2f} frames/s")


def part_batches(run: Run, fig: Figures) -> None:
    """The default (compiled) core at smaller batches: each size is a compile of its own."""
    import torch
    from bench_core import batch_speed, warm_up

    model = run.model(fig)
    rows = []
    for b in (1,) if run.smoke else (8, 16, 32):
        try:
            warm = warm_up(model, b)
            rows.append({**batch_speed(model, b, run.steps, run.flops, warm=False), "warm_up_s": warm})
        except torch.OutOfMemoryError:
            rows.append({"batch": b, "out_of_memory": True})
            break
        fig["batches"] = rows
        note(f"batch {b}: warm-up {warm:.1f} s, {rows[-1]['faces_per_s']:.2f} faces/s ({rows[-1]['of_ceiling']:.1%})")


def part_naive(run: Run, fig: Figures) -> None:
    """The same work written as a diffusers user would: one face at a time, fp32, eager."""
    from bench_core import naive_speed

    faces = 1 if run.smoke else 2
    naive = naive_speed(run.device, run.steps, faces, tiny=run.smoke)
    fig.update({"faces_per_s": naive, "faces_timed": faces, "dtype": "fp32", "batch": 1})
    core = run.core_faces_per_s()
    if core:
        fig["core_over_naive"] = core / naive
    note(f"naive loop: {naive:.3f} faces/s; core/naive {fig.data.get('core_over_naive', float('nan')):.1f}x")


def part_precision(run: Run, fig: Figures) -> None:
    import torch
    from bench_core import precision_figures

    # smoke: bf16 convolutions on a CPU are 10x slower in the contiguous layout than in channels_last
    fmt = torch.channels_last if run.smoke else None
    fig.update(precision_figures(run.device, run.steps, tiny=run.smoke, batch=2 if run.smoke else 32, memory_format=fmt))
    note(f"bf16 ε vs fp32 {fig.data['eps_rel_err']}; whole flip bf16 vs fp32 {fig.data['face_rel_err_bf16_vs_fp32']:.2%}, "
         f"VQ bf16 vs fp32 {fig.data['face_rel_err_vq_bf16_vs_fp32']:.2%} ({fig.data['face_psnr_vq_bf16_vs_fp32_db']:.1f} dB)")


def lever_settings(name: str) -> dict:
    """What each lever changes from the default model (LatentDiffusion's keywords)."""
    import torch

    return {"lever-eager": {"compile": False},  # what compiling brought
            "lever-cudagraphs": {"compile": True, "compile_mode": "reduce-overhead"},  # CUDA graphs over each UNet call
            "lever-contiguous": {"memory_format": torch.contiguous_format},  # NCHW instead of channels_last
            "lever-vq-bf16": {"vq_dtype": torch.bfloat16}}[name]  # the VQ in bf16 (its error: the precision part)


def part_lever(run: Run, fig: Figures, name: str) -> None:
    """One lever against the default core at the same batch: its own model, warmed up (compiled), one batch timed."""
    import torch
    from bench_core import batch_speed, flop_figures, warm_up

    settings = lever_settings(name)
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
    model = run.build(**settings)
    flops = run.flops or flop_figures(model, run.steps)
    fig.update({"settings": {k: str(v) for k, v in settings.items()}, "batch": run.batch, "compiled": model.compiled})
    fig["warm_up_s"] = warm_up(model, run.batch)
    note(f"{name}: warm-up (one step at batch {run.batch}) {fig.data['warm_up_s']:.1f} s")
    run.reset_peak()
    row = batch_speed(model, run.batch, run.steps, flops, warm=False)
    fig["result"] = row
    default = run.core_faces_per_s()
    if default:
        fig["over_default"] = row["faces_per_s"] / default
    note(f"{name}: {row['faces_per_s']:.2f} faces/s ({row['of_ceiling']:.1%}); "
         f"{fig.data.get('over_default', float('nan')):.2f}x the default; peak {row['peak_gib'] or 0:.1f} GiB")


def run_part(run: Run, name: str, fig: Figures) -> None:
    if name.startswith("lever-"):
        part_lever(run, fig, name)
    else:
        globals()[f"part_{name}"](run, fig)
    if run.smoke and run.compiles:
        fig["smoke_compile_calls"] = list(run.compiles)


def make_clip(path: Path, size: dict) -> Path:
    from bench_pipeline import make_clip as bench_clip

    path.parent.mkdir(parents=True, exist_ok=True)
    return bench_clip(path, size["width"], size["height"], size["frames"], size["fps"]).path


def carried_clip() -> Path:
    if not CLIP.exists():
        note(f"{CLIP} was not carried: generating it here (python benchmarks/gpu_check.py --make-clip, then carry .gpu_clip)")
        tmp = make_clip(CLIP.with_suffix(".part.mp4"), CLIP_SIZE)
        tmp.replace(CLIP)
    return CLIP


# --- the worker and the driver ---------------------------------------------------------------------


def worker(names: list[str], figures: Path, smoke: bool) -> int:
    """Run the parts in order in this process, each between its '@@part NAME start' and '@@part NAME STATUS'."""
    run = None
    for name in names:
        print(f"@@part {name} start", flush=True)
        fig = Figures(figures / f"{name}.json")
        try:
            run = run or Run(smoke, figures)  # torch is imported here, in the first part's budget
            run_part(run, name, fig)
            status = "ok"
        except Exception as e:  # noqa: BLE001  any failure of one part is reported, and the next ones may still work
            traceback.print_exc()
            status = f"failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
        print(f"@@part {name} {status}", flush=True)
    return 0


def budget_of(name: str, smoke: bool, scale: float, given: dict) -> float:
    return round(given.get(name, BUDGETS[name][1 if smoke else 0]) * scale, 1)


def drive(parts: list[str], out: Path, smoke: bool, scale: float = 1.0, given: dict | None = None) -> dict:
    """Run `parts` in workers, each part under its budget; a part over it ends its worker and the next part starts
    in a fresh one. Returns {part: {status, seconds, budget_s, figures}}, written to OUTDIR as it goes."""
    given = given or {}
    results: dict = {}
    started = time.perf_counter()
    todo = list(parts)
    with tempfile.TemporaryDirectory() as tmp, open(out / "gpu_check.log", "w") as log:
        figures = Path(tmp)

        def done(name: str, status: str, since: float):
            path = figures / f"{name}.json"
            results[name] = {"status": status, "seconds": round(time.perf_counter() - since, 1),
                             "budget_s": budget_of(name, smoke, scale, given),
                             "figures": json.loads(path.read_text()) if path.exists() else {}}
            todo.remove(name)
            (out / "gpu_check.json").write_text(json.dumps({"smoke": smoke, "parts": results, "wall_s": time.perf_counter() - started},
                                                           indent=1, default=str))
            try:
                table = summary(results, smoke)
            except Exception as e:  # noqa: BLE001  a figure of an unexpected kind must not cost the run its figures
                table = f"summary failed ({type(e).__name__}: {e}); every figure is in gpu_check.json\n"
            (out / "gpu_check.md").write_text(table)
            print(f"{name}: {status} in {results[name]['seconds']} s", flush=True)

        while todo:
            cmd = [sys.executable, __file__, str(out), "--worker", ",".join(todo), "--figures", tmp] + (["--smoke"] if smoke else [])
            # a session of its own, so a part over budget is ended with everything it started (compile workers)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    start_new_session=True, env=_child_env())
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
            current, since, deadline = None, time.perf_counter(), time.perf_counter() + SLACK_S
            try:
                while True:
                    try:
                        line = lines.get(timeout=max(0.0, deadline - time.perf_counter()))
                    except queue.Empty:  # over budget: the part keeps the figures it wrote
                        _end(proc)
                        name = current or todo[0]
                        log.write(f"===== {name}: over budget, worker ended =====\n")
                        done(name, f"over budget ({budget_of(name, smoke, scale, given)} s): figures so far kept", since)
                        break
                    if line is None:  # the worker ended: in a part (a crash), or after its last one
                        code = proc.wait()
                        if current:  # the parts after it get a fresh worker
                            done(current, f"failed (worker exit {code})", since)
                        else:
                            for name in list(todo):  # ended between two parts: never loop on a worker that cannot start
                                done(name, f"not run (worker exit {code})", since)
                        break
                    log.write(line)
                    log.flush()
                    if line.startswith("@@part "):
                        _, name, status = line.rstrip("\n").split(" ", 2)
                        if status == "start":
                            current, since = name, time.perf_counter()
                            deadline = since + budget_of(name, smoke, scale, given)
                            log.write(f"===== {name} (budget {budget_of(name, smoke, scale, given)} s) =====\n")
                        else:
                            done(name, status, since)
                            current, deadline = None, time.perf_counter() + SLACK_S
                    else:
                        print(line, end="", flush=True)
            except BaseException:
                _end(proc)
                raise
    return results


def _pump(stream, lines: queue.Queue) -> None:
    """The worker's output lines into `lines`, then None at its end."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def _end(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _child_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = str(ROOT)  # the project itself, importable without installing it
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


# --- the summary -----------------------------------------------------------------------------------


def _pct(x):
    return "–" if x is None else f"{x:.1%}"


def _num(x, fmt=".2f"):
    return "–" if x is None else format(x, fmt)


def _dig(d, *path):
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def summary(results: dict, smoke: bool) -> str:
    """The table of targets and figures, as Markdown."""
    g = lambda part, *path: _dig(results.get(part, {}).get("figures", {}), *path)  # noqa: E731
    env = results.get("env", {}).get("figures", {})
    core = g("core", "result") or {}
    pipe = results.get("pipeline", {}).get("figures", {})
    calls = g("profile", "calls") or {}
    rows = [
        ("warm-up: build / one step at the core's batch (compile, autotune) s",
         f"{_num(g('warmup', 'build_s'), '.1f')} / {_num(g('warmup', 'warm_up_s'), '.1f')}", "compiled once per machine"),
        ("inductor cache files before the run", _num(env.get("inductor_cache_files_before"), "d"), ""),
        ("matmul ceiling TFLOP/s (8192², bf16)", _num(g("warmup", "flops", "matmul_peak_tflops"), ".0f"), ""),
    ]
    rows += [(f"profile: UNet call at batch {g('profile', 'batch')}, {name}: ms / kernels",
              f"{_num(r.get('ms_per_unet_call'), '.1f')} / {_num(r.get('kernels'), 'd')}", "") for name, r in calls.items()]
    rows += [
        ((f"core: faces/s at batch {core.get('batch', '–')}, {g('core', 'steps')} steps, {g('core', 'dtype')} "
          f"(compiled: {g('core', 'compiled')})"),
         _num(core.get("faces_per_s")), "≥ 19.5 on an H200"),
        ("core: TFLOP/s / of the measured ceiling", f"{_num(core.get('tflops'), '.1f')} / {_pct(core.get('of_ceiling'))}", "≥ 50 %"),
        ("core: peak GPU memory GiB", _num(core.get("peak_gib")), ""),
        ((f"pipeline: clip {_dig(pipe, 'clip', 'width')}×{_dig(pipe, 'clip', 'height')}, {pipe.get('frames', '–')} frames, "
          f"{pipe.get('faces', '–')} faces; batch {pipe.get('batch', '–')}"),
         f"{_num(pipe.get('wall_s'), '.1f')} s, first window at {_num(pipe.get('first_window_s'), '.1f')} s", ""),
        ("pipeline: warm-up at its batch s", _num(pipe.get("warm_up_s"), ".1f"), ""),
        ("pipeline: steady-state faces/s (after the first window) / whole run",
         f"{_num(pipe.get('steady_faces_per_s'))} / {_num(pipe.get('faces_per_s'))}", ""),
        ("pipeline: core busy / detection busy", f"{_pct(pipe.get('core_busy'))} / {_pct(pipe.get('detect_busy'))}", ""),
        ("pipeline: core alone at the same batch faces/s", _num(_dig(pipe, "core_alone_same_batch", "faces_per_s")), ""),
        ("pipeline / core, same batch", _pct(pipe.get("pipeline_over_core_same_batch")), "≥ 80 %"),
        (f"pipeline / core at batch {core.get('batch', '–')}", _pct(pipe.get("pipeline_over_core")), "≥ 80 %"),
        ("pipeline: detection runs with", ", ".join(pipe.get("detector") or []) or "–", "torch on the GPU, own stream"),
        ("pipeline: peak GPU memory GiB / peak RSS MiB", f"{_num(pipe.get('peak_gib'))} / {_num(pipe.get('peak_rss_mib'), '.0f')}", ""),
    ]
    for row in g("batches", "batches") or []:
        rows.append((f"batch {row['batch']}: faces/s (of ceiling), warm-up s", "out of memory" if row.get("out_of_memory") else
                     f"{_num(row['faces_per_s'])} ({_pct(row['of_ceiling'])}), {_num(row['warm_up_s'], '.1f')}", ""))
    if "naive" in results:
        rows.append(("naive diffusers loop faces/s; core / naive",
                     f"{_num(g('naive', 'faces_per_s'), '.3f')}; {_num(g('naive', 'core_over_naive'), '.1f')}×", "≥ 10×"))
    if "precision" in results:
        eps = g("precision", "eps_rel_err") or {}
        rows += [("bf16 ε rel. error vs fp32 (max over t)", _pct(max(eps.values()) if eps else None), "≤ 1 %"),
                 ("whole flip bf16 vs fp32: rel. / PSNR",
                  f"{_pct(g('precision', 'face_rel_err_bf16_vs_fp32'))} / {_num(g('precision', 'face_psnr_bf16_vs_fp32_db'), '.1f')} dB", ""),
                 ("whole flip, VQ bf16 vs fp32: rel. / PSNR",
                  f"{_pct(g('precision', 'face_rel_err_vq_bf16_vs_fp32'))} / {_num(g('precision', 'face_psnr_vq_bf16_vs_fp32_db'), '.1f')} dB",
                  "within bf16 UNet's 0.26 % / 66 dB")]
    for name in LEVERS:
        if name in results:
            r = g(name, "result") or {}
            rows.append((f"{name}: faces/s, × default; warm-up s",
                         f"{_num(r.get('faces_per_s'))}, {_num(g(name, 'over_default'))}×; {_num(g(name, 'warm_up_s'), '.1f')}", ""))
    head = (f"GPU check{' (SMOKE: tiny sizes, not figures)' if smoke else ''}: {env.get('gpu', '?')}; "
            f"{env.get('nvidia_smi', 'no nvidia-smi')}; torch {env.get('torch', '?')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}; "
            f"{env.get('cpu_count')} CPUs")
    parts = "; ".join(f"{k} {v['status']} in {v['seconds']} s" for k, v in results.items())
    lines = [head, "", f"parts: {parts}", "", "| figure | measured | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def _parts(text: str) -> list[str]:
    names: list[str] = []
    for s in (s.strip() for s in text.split(",")):
        for name in ALIASES.get(s, (s,) if s else ()):
            if name not in names:
                names.append(name)
    return names


def _budget(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    try:
        return name, float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget takes PART=SECONDS, not {text!r}") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, nargs="?", help="folder for gpu_check.json, gpu_check.md and gpu_check.log")
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                   help=f"comma-separated, from {', '.join(PARTS)}, or levers, all (default: {','.join(DEFAULT_PARTS)})")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on a CPU: checks that every code path runs, measures nothing")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's time budget (default 1)")
    p.add_argument("--budget", type=_budget, action="append", default=[], metavar="PART=SECONDS",
                   help="one part's budget in seconds, repeatable (default: BUDGETS in this file)")
    p.add_argument("--make-clip", action="store_true", help=f"write the carried clip {CLIP.relative_to(ROOT)} and stop")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--figures", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.make_clip:
        print(f"{make_clip(CLIP, CLIP_SIZE)}: {CLIP.stat().st_size / 2**20:.1f} MiB")
        return 0
    if a.worker:
        return worker(a.worker.split(","), a.figures, a.smoke)
    if a.out is None:
        p.error("OUTDIR is needed")
    parts = _parts(a.parts)
    unknown = [s for s in parts + [name for name, _ in a.budget] if s not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}, levers, all")
    a.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = drive(parts, a.out, a.smoke, a.budget_scale, dict(a.budget))
    print((a.out / "gpu_check.md").read_text() if results else "no part ran")
    print(f"wall {time.perf_counter() - started:.0f} s; figures in {a.out}/gpu_check.json")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
