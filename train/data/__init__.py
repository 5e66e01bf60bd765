"""Data layer: dataset readers, the augmentation policy, and DALI / torchvision pretraining loaders.

API (what the trainers use)::

    DATASETS: dict[name, (reader, splits)]     # "fashion-mnist-small" (embedded, default),
        # "fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "imagefolder", "flatfolder"
    load_dataset(name="fashion-mnist-small", root=None, split="train", *, download=False,
                 **options) -> ImageDataset
        # ImageDataset: .images uint8 [N, H, W, C] (C = 1|3) or .files (paths); .fine / .coarse
        # int64 [N] or None (-1 = unlabelled sample); .num_classes, .num_coarse, .image_size,
        # .channels (as stored), .mean / .std (3 values: output is always RGB), len()
    ViewRecipe, AugmentConfig(views=(ViewRecipe, ...))     # typed per-view recipes
    augment_preset("symmetric" | "asymmetric", image_size, num_views=2, **field_overrides)
    make_pretrain_loader(dataset, aug, *, batch_size, loader="auto"|"dali"|"torchvision",
                         device="cpu"|"cuda", seed=0, rank=0, world_size=1, num_workers=None)
        -> PretrainLoader: iterable of dicts {"views": [float32 [B, 3, S, S] normalised, ...one per
           recipe], "fine": long [B], "coarse": long [B] (-1 where none), "index": long [B]};
           len() = exact steps per epoch (remainder dropped); set_epoch(e);
           state_dict() / load_state_dict() resume mid-epoch with the same order and draws.
    make_eval_loader(dataset, *, batch_size, device="cpu", image_size=None)
        -> iterable of (images [B, 3, S, S] normalised, fine [B], coarse [B]); deterministic,
           dataset order, last batch kept.
    DataError: raised for missing / empty / truncated / corrupt / mismatched files, naming the file.

Grey datasets are replicated to 3 channels, so that standard backbones need no change.
"""
from .augment import PRESETS, AugmentConfig, ViewRecipe, augment_preset
from .dataset import DataError, ImageDataset
from .loader_base import PretrainLoader
from .loaders import LOADERS, EvalLoader, dali_available, make_eval_loader, make_pretrain_loader
from .registry import DATASETS, DEFAULT_DATASET, load_dataset

__all__ = ["DATASETS", "DEFAULT_DATASET", "LOADERS", "PRESETS", "AugmentConfig", "DataError",
           "EvalLoader", "ImageDataset", "PretrainLoader", "ViewRecipe", "augment_preset",
           "dali_available", "load_dataset", "make_eval_loader", "make_pretrain_loader"]
