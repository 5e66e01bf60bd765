"""Rebuild the embedded Fashion-MNIST subset from the full dataset.

    python scripts/build_embedded_dataset.py PATH_TO_FASHION_MNIST [--train-per-class 500]
        [--test-per-class 100] [--seed 0] [--out train/data/embedded/fashion-mnist-small]

A stratified, seeded subset (the same number of images per class, drawn without replacement) written
as gzipped IDX files in the original layout, plus the source indices. The output is byte-identical
for the same inputs and arguments.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from train.data.idx import read_idx_split, write_idx  # noqa: E402


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``per_class`` samples of every class, drawn without replacement."""
    picks = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            sys.exit(f"class {c} has only {len(members)} samples, fewer than {per_class}")
        picks.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="folder with the four Fashion-MNIST *-ubyte(.gz) files")
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "train/data/embedded/fashion-mnist-small"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    chosen = {}
    for split, prefix, per_class in (("train", "train", args.train_per_class),
                                     ("test", "t10k", args.test_per_class)):
        images, labels = read_idx_split(args.source, split)
        idx = stratified(labels, per_class, rng)
        write_idx(out / f"{prefix}-images-idx3-ubyte.gz", images[idx, :, :, 0])
        write_idx(out / f"{prefix}-labels-idx1-ubyte.gz", labels[idx])
        chosen[split] = idx.tolist()
    (out / "source-indices.json").write_text(json.dumps(
        {"seed": args.seed, "train_per_class": args.train_per_class,
         "test_per_class": args.test_per_class, **chosen}) + "\n")
    licence = Path(args.source) / "COPYRIGHT"
    if licence.exists():
        shutil.copyfile(licence, out / "LICENSE")
    print(f"wrote {out}: {len(chosen['train'])} train + {len(chosen['test'])} test images")


if __name__ == "__main__":
    main()
