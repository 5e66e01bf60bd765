#!/usr/bin/env bash
# Prepare NVIDIA DALI for a GPU machine without network access.
#
#   bash scripts/prepare_dali_wheels.sh [OUT_DIR]          # default .carry/dali (git-ignored)
#
# Resolves nvidia-dali-cuda130 (the build pyproject.toml's `dali` extra names; DALI_PACKAGE for
# another, e.g. nvidia-dali-cuda120==2.4.0 on CUDA 12) and the dependencies it declares, as wheels for
# the GPU machine's interpreter (default CPython 3.12, manylinux x86_64; DALI_PYTHON=3.11 etc.),
# leaves out what a torch + lightning + pytest environment already has (PROVIDED below), packs the
# rest into one tar and splits it into parts of PART_SIZE (default 52M: at most 60 MiB, and small
# enough that one part plus the checkout still fits a 64 MiB transfer) with SHA-256 manifests:
#
#   OUT_DIR/parts/dali-wheels.tar.part-00, -01, ...   the parts
#   OUT_DIR/parts/parts.sha256                         every part and its checksum (the manifest)
#   OUT_DIR/parts/wheels.sha256                        every wheel in the tar and its checksum
#   OUT_DIR/parts/install_dali_wheels.sh               the install command (a copy)
#
# The wheels come from the package index, or, without network, from a folder of wheels
# (DALI_FIND_LINKS=DIR: pip resolves from that folder alone, e.g. an earlier OUT_DIR/wheels or
# wheels saved with `pip download`). On the GPU machine, with the parts copied into one folder:
#
#   bash scripts/install_dali_wheels.sh FOLDER       # checks, joins, pip install --no-index --no-deps
#
# Never commit the wheels: an OUT_DIR inside the checkout must be git-ignored (/.carry/ is).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-.carry/dali}
PY=${DALI_PYTHON:-3.12}
DALI=${DALI_PACKAGE:-nvidia-dali-cuda130==2.4.0}
PART_SIZE=${PART_SIZE:-52M}
PIP=${PIP:-python -m pip}
# distributions a CUDA torch environment with lightning and pytest already holds (installing other
# versions over them would only risk breaking that environment)
PROVIDED=(numpy packaging typing_extensions pyyaml)

die() { echo "prepare_dali_wheels: $*" >&2; exit 2; }

out_abs=$(realpath -m "$OUT")
root=$(pwd -P)
case "$out_abs/" in
  "$root"/*)  # inside the checkout: only where git ignores it
    git check-ignore -q "$OUT/x.whl" 2>/dev/null \
      || die "$OUT is inside the checkout and not git-ignored; use a folder under .carry/ (or add it to .gitignore)";;
esac

source_args=()
if [ -n "${DALI_FIND_LINKS:-}" ]; then
  [ -d "$DALI_FIND_LINKS" ] || die "DALI_FIND_LINKS=$DALI_FIND_LINKS is not a folder"
  source_args=(--no-index --find-links "$DALI_FIND_LINKS")
fi

mkdir -p "$OUT"
wheels="$OUT/wheels"
rm -rf "$wheels" "$OUT/parts"
mkdir -p "$wheels" "$OUT/parts"
# --only-binary with --platform/--python-version: pip resolves the dependencies for the target
# interpreter, not for this one (manylinux_2_28 and 2014 cover DALI's and its dependencies' tags)
$PIP download --quiet "${source_args[@]}" --dest "$wheels" --only-binary=:all: --implementation cp \
  --python-version "$PY" --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  --platform any "$DALI" || die "pip could not get $DALI for CPython $PY (no network? set DALI_FIND_LINKS)"

# what to pack: every wheel but the PROVIDED ones (they stay in $wheels, so that the folder remains a
# complete resolution that DALI_FIND_LINKS can use again)
packed=()
for whl in "$wheels"/*.whl; do
  dist=$(basename "$whl" | cut -d- -f1 | tr '[:upper:]-' '[:lower:]_')
  case " ${PROVIDED[*]} " in *" $dist "*) continue;; esac
  packed+=("$(basename "$whl")")
done
[ "${#packed[@]}" -gt 0 ] || die "no wheel left to pack in $wheels"
printf '%s\n' "${packed[@]}" > "$OUT/wheels.txt"
(cd "$wheels" && sha256sum -- "${packed[@]}") > "$OUT/parts/wheels.sha256"
tar -C "$wheels" -cf "$OUT/dali-wheels.tar" -- "${packed[@]}"
split -b "$PART_SIZE" -d -a 2 "$OUT/dali-wheels.tar" "$OUT/parts/dali-wheels.tar.part-"
(cd "$OUT/parts" && sha256sum -- dali-wheels.tar.part-*) > "$OUT/parts/parts.sha256"
cp scripts/install_dali_wheels.sh "$OUT/parts/"
rm -f "$OUT/dali-wheels.tar"

echo "wheels for CPython $PY ($(wc -l < "$OUT/wheels.txt")):"
sed 's/^/  /' "$OUT/wheels.txt"
echo "parts in $OUT/parts (each <= $PART_SIZE):"
ls -l "$OUT/parts" | awk 'NR > 1 {printf "  %-32s %9.3f MiB\n", $9, $5 / 1048576}'
