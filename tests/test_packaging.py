"""`pip install` beside PyPI's `kernels`: hexfast owns only the top-level name `hexfast`.

Builds the wheel from a copy of the sources, installs PyPI's `kernels` (the Hugging Face kernel hub
client) into a fresh virtual environment, then hexfast without dependencies. The environment reuses
this interpreter's packages (torch, lightning, ...) through a .pth file pointing at a view of its
site-packages without hexfast itself, so nothing heavy is installed. Afterwards: both packages
import in one process and work (PyPI's files untouched, hexfast's fused kernel through its bundled
copy), `hexfast-pretrain` trains from an unrelated folder, and the README's quick start (`bash
run.sh pretrain`) still runs from the checkout.
"""

import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPI_KERNELS = "kernels==0.17.2"
TINY = ["--epochs", "1", "--max-steps", "2", "--batch-size", "32", "--backbone", "tiny", "--kernel", "torch",
        "--loader", "torchvision", "model.tiny_width=4", "data.train_subset=64", "data.eval_subset=32",
        "data.num_workers=0", "train.progress_bar=false", "simclr.proj_hidden_dim=16", "simclr.proj_output_dim=8",
        "eval.max_bank=64"]

CHECK = r"""
import importlib.metadata as md, importlib.util, json, sys
import kernels                                    # PyPI's, imported first
import torch
import hexfast
from hexfast.hex_loss import hex_loss

z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
ref = hex_loss(z1, z2, kernel="torch")
fused = hex_loss(z1, z2, kernel="triton")        # the bundled kernel, under TRITON_INTERPRET=1
files = sorted({str(f).split("/")[0] for f in md.files("hexfast")})
print(json.dumps({
    "kernels_file": kernels.__file__, "kernels_api": callable(getattr(kernels, "get_kernel", None)),
    "kernels_still_pypi": sys.modules["kernels"] is kernels,
    "hexfast_file": hexfast.__file__, "kernel_module": sys.modules["hexfast._kernels.backend"].__file__,
    "train_found": importlib.util.find_spec("train") is not None,
    "close": bool(torch.allclose(ref, fused, rtol=1e-4, atol=1e-5)), "top_level": files,
}))
"""


CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(cmd, **kw):
    kw.setdefault("env", CLEAN_ENV)
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_install_beside_pypi_kernels(tmp_path):
    # the wheel, built from a copy so no build folder is left in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("hexfast", "kernels", "train"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
          src])
    wheel = next((tmp_path / "dist").glob("hexfast-*.whl"))

    # a fresh environment that sees this one's packages, minus hexfast's own install
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    vpy = venv / "bin" / "python"
    purelib = Path(_run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    view = tmp_path / "shared"
    view.mkdir()
    for base in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]]):
        for entry in Path(base).iterdir():
            own = entry.name.lower().startswith(("hexfast", "__editable__", "_hexfast"))
            if not own and not entry.name.endswith(".pth") and not (view / entry.name).exists():
                (view / entry.name).symlink_to(entry)
    (purelib / "_shared_packages.pth").write_text(f"{view}\n")
    pip = [vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(pip + [PYPI_KERNELS])
    pypi_kernels = purelib / "kernels"
    before = _tree_hash(pypi_kernels)
    _run(pip + ["--no-deps", wheel])
    assert _tree_hash(pypi_kernels) == before  # hexfast wrote nothing into PyPI's package

    env = dict(CLEAN_ENV)
    env.update(TRITON_INTERPRET="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    work = tmp_path / "elsewhere"
    work.mkdir()
    got = json.loads(_run([vpy, "-c", CHECK], cwd=work, env=env).stdout.strip().splitlines()[-1])
    assert got["kernels_file"].startswith(str(pypi_kernels)) and got["kernels_api"] and got["kernels_still_pypi"]
    assert got["hexfast_file"].startswith(str(purelib / "hexfast"))
    assert got["kernel_module"].startswith(str(purelib / "hexfast" / "_kernels"))
    assert not got["train_found"] and got["close"]
    assert [f for f in got["top_level"] if not f.endswith(".dist-info") and f != ".."] == ["hexfast"], got["top_level"]

    # the console script, from an unrelated folder
    _run([venv / "bin" / "hexfast-pretrain", *TINY, "--out", tmp_path / "run1"], cwd=work, env=env)
    assert json.loads((tmp_path / "run1" / "summary.json").read_text())["steps"] == 2
    # the README's quick start, from the checkout, in that environment
    _run(["bash", ROOT / "run.sh", "pretrain", *TINY, "--out", tmp_path / "run2"], cwd=ROOT,
         env=dict(env, VIRTUAL_ENV=str(venv)))
    assert json.loads((tmp_path / "run2" / "summary.json").read_text())["steps"] == 2


def _setup_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hexfast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_build_rewrites_only_the_bundled_imports():
    rewrite = _setup_module().rewrite_imports
    source = ("from train.config import X\n    from kernels import hex_triton, quantile\nimport kernels  # noqa\n"
              "import train.data as d\nfrom trainer import y\nimport kernelsx\nx = 'from train import z'\n")
    assert rewrite(source) == (
        "from hexfast._train.config import X\n    from hexfast._kernels import hex_triton, quantile\n"
        "import hexfast._kernels as kernels  # noqa\nimport hexfast._train.data as d\nfrom trainer import y\n"
        "import kernelsx\nx = 'from train import z'\n")
    with pytest.raises(SystemExit, match="binds the top-level name 'train'"):
        rewrite("import train.config\n")
