"""scripts/prepare_dali_wheels.sh and scripts/install_dali_wheels.sh end to end, offline, on small fake
wheels: prepare resolves the package and its dependency from a local folder (leaving out what the
GPU environment already has), splits the tar into several parts with a manifest; install checks the
parts, joins them, installs into a throwaway target and imports nvidia.dali from there. A missing,
corrupt or foreign part is refused, naming it, before anything is installed."""
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("sha256sum") is None or shutil.which("split") is None,
                                reason="needs coreutils (sha256sum, split)")


def _wheel(folder: Path, name: str, version: str, files: dict, requires=()) -> Path:
    """A minimal valid py3-none-any wheel."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {**files,
             f"{dist}.dist-info/METADATA": "Metadata-Version: 2.1\nName: " + name + "\nVersion: " + version + "\n"
             + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
             "Tag: py3-none-any\n"}
    record = []
    for path, data in files.items():
        data = data.encode() if isinstance(data, str) else data
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    out = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dali")
    index = tmp / "index"
    index.mkdir()
    blob = os.urandom(40_000)  # incompressible: the tar spans several 8 KiB parts
    _wheel(index, "fake-nvidia-dali", "0.0.1", {
        "nvidia/__init__.py": "", "nvidia/dali/__init__.py": "__version__ = '0.0.1+fake'\n",
        "nvidia/dali/plugin/__init__.py": "", "nvidia/dali/plugin/pytorch.py": "", "nvidia/dali/blob.bin": blob},
        requires=["fake-dali-dep", "numpy"])
    _wheel(index, "fake-dali-dep", "1.0", {"fake_dali_dep.py": ""})
    _wheel(index, "numpy", "99.0", {"numpy_fake_marker.py": ""})  # provided on the GPU machine: left out
    out = tmp / "out"
    env = {**os.environ, "DALI_FIND_LINKS": str(index), "DALI_PACKAGE": "fake-nvidia-dali==0.0.1",
           "PART_SIZE": "8K", "PIP": f"{sys.executable} -m pip", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    r = subprocess.run(["bash", str(ROOT / "scripts/prepare_dali_wheels.sh"), str(out)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return out / "parts"


def _install(parts: Path, target: Path):
    env = {**os.environ, "DALI_TARGET": str(target), "PYTHON": sys.executable, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run(["bash", str(ROOT / "scripts/install_dali_wheels.sh"), str(parts)], env=env,
                          capture_output=True, text=True, timeout=300)


def _copy(parts: Path, dest: Path) -> Path:
    shutil.copytree(parts, dest)
    return dest


def test_prepare_splits_into_parts_with_a_manifest(prepared):
    parts = sorted(p.name for p in prepared.glob("dali-wheels.tar.part-*"))
    assert len(parts) >= 5 and parts[0] == "dali-wheels.tar.part-00"
    assert all((prepared / p).stat().st_size <= 8192 for p in parts)
    assert [line.split()[1] for line in (prepared / "parts.sha256").read_text().splitlines()] == parts
    wheels = sorted(line.split()[1] for line in (prepared / "wheels.sha256").read_text().splitlines())
    assert wheels == ["fake_dali_dep-1.0-py3-none-any.whl", "fake_nvidia_dali-0.0.1-py3-none-any.whl"]
    assert (prepared / "install_dali_wheels.sh").is_file()
    assert (prepared.parent / "wheels/numpy-99.0-py3-none-any.whl").is_file()  # kept for a later offline prepare


def test_install_joins_checks_and_imports(prepared, tmp_path):
    target = tmp_path / "site"
    r = _install(_copy(prepared, tmp_path / "parts"), target)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "DALI 0.0.1+fake from " + str(target.resolve()) in r.stdout
    assert (target / "fake_dali_dep.py").is_file() and (target / "nvidia/dali/blob.bin").stat().st_size == 40_000


def test_corrupt_part_is_refused(prepared, tmp_path):
    parts = _copy(prepared, tmp_path / "parts")
    victim = parts / "dali-wheels.tar.part-01"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    r = _install(parts, tmp_path / "site")
    assert r.returncode == 2
    assert "checksum mismatch" in r.stderr and "dali-wheels.tar.part-01" in r.stderr, r.stderr
    assert not (tmp_path / "site").exists()  # nothing installed


def test_missing_and_foreign_parts_are_refused(prepared, tmp_path):
    parts = _copy(prepared, tmp_path / "parts")
    (parts / "dali-wheels.tar.part-02").unlink()
    (parts / "dali-wheels.tar.part-03").unlink()
    r = _install(parts, tmp_path / "site")
    assert r.returncode == 2 and "2 of" in r.stderr, r.stderr
    assert "dali-wheels.tar.part-02 dali-wheels.tar.part-03" in r.stderr
    shutil.rmtree(parts)
    parts = _copy(prepared, tmp_path / "parts")
    (parts / "dali-wheels.tar.part-99").write_bytes(b"x")
    r = _install(parts, tmp_path / "site")
    assert r.returncode == 2 and "part-99 is not in parts.sha256" in r.stderr, r.stderr
    assert not (tmp_path / "site").exists()


def test_prepare_refuses_a_tracked_folder(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "scripts/prepare_dali_wheels.sh"), "bench/results/dali"],
                       env={**os.environ, "DALI_FIND_LINKS": str(tmp_path)}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "not git-ignored" in r.stderr
    assert not (ROOT / "bench/results/dali").exists()
