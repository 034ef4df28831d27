#!/usr/bin/env bash
# The GPU check in one command (issue: GPU figures in one short run). On the GPU machine, from the repo root:
#     bash benchmarks/gpu_check.sh "$OUT"            # all parts, ≈ 5 minutes; figures in $OUT/gpu_check.{json,md,log}
#     bash benchmarks/gpu_check.sh "$OUT" --parts core,precision
# Where diffusers, PyAV or cryptography are missing, the carried wheels in .whl/ (made by
# benchmarks/prepare_gpu_wheels.sh) are installed without dependencies into /tmp/vidanon-site: the machine's
# own torch (older than the project's pin) is kept, and nothing is fetched.
# The project itself is used from this checkout (PYTHONPATH), also without dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: gpu_check.sh OUTDIR [--parts ...] [--smoke]}"; shift
if ! python3 -c "import diffusers, av, cryptography" 2>/dev/null; then
    compgen -G ".whl/*.whl" >/dev/null || { echo "gpu_check: diffusers/av/cryptography missing and no .whl/ carried" >&2; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vidanon-site .whl/*.whl
    export PYTHONPATH="/tmp/vidanon-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_check.py "$out" "$@"
