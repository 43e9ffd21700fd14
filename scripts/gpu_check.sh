#!/usr/bin/env bash
# Issue 16's GPU check, on a node with a CUDA GPU and this repository, in at most 5 minutes:
#   - resize ms per frame: torch on the GPU against Pillow on one core (720p H.264 and
#     1401 x 1037 JPEG synthetic sources);
#   - whole-build frames/s with every core decoding: --resize torch --device cuda against the
#     CPU-only (Pillow) build on the same node, and the ratio against the 5 x target;
#   - the two stores compared byte for byte: PASS or FAIL.
#
# Usage: scripts/gpu_check.sh
#   PYTHON  a Python whose environment has a CUDA build of torch (default: .venv/bin/python if
#           it exists, else python3); prebake's other requirements are installed into it.
#   GPU_CHECK_SECONDS  the time limit (default 300); GPU_DEVICE  cuda or cuda:N (default cuda).
# Exit status: 0 every byte equal, 1 a byte differs, 2 no usable GPU or setup failed,
# 124 out of time (what was measured is printed on stderr as it goes).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
limit=${GPU_CHECK_SECONDS:-300}
device=${GPU_DEVICE:-cuda}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "FAIL  $PYTHON: no CUDA device for its torch (a CUDA build of torch and a visible GPU are needed)"
    exit 2
fi
# prebake and its other requirements (the installed CUDA torch satisfies prebake's torch>=2.1).
if ! "$PYTHON" -c "import prebake.bench.gpu" 2>/dev/null; then
    echo "gpu check: installing prebake into $PYTHON's environment" >&2
    "$PYTHON" -m pip install --quiet --no-build-isolation -e . \
        || "$PYTHON" -m pip install --quiet -e . \
        || { echo "FAIL  could not install prebake into $PYTHON's environment"; exit 2; }
fi
"$PYTHON" -c "import torch; print('gpu check:', torch.__version__, torch.cuda.get_device_name())" >&2

left=$((limit - ($(date +%s) - started)))
if ((left <= 0)); then
    echo "FAIL  out of time after setting up"
    exit 124
fi
exec timeout --signal=INT --kill-after=10 "$left" \
    "$PYTHON" -c "from prebake.cli import main; main()" bench --gpu --gpu-device "$device"
