#!/usr/bin/env bash
# Issue 13 on a CUDA machine, in under 5 minutes: PrebakedLoader(device="cuda") items/s against
# DataLoader(num_workers=8, pin_memory=True), its batches checked equal to the CPU path's on the
# device (prebake bench --gpu-loader), and the CUDA tests of the loader.
#
# Needs .venv (make .venv/bin/prebake) with a CUDA build of torch in place of the CPU wheel, e.g.
#   .venv/bin/pip install --force-reinstall torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
# Exit status: 0 all passed, 1 a check failed, 2 could not run.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
[ -x "$BIN/prebake" ] || { echo "gpu_loader_check: run 'make .venv/bin/prebake' first" >&2; exit 2; }
"$BIN/python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "gpu_loader_check: torch sees no CUDA device (a CPU wheel?)" >&2; exit 2; }
"$BIN/python" -c 'import torch; print("torch", torch.__version__, "on", torch.cuda.get_device_name())'
timeout 90 "$BIN/prebake" demo --out demo-out >/dev/null || { echo "gpu_loader_check: prebake demo failed" >&2; exit 2; }
status=0
timeout 150 "$BIN/prebake" bench demo-out/store.zarr --gpu-loader || status=1
timeout 60 "$BIN/pytest" -q -p no:cacheprovider tests/reader/test_loader.py -k "cuda or device" || status=1
exit $status
