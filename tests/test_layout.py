"""The repo's own `kernels`, `train` and `bench` folders are the ones imported, not PyPI namesakes."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["hexfast", "kernels", "train", "bench"]


@pytest.mark.parametrize("name", PACKAGES)
def test_local_package_is_imported(name):
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve() == REPO / name / "__init__.py"


def test_local_packages_win_from_the_repo_root_without_pytest():
    """`python -c` from the repo root (how the README's commands run) sees the same folders."""
    code = ("import sys, hexfast, kernels, train, bench; "
            "print('\\n'.join(m.__file__ for m in (hexfast, kernels, train, bench)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    files = [Path(line).resolve() for line in done.stdout.split()]
    assert files == [REPO / name / "__init__.py" for name in PACKAGES]
