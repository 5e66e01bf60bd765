#!/usr/bin/env bash
# Prepare NVIDIA DALI for a GPU machine without network access (run where pip can reach the index).
#
#   bash scripts/prepare_dali_wheels.sh [OUT_DIR]          # default .carry/dali (git-ignored)
#
# Downloads nvidia-dali-cuda130 and the dependencies it declares, as wheels for the GPU machine's
# interpreter (default CPython 3.12, manylinux x86_64; DALI_PYTHON=3.11 etc. for another), leaves out
# what a torch + lightning + pytest environment already has (PROVIDED below), packs the rest into one
# tar and splits it into parts of at most 60 MiB (PART_SIZE) with a SHA-256 list, so that each part
# fits one transfer. On the GPU machine, with the parts copied into one folder:
#
#   bash scripts/install_dali_wheels.sh FOLDER                  # cat, check, pip install --no-index --no-deps
#
# Never commit the wheels: OUT_DIR must stay git-ignored (/.carry/ is).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-.carry/dali}
PY=${DALI_PYTHON:-3.12}
DALI=${DALI_PACKAGE:-nvidia-dali-cuda130==2.4.0}
PART_SIZE=${PART_SIZE:-60M}
PIP=${PIP:-python -m pip}
# distributions a CUDA torch environment with lightning and pytest already holds (installing other
# versions over them would only risk breaking that environment)
PROVIDED=(numpy packaging typing_extensions pyyaml)

if git check-ignore -q "$OUT/x.whl" 2>/dev/null; then :; else
  echo "prepare_dali_wheels: $OUT is not git-ignored; use a folder under .carry/ (or add it to .gitignore)" >&2
  exit 2
fi

wheels="$OUT/wheels"
rm -rf "$wheels" "$OUT/parts"
mkdir -p "$wheels" "$OUT/parts"
# --only-binary with --platform/--python-version: pip resolves the dependencies for the target
# interpreter, not for this one (manylinux_2_28 and 2014 cover DALI's and its dependencies' tags)
$PIP download --quiet --dest "$wheels" --only-binary=:all: --implementation cp --python-version "$PY" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any "$DALI"

for name in "${PROVIDED[@]}"; do
  rm -f "$wheels/${name}"-[0-9]*.whl "$wheels/${name^}"-[0-9]*.whl "$wheels/${name//_/-}"-[0-9]*.whl
done
ls "$wheels" > "$OUT/wheels.txt"
(cd "$wheels" && sha256sum -- *.whl) > "$OUT/parts/wheels.sha256"
tar -C "$wheels" -cf "$OUT/dali-wheels.tar" .
split -b "$PART_SIZE" -d -a 2 "$OUT/dali-wheels.tar" "$OUT/parts/dali-wheels.tar.part-"
(cd "$OUT/parts" && sha256sum -- dali-wheels.tar.part-*) > "$OUT/parts/parts.sha256"
cp scripts/install_dali_wheels.sh "$OUT/parts/"
rm -f "$OUT/dali-wheels.tar"

echo "wheels for CPython $PY ($(wc -l < "$OUT/wheels.txt")):"
sed 's/^/  /' "$OUT/wheels.txt"
echo "parts in $OUT/parts (each <= $PART_SIZE):"
ls -l "$OUT/parts" | awk 'NR > 1 {printf "  %-32s %6.1f MiB\n", $9, $5 / 1048576}'
