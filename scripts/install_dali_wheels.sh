#!/usr/bin/env bash
# Install the DALI wheels that scripts/prepare_dali_wheels.sh prepared, on a machine without network.
#
#   bash scripts/install_dali_wheels.sh FOLDER
#
# FOLDER holds all the parts dali-wheels.tar.part-NN, parts.sha256 and wheels.sha256. Before anything
# is installed: every part the manifest lists must be there (the missing ones are named), no part it
# does not list (a left-over of another prepare run), and every checksum must match (the corrupt
# parts are named: copy them again). Then the parts are joined, unpacked into a temporary folder,
# the wheels checked against wheels.sha256 and installed with `pip install --no-index --no-deps`
# (DALI_TARGET=DIR: into DIR with --target instead of the environment), and nvidia.dali is imported.
set -euo pipefail
DIR=${1:?usage: install_dali_wheels.sh FOLDER (with dali-wheels.tar.part-NN, parts.sha256, wheels.sha256)}
PYTHON=${PYTHON:-python}
PIP=${PIP:-$PYTHON -m pip}

die() { echo "install_dali_wheels: $*" >&2; exit 2; }

[ -d "$DIR" ] || die "$DIR is not a folder"
cd "$DIR"
for f in parts.sha256 wheels.sha256; do
  [ -s "$f" ] || die "$DIR/$f is missing: copy it with the parts (prepare_dali_wheels.sh wrote it)"
done

mapfile -t listed < <(awk '{print $2}' parts.sha256)
[ "${#listed[@]}" -gt 0 ] || die "parts.sha256 lists no part"
missing=()
for part in "${listed[@]}"; do
  [ -f "$part" ] || missing+=("$part")
done
[ "${#missing[@]}" -eq 0 ] \
  || die "${#missing[@]} of ${#listed[@]} parts missing in $DIR: ${missing[*]} (nothing was installed)"
for part in dali-wheels.tar.part-*; do
  grep -qxF "$part" < <(printf '%s\n' "${listed[@]}") \
    || die "$part is not in parts.sha256 (a part of another prepare run?): remove it (nothing was installed)"
done
if ! bad=$(sha256sum --check --quiet parts.sha256 2>&1); then
  die "checksum mismatch, copy these parts again (nothing was installed): $(echo "$bad" | grep FAILED | sed 's/: FAILED.*//' | tr '\n' ' ')"
fi

sums="$(pwd -P)/wheels.sha256"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat "${listed[@]}" | tar -C "$work" -xf -
(cd "$work" && sha256sum --check --quiet "$sums") \
  || die "the unpacked wheels do not match wheels.sha256 (nothing was installed)"
target=()
if [ -n "${DALI_TARGET:-}" ]; then
  mkdir -p "$DALI_TARGET"
  target=(--target "$DALI_TARGET")
  export PYTHONPATH="$(cd "$DALI_TARGET" && pwd -P)${PYTHONPATH:+:$PYTHONPATH}"
fi
$PIP install --no-index --no-deps --quiet "${target[@]}" "$work"/*.whl
$PYTHON -c "import nvidia.dali as d, nvidia.dali.plugin.pytorch; print('DALI', d.__version__, 'from', d.__file__)"
if [ -z "${DALI_TARGET:-}" ]; then
  $PIP check || echo "install_dali_wheels: pip check reports the unmet requirements above" >&2
fi
