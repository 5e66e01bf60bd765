"""Console scripts `hexfast-pretrain` and `hexfast-linear` (pyproject.toml's [project.scripts]).

In a checkout (an editable install, or the sources on the path) they run the checkout's own
`train` folder, exactly as `python -m train.pretrain` does; in an installed hexfast, the bundled
copy `hexfast._train`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]


def _train_module(name: str):
    if (_CHECKOUT / "train" / f"{name}.py").is_file() and (_CHECKOUT / "pyproject.toml").is_file():
        if str(_CHECKOUT) not in sys.path:
            sys.path.insert(0, str(_CHECKOUT))
        return importlib.import_module(f"train.{name}")
    return importlib.import_module(f"hexfast._train.{name}")


def pretrain() -> None:
    raise SystemExit(_train_module("pretrain").main())


def linear() -> None:
    raise SystemExit(_train_module("linear").main())
