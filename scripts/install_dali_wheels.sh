#!/usr/bin/env bash
# Install the DALI wheels that scripts/prepare_dali_wheels.sh prepared, on a machine without network.
#
#   bash scripts/install_dali_wheels.sh FOLDER
#
# FOLDER holds dali-wheels.tar.part-NN (all of them), parts.sha256 and wheels.sha256. The parts are
# checked, joined (cat), unpacked and installed with `pip install --no-index --no-deps`; then DALI is
# imported and `pip check` lists any requirement the environment does not meet.
set -euo pipefail
DIR=${1:?usage: install_dali_wheels.sh FOLDER (with dali-wheels.tar.part-NN, parts.sha256, wheels.sha256)}
PIP=${PIP:-python -m pip}
cd "$DIR"
sha256sum --check --quiet parts.sha256
mkdir -p wheels
cat dali-wheels.tar.part-* | tar -C wheels -xf -
(cd wheels && sha256sum --check --quiet ../wheels.sha256)
$PIP install --no-index --no-deps --quiet wheels/*.whl
python -c "import nvidia.dali as d, nvidia.dali.plugin.pytorch; print('DALI', d.__version__)"
$PIP check || echo "install_dali_wheels: pip check reports the unmet requirements above" >&2
