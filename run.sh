#!/usr/bin/env bash
# One entry point that sets itself up on a fresh clone (only Python >= 3.10 and pip needed):
#   bash run.sh pretrain [train.pretrain args]   the main job: SSL pretraining with HEX
#   bash run.sh test [pytest args]               the test suite (CPU; Triton kernels interpreted)
#   bash run.sh bench [pytest args]              the benchmark suites
#   bash run.sh lint [ruff args]                 ruff check (rules in pyproject.toml)
# It uses the active virtual environment if there is one, else creates .venv here, and installs the
# project with the extras the command needs (skipped when pyproject.toml has not changed since).
set -euo pipefail
cd "$(dirname "$0")"

cmd="${1:-}"
case "$cmd" in
  pretrain|test|bench|lint) shift ;;
  *) echo "usage: bash run.sh {pretrain|test|bench|lint} [args...]" >&2; exit 2 ;;
esac

if [ -n "${VIRTUAL_ENV:-}" ]; then
  py=python
else
  base_py=$(command -v python3 || command -v python || true)
  [ -n "$base_py" ] || { echo "run.sh: no python3 found; install Python >= 3.10" >&2; exit 2; }
  [ -x .venv/bin/python ] || "$base_py" -m venv .venv
  py=.venv/bin/python
fi

# Extras: the tests and benchmarks exercise everything (DALI's CPU operators included; lightly, the
# benchmarks' CPU baseline, so that the tests checking that baseline run in CI too).
if [ "$cmd" = pretrain ]; then extras="train,triton"; probe="torch, lightning, torchvision"
elif [ "$cmd" = bench ]; then extras="dev,dali,bench"; probe="torch, lightning, torchvision, pytest, pytest_benchmark, lightly"
else extras="dev,dali,bench"; probe="torch, lightning, torchvision, pytest, pytest_benchmark, lightly"; fi
[ "$cmd" = lint ] && probe="ruff"
need_install=0
if [ -n "${VIRTUAL_ENV:-}" ]; then
  "$py" -c "import $probe" 2>/dev/null || need_install=1
else
  stamp=".venv/.hexfast-installed-$(cksum < pyproject.toml | cut -d' ' -f1)-$extras"
  [ -f "$stamp" ] || need_install=1
fi
if [ "$need_install" = 1 ]; then
  echo "run.sh: installing hexfast[$extras] into $("$py" -c 'import sys; print(sys.prefix)') (first run only)"
  "$py" -m pip install -q -e ".[$extras]"
  [ -n "${VIRTUAL_ENV:-}" ] || touch "$stamp"
fi

case "$cmd" in
  pretrain) exec "$py" -m train.pretrain "$@" ;;
  test) exec "$py" -m pytest tests "$@" ;;
  bench) exec "$py" -m pytest bench --benchmark-only "$@" ;;
  lint) exec "$py" -m ruff check . "$@" ;;
esac
