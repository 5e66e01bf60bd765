"""The eight SSL methods, one small file each; `METHODS` maps the config name to the class.

The registry is the one list of methods: the config's `--method` choices and per-method sections
(`train/config.py`) and the trainer's HEX wiring (`train/module.py`, from each class's policy
attributes, see `Method`) are derived from it. A new method is one file and one entry below.
"""
from train.methods.all4one import All4One
from train.methods.barlow import Barlow
from train.methods.base import Method, StepInput
from train.methods.byol import BYOL
from train.methods.mocov2 import MoCoV2
from train.methods.nnclr import NNCLR
from train.methods.simclr import SimCLR
from train.methods.simsiam import SimSiam
from train.methods.vicreg import VICReg

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (SimCLR, NNCLR, All4One, Barlow, BYOL, MoCoV2, VICReg, SimSiam)
}

__all__ = ["METHODS", "Method", "StepInput"]
