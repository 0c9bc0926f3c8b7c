#!/usr/bin/env bash
# The payload that bench/gpu_check.py needs on a GPU machine that has Python 3.12 and torch 2.11 (with
# torchvision) but nothing else and no network: wheels of cl-run's other dependencies, cp312 manylinux
# x86_64 where they are binary, and the four Fashion-MNIST .gz files. Run it here, where PyPI is reachable;
# send bench/.gpu_payload/ along with the working tree (it is git-ignored: name it among the paths carried).
#
#   bash bench/gpu_wheels.sh                 # fills bench/.gpu_payload/{wheels,fashion-mnist}, prints its size
#
# Environment:
#   PYTHON          the interpreter whose pip downloads (default: python3; any version, pip downloads for 3.12)
#   PY_VERSION      the GPU machine's Python (default 3.12)
#   PAYLOAD         where to put it (default bench/.gpu_payload)
#   DATA_ROOT       the Fashion-MNIST files (default /usr/share/datasets/fashion-mnist, Debian's
#                   dataset-fashion-mnist package)
#   EXTRA_WHEELS    more requirements, space-separated, for a machine without torchvision (which brings numpy
#                   and pillow): EXTRA_WHEELS="torchvision==0.26.0 numpy==2.4.6 pillow==13.0.0" (about 30 MB
#                   more: check the size printed)
#
# The versions are the ones cl-run's CI tests (the dev environment's). No dependency resolution (--no-deps):
# the list is what `import clrun`, a training run and its evaluators import beyond torch and torchvision.
# bench/gpu_check.py unpacks the wheels behind the machine's own packages (a package it has wins) and
# records every version it finds; its first JSON line says which came from the payload.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}
PAYLOAD=${PAYLOAD:-bench/.gpu_payload}
DATA_ROOT=${DATA_ROOT:-/usr/share/datasets/fashion-mnist}
LIMIT_MIB=64

WHEELS=(
  kornia==0.9.0 kornia_rs==0.2.0   # the views (kornia_rs: kornia's compiled part)
  timm==1.0.31                      # the backbones
  webdataset==1.0.2 braceexpand==0.1.7  # clrun/webdataset (imported with the data sets)
  pluggy==1.7.0 PyYAML==6.0.4       # cl-run's plugins and recipes
  safetensors==0.8.0                # the encoder file written at a run's end
  tqdm==4.70.1 packaging==26.4      # progress bars; kornia's version checks
)
# shellcheck disable=SC2206  # EXTRA_WHEELS is meant to split into requirements
WHEELS+=(${EXTRA_WHEELS:-})

rm -rf "$PAYLOAD/wheels" "$PAYLOAD/fashion-mnist"
mkdir -p "$PAYLOAD/wheels" "$PAYLOAD/fashion-mnist"
abi="cp${PY_VERSION/./}"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$PAYLOAD/wheels" \
  --python-version "$PY_VERSION" --implementation cp --abi "$abi" --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any "${WHEELS[@]}"

for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  if [ ! -f "$DATA_ROOT/$f" ]; then
    echo "gpu_wheels.sh: $DATA_ROOT/$f not found (apt-get install dataset-fashion-mnist, or set DATA_ROOT)" >&2
    exit 1
  fi
  cp "$DATA_ROOT/$f" "$PAYLOAD/fashion-mnist/"
done

ls -1 "$PAYLOAD/wheels"
bytes=$(du -sb "$PAYLOAD" | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "gpu_wheels.sh: $PAYLOAD is $bytes bytes (${mib} MiB; the limit is $LIMIT_MIB MiB)"
if [ "$bytes" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu_wheels.sh: over the limit: drop EXTRA_WHEELS or send the data another way" >&2
  exit 1
fi
