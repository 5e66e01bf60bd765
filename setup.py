"""Build hook: the repository's `kernels/` and `train/` folders ship inside the hexfast package.

An installed hexfast owns exactly one top-level name, `hexfast`. Its fused kernel and its trainers
travel as `hexfast._kernels` and `hexfast._train` (pyproject.toml's package-dir), so installing it
never overwrites or shadows the top-level `kernels` and `train` packages that other distributions
own (PyPI's `kernels`, the Hugging Face kernel hub client; PyPI's `train`). In a checkout they stay
the top-level folders they are, so `python -m train.pretrain` and the tests work as before.

Their code imports itself absolutely (`from train.config import ...`); in the built copies those
imports are rewritten to the bundled names (`from hexfast._train.config import ...`). The sources
are not changed. Everything else is declared in pyproject.toml.
"""

import re
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED = {"kernels": "hexfast._kernels", "train": "hexfast._train"}
_IMPORT = re.compile(
    r"^(?P<indent>[ \t]*)(?P<kw>from|import)[ \t]+(?P<top>kernels|train)(?P<sub>(\.\w+)*)\b(?P<tail>.*)$", re.M)


def rewrite_imports(source: str, path: str = "<source>") -> str:
    """`from train.x import y` -> `from hexfast._train.x import y`; `import kernels` -> `import
    hexfast._kernels as kernels`. A bare `import train.x` (binding the name `train`) is refused."""

    def sub(m: re.Match) -> str:
        indent, kw, top, sub_, tail = m["indent"], m["kw"], m["top"], m["sub"], m["tail"]
        target = BUNDLED[top] + sub_
        if kw == "from":
            return f"{indent}from {target}{tail}"
        if tail.lstrip().startswith("as "):
            return f"{indent}import {target}{tail}"
        if sub_:
            raise SystemExit(
                f"{path}: `import {top}{sub_}` binds the top-level name {top!r}; write `from {top} import ...`")
        return f"{indent}import {target} as {top}{tail}"

    return _IMPORT.sub(sub, source)


class BuildPy(build_py):
    def build_module(self, module, module_file, package):
        outfile, copied = super().build_module(module, module_file, package)
        name = package if isinstance(package, str) else ".".join(package)
        if name.split(".")[:2] in (["hexfast", "_kernels"], ["hexfast", "_train"]):
            out = Path(outfile)
            out.write_text(rewrite_imports(out.read_text(), module_file))
        return outfile, copied


if __name__ == "__main__":  # how setuptools runs this file; importing it (the tests) builds nothing
    setup(cmdclass={"build_py": BuildPy})
