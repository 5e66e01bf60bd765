"""The DALI graph (``fn`` API): N views per sample from parameters fed by ``external_source``.

All randomness arrives as per-sample argument inputs drawn on the host (params.py), so the views
are independent, a batch is reproducible from its position, and DALI and torchvision apply the
same draws. One ``external_source`` call per batch returns, in order: images (uint8 HWC arrays, or
encoded bytes for files), fine, coarse, index, position (epoch, step), then for each view:
roi_start, roi_end (relative [y, x]; x swapped for a flip), brightness, contrast, saturation
(0 where grayscale), hue (degrees), blur sigma, solarisation threshold (128, or 256 = off).
Per-view recipes select which operators are in the graph (no blur operator if blur_prob = 0, ...).
"""
from __future__ import annotations

from .augment import AugmentConfig

PER_VIEW = ("roi_start", "roi_end", "brightness", "contrast", "saturation", "hue", "sigma",
            "solarize_threshold")
HEAD = ("images", "fine", "coarse", "index", "position")


def build_pipeline(source, aug: AugmentConfig, mean, std, *, encoded: bool, batch_size: int,
                   num_threads: int, device_id: int | None, prefetch: int = 2):
    """A DALI Pipeline yielding views..., fine, coarse, index, position; GPU operators if device_id."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None
    num_outputs = len(HEAD) + len(PER_VIEW) * aug.num_views

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=prefetch, exec_dynamic=True)
    def views_pipeline():
        outs = fn.external_source(source=source, num_outputs=num_outputs, batch=True,
                                  parallel=False)
        images, fine, coarse, index, position = outs[:len(HEAD)]
        if encoded:
            images = fn.decoders.image(images, device="mixed" if gpu else "cpu",
                                       output_type=types.RGB)
        elif gpu:
            images = images.gpu()
        results = []
        for v, recipe in enumerate(aug.views):
            a = dict(zip(PER_VIEW, outs[len(HEAD) + v * len(PER_VIEW):len(HEAD) + (v + 1) * len(PER_VIEW)]))
            x = fn.resize(images, size=[recipe.size, recipe.size], roi_start=a["roi_start"],
                          roi_end=a["roi_end"], roi_relative=True, interp_type=types.INTERP_LINEAR,
                          antialias=True)
            if recipe.jitter_prob > 0 or recipe.grayscale_prob > 0:
                x = fn.color_twist(x, brightness=a["brightness"], contrast=a["contrast"],
                                   saturation=a["saturation"], hue=a["hue"])
            if recipe.blur_prob > 0:
                x = fn.gaussian_blur(x, window_size=recipe.blur_window, sigma=a["sigma"])
            if recipe.solarize_prob > 0:
                thr = a["solarize_threshold"].gpu() if gpu else a["solarize_threshold"]
                xf = fn.cast(x, dtype=types.FLOAT)
                x = fn.cast(xf + (xf >= thr) * (255.0 - 2.0 * xf), dtype=types.UINT8)
            x = fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW",
                                         mean=[255.0 * m for m in mean],
                                         std=[255.0 * s for s in std])
            results.append(x)
        return (*results, fine, coarse, index, position)

    return views_pipeline()
