#!/usr/bin/env bash
# Two things to run on a CUDA machine.
#
# 1. The GPU validation, bench/gpu_check.py (about 4 minutes; docs/guides/gpu_check.md): crash smoke of every
#    recipe, host-device syncs per step, images/s, memory and MFU against the model alone, compile on and off,
#    kNN on the device against the CPU, written as JSON lines to OUT as they are measured. Needs only Python
#    and torch there: bring bench/.gpu_payload/ (bash bench/gpu_wheels.sh) along with the working tree.
#
#   bash bench/gpu.sh check OUT              # OUT/gpu_check.jsonl, OUT/train.log, OUT/console.log
#
#    CHECK_TIMEOUT (default 280 s) stops it, keeping what was measured; CHECK_ARGS adds options
#    (e.g. "--sections smoke,knn"); DEVICE=cpu runs every section at tiny sizes on a CPU.
#
# 2. The five comparison benchmarks, in under 11 minutes all together: each runs under its own time
# limit (90 + 70 + 200 + 60 + 180 s, plus at most 10 s each to stop one that overruns: 10:50 at worst). The
# limits follow what each spends: vs_lightly.py starts a fresh process per repetition (imports, CUDA start-up),
# loss_vs_lightly.py one per side for its memory figure.
#
#   bash bench/gpu.sh                        # prints the tables
#   bash bench/gpu.sh bench/RESULTS.md       # also writes them into that file (the "(cuda)" sections)
#
# Environment:
#   PYTHON     the interpreter that has torch (the check) or cl-run, kornia, timm and lightly installed (the
#              comparisons) (default: python3)
#   DATA_ROOT  a folder holding the four Fashion-MNIST idx .gz files, if not /usr/share/datasets/fashion-mnist
#   GPU_ARGS   extra options for the three training benchmarks (e.g. "--backbone resnet10t --batch-size 256")
#   LOSS_ARGS  extra options for loss_vs_lightly.py
#   DEVICE     cuda (default); DEVICE=cpu runs the same plumbing on a CPU, to try this script without a GPU
#
# Settings of the comparisons: timm/resnet18 (the CIFAR recipes' backbone; the quickstart's resnet10t leaves an
# H200 idle) on the quickstart's Fashion-MNIST recipe at batch 512, fp32 as the recipe says; 20 warm-up and 150
# timed steps, 3 interleaved repetitions per side. Each timed window is a few seconds of GPU work; building,
# process start-up and CUDA initialization take most of each limit.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
started=$SECONDS

if [ "${1:-}" = "check" ]; then
  out=${2:?usage: bash bench/gpu.sh check OUT_FOLDER}
  mkdir -p "$out"
  data=()
  [ -n "${DATA_ROOT:-}" ] && data=(--data-root "$DATA_ROOT")
  # shellcheck disable=SC2086  # CHECK_ARGS is meant to split into options
  timeout -k 10 "${CHECK_TIMEOUT:-280}" "$PYTHON" bench/gpu_check.py --out "$out" --device "$DEVICE" "${data[@]}" \
    ${CHECK_ARGS:-} 2>&1 | tee "$out/console.log"
  exit "${PIPESTATUS[0]}"
fi

results=()
[ $# -ge 1 ] && results=(--results "$1")
data=()
[ -n "${DATA_ROOT:-}" ] && data=(--data-root "$DATA_ROOT")
# shellcheck disable=SC2206  # GPU_ARGS and LOSS_ARGS are meant to split into options
train=(--device "$DEVICE" --backbone resnet18 --batch-size 512 --warmup 20 --steps 150 --repeats 3 ${GPU_ARGS:-})
# shellcheck disable=SC2206
loss=(--device "$DEVICE" --warmup 10 --steps 100 --repeats 3 ${LOSS_ARGS:-})

# Fail in seconds, not after minutes of GPU time, when something is missing.
DEVICE=$DEVICE DATA_ROOT=${DATA_ROOT:-} "$PYTHON" - <<'EOF' || exit 1
import os, sys
import torch
if os.environ["DEVICE"].startswith("cuda") and not torch.cuda.is_available():
    sys.exit("gpu.sh: torch sees no CUDA device here (DEVICE=cpu tries the script on a CPU)")
for module, install in (("clrun", "pip install -e ."), ("kornia", "pip install -e ."), ("timm", "pip install -e ."),
                        ("lightly", "pip install 'lightly==1.6.0'")):
    try:
        __import__(module)
    except ImportError:
        sys.exit(f"gpu.sh: {module} is not installed for {sys.executable}: {install}")
import clrun
root = {"root": os.environ["DATA_ROOT"]} if os.environ["DATA_ROOT"] else {}
try:
    clrun.create("dataset", "clrun/fashion_mnist", split="test", **root)
except clrun.UserError as exc:
    sys.exit(f"gpu.sh: {exc} (or set DATA_ROOT)")
print(f"gpu.sh: torch {torch.__version__}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
EOF

status=0
run() {  # run LIMIT SCRIPT ARGS...: one benchmark, stopped if it runs past LIMIT seconds
  local limit=$1 script=$2
  shift 2
  echo "== $script (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$PYTHON" "$script" "$@" || {
    echo "!! $script failed or ran past ${limit} s"
    status=1
  }
}
run 90 bench/overhead.py "${train[@]}" "${data[@]}" "${results[@]}"
run 70 bench/pipeline.py "${train[@]}" "${data[@]}" "${results[@]}"
run 200 bench/vs_lightly.py "${train[@]}" "${data[@]}" "${results[@]}"
run 60 bench/loss_vs_lightly.py "${loss[@]}" "${results[@]}"
# The data paths (image folder, tar shards, Parquet stream) feeding the GPU, and step-level checkpoints.
run 180 bench/scale_out.py --device "$DEVICE" --images 2000 --steps 40 "${results[@]}"
echo "gpu.sh: done in $((SECONDS - started)) s"
exit $status
