#!/usr/bin/env bash
# The GPU check in one command. Here, once: bash benchmarks/prepare_gpu_wheels.sh (the wheels, .whl/) and
# python benchmarks/gpu_check.py --make-clip (the 1080p clip, .gpu_clip/); the device call carries both
# (carry: [".whl", ".gpu_clip"]). On the GPU machine, from the repo root:
#     bash benchmarks/gpu_check.sh "$OUT"                 # the default parts, ≤ 5 minutes; figures in $OUT/gpu_check.{json,md,log}
#     bash benchmarks/gpu_check.sh "$OUT" --parts levers  # each lever against the default core (≈ 4.5 minutes)
# Where diffusers, PyAV or cryptography are missing, the carried wheels are installed without dependencies into
# /tmp/vidanon-site: the machine's own torch (older than the project's pin) is kept, and nothing is fetched.
# The project itself is used from this checkout (PYTHONPATH), also without dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: gpu_check.sh OUTDIR [--parts ...] [--smoke]}"; shift
echo "gpu_check.sh: $(date -u +%H:%M:%S) start"
if ! python3 -c "import diffusers, av, cryptography" 2>/dev/null; then
    compgen -G ".whl/*.whl" >/dev/null || { echo "gpu_check: diffusers/av/cryptography missing and no .whl/ carried" >&2; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vidanon-site .whl/*.whl
    export PYTHONPATH="/tmp/vidanon-site${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu_check.sh: $(date -u +%H:%M:%S) carried wheels installed"
fi
[ -f .gpu_clip/clip1080p25.mp4 ] || echo "gpu_check.sh: .gpu_clip/ not carried: the pipeline part will generate its clip (≈ 10-20 s)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_check.py "$out" "$@"
