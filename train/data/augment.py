"""The augmentation policy as typed config: one ViewRecipe per view, presets per method family.

Defaults follow solo-learn's per-method augmentation files (themselves from SimCLR / BYOL): random
resized crop with scale (0.08, 1.0) and aspect ratio (3/4, 4/3) to the output size, colour jitter
applied with p = 0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1), grayscale p = 0.2,
horizontal flip p = 0.5, and for the asymmetric (BYOL-style) methods Gaussian blur p = (1.0, 0.1)
and solarisation p = (0.0, 0.2) on the two views. Normalisation uses the dataset's mean / std.

Both backends (DALI and torchvision) apply these recipes with the same per-sample draws and the
same maths, with two documented departures from torchvision's ColorJitter: the jitter order is
fixed (brightness, contrast, saturation, hue) instead of a random permutation per image, and the
hue turns the chroma plane in YIQ space (DALI's colour model) instead of shifting HSV hue.

Grey datasets (Fashion-MNIST, MNIST) are replicated to 3 channels before augmenting, so that
standard backbones work unchanged; colour jitter then only changes brightness and contrast, as the
saturation and hue of a grey image are zero.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace


@dataclass(frozen=True)
class ViewRecipe:
    """How one view is made. Probabilities are per sample, drawn independently for every view."""

    size: int = 32                                  # output side in pixels
    crop_scale: tuple[float, float] = (0.08, 1.0)   # crop area as a fraction of the image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio (width / height)
    jitter_prob: float = 0.8                        # probability of applying the colour jitter
    brightness: float = 0.4                         # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.4                           # factor drawn from [1 - c, 1 + c]
    saturation: float = 0.2                         # factor drawn from [1 - s, 1 + s]
    hue: float = 0.1                                # shift drawn from [-h, h] (fraction of the circle)
    grayscale_prob: float = 0.2
    blur_prob: float = 0.0                          # Gaussian blur, sigma drawn from blur_sigma
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0                      # invert pixels >= 0.5 (128 of 255)
    flip_prob: float = 0.5                          # horizontal flip

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 2:
            raise ValueError(f"size must be an int >= 2, got {self.size!r}")
        for name in ("jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob", "flip_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1] (factor range [1 - v, 1 + v]), got {v}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5], got {self.hue}")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")

    @property
    def blur_window(self) -> int:
        """Odd Gaussian kernel side: about 10% of the output side (SimCLR), at least 3."""
        return max(3, int(0.1 * self.size) // 2 * 2 + 1)

    @classmethod
    def from_dict(cls, d: dict) -> "ViewRecipe":
        return cls(**_checked(cls, d))


@dataclass(frozen=True)
class AugmentConfig:
    """One recipe per view; len(views) = number of views the loader yields per sample."""

    views: tuple[ViewRecipe, ...] = field(default_factory=lambda: (ViewRecipe(), ViewRecipe()))

    def __post_init__(self) -> None:
        if len(self.views) < 1:
            raise ValueError("an AugmentConfig needs at least one view")
        if not all(isinstance(v, ViewRecipe) for v in self.views):
            raise TypeError("views must be ViewRecipe instances (use AugmentConfig.from_dict for dicts)")
        object.__setattr__(self, "views", tuple(self.views))

    @property
    def num_views(self) -> int:
        return len(self.views)

    def to_dict(self) -> dict:
        return {"views": [asdict(v) for v in self.views]}

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        """Inverse of to_dict (e.g. from YAML); unknown keys are rejected, naming the valid ones."""
        d = _checked(cls, d)
        return cls(views=tuple(ViewRecipe.from_dict(v) for v in d.get("views", ())))


def _checked(cls, d: dict) -> dict:
    valid = {f.name for f in fields(cls)}
    unknown = set(d) - valid
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {sorted(unknown)}; valid: {sorted(valid)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


# Per-view blur / solarisation probabilities of the two families (solo-learn's defaults).
PRESETS = {
    # SimCLR, Barlow Twins, VICReg, SwAV-style: two identically distributed views.
    "symmetric": ({"blur_prob": 0.5}, {"blur_prob": 0.5}),
    # BYOL, SimSiam-style asymmetric recipe (also MoCo v3, DINO's two global views).
    "asymmetric": ({"blur_prob": 1.0}, {"blur_prob": 0.1, "solarize_prob": 0.2}),
}
# Below this side blur is off: solo-learn's CIFAR recipes use no blur at 32 px (it erases the image).
BLUR_MIN_SIZE = 64


def augment_preset(name: str, image_size: int, num_views: int = 2, **overrides) -> AugmentConfig:
    """The preset ``name`` ('symmetric' | 'asymmetric') at output side ``image_size``.

    With num_views > 2 the extra views repeat the preset's views in turn. ``overrides`` set any
    ViewRecipe field on every view (e.g. crop_scale=(0.2, 1.0)).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose one of {sorted(PRESETS)}")
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    bad = set(overrides) - {f.name for f in fields(ViewRecipe)}
    if bad:
        raise ValueError(f"unknown ViewRecipe field(s) {sorted(bad)}; valid: "
                         f"{sorted(f.name for f in fields(ViewRecipe))}")
    base = PRESETS[name]
    views = []
    for i in range(num_views):
        extra = dict(base[i % len(base)])
        if image_size < BLUR_MIN_SIZE:
            extra["blur_prob"] = 0.0
        views.append(replace(ViewRecipe(size=image_size), **{**extra, **overrides}))
    return AugmentConfig(views=tuple(views))
