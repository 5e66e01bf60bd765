"""The DALI graph (``fn`` API): N views per sample from parameters fed by ``external_source``.

All randomness arrives as per-sample argument inputs drawn on the host (params.py), so the views
are independent, a batch is reproducible from its position, and DALI and torchvision apply the
same draws. One ``external_source`` call per batch returns, in order: images (uint8 HWC arrays, or
encoded bytes for files), fine, coarse, index, position (epoch, step), then for each view the
inputs its operators read (view_fields): roi_start, roi_end (relative [y, x]; x swapped for a flip),
brightness, contrast, saturation
(0 where grayscale), hue (degrees), blur sigma, solarisation threshold (127.5, or 256 = off).
Per-view recipes select which operators are in the graph (no blur operator if blur_prob = 0, ...).

With a device_id the graph runs on that GPU: encoded files are decoded by the "mixed" decoder (host
parsing, GPU decoding), in-memory arrays leave the external source for the GPU at once, every image
operator is a GPU operator, and the labels and indices are handed out on the GPU too, so a batch
reaches the training step without a host-to-device copy; only the position (checked on the host)
stays on the CPU. `prefetch` batches are prepared ahead (DALI's prefetch queue), so the GPU never
waits for the next batch while the host keeps ahead. tests/test_data_dali_gpu.py builds this graph
on a CPU-only machine (DALI defines it without CUDA) and checks where every operator runs.
"""
from __future__ import annotations

from .augment import AugmentConfig
from .torch_aug import LUMA

HEAD = ("images", "fine", "coarse", "index", "position")


def view_fields(recipe) -> tuple[str, ...]:
    """The per-view inputs the graph of ``recipe`` reads (operators with probability 0 are left out)."""
    names = ["roi_start", "roi_end"]
    if recipe.jitter_prob > 0:
        names += ["brightness", "contrast"]
    if recipe.jitter_prob > 0 or recipe.grayscale_prob > 0:
        names += ["saturation", "hue"]
    if recipe.blur_prob > 0:
        names.append("sigma")
    if recipe.solarize_prob > 0:
        names.append("solarize_threshold")
    return tuple(names)


def build_pipeline(source, aug: AugmentConfig, mean, std, *, encoded: bool, batch_size: int,
                   num_threads: int, device_id: int | None, prefetch: int = 3):
    """A DALI Pipeline yielding views..., fine, coarse, index, position; GPU operators if device_id."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dmath

    gpu = device_id is not None

    def on_device(node):
        """Per-sample values used in arithmetic with images must live where the images are."""
        return node.gpu() if gpu else node
    num_outputs = len(HEAD) + sum(len(view_fields(v)) for v in aug.views)

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
        results, at = [], len(HEAD)
        for recipe in aug.views:
            names = view_fields(recipe)
            a = dict(zip(names, outs[at:at + len(names)]))
            at += len(names)
            # float from here on (0..255): no rounding between steps, as on the torch side
            x = fn.resize(images, size=[recipe.size, recipe.size], roi_start=a["roi_start"],
                          roi_end=a["roi_end"], roi_relative=True, interp_type=types.INTERP_LINEAR,
                          antialias=True, dtype=types.FLOAT)
            if recipe.jitter_prob > 0:
                # torchvision's order and maths: brightness, then contrast around the mean grey
                # of the image (DALI's color_twist would pivot at mid-grey instead), clamping each
                b, c = on_device(a["brightness"]), on_device(a["contrast"])
                x = dmath.clamp(x * b, 0.0, 255.0)
                m = fn.reductions.mean(x, axes=[0, 1])  # per-channel means [3]
                grey = m[0] * LUMA[0] + m[1] * LUMA[1] + m[2] * LUMA[2]
                x = dmath.clamp(x * c + grey * (1.0 - c), 0.0, 255.0)
            if recipe.jitter_prob > 0 or recipe.grayscale_prob > 0:
                # saturation (0 = grayscale) and hue: a linear map in YIQ space
                x = dmath.clamp(fn.color_twist(x, saturation=a["saturation"], hue=a["hue"]),
                                0.0, 255.0)
            if recipe.blur_prob > 0:
                x = fn.gaussian_blur(x, window_size=recipe.blur_window, sigma=a["sigma"])
            if recipe.solarize_prob > 0:
                x = x + (x >= on_device(a["solarize_threshold"])) * (255.0 - 2.0 * x)
            x = fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW",
                                         mean=[255.0 * m for m in mean],
                                         std=[255.0 * s for s in std])
            results.append(x)
        if gpu:
            fine, coarse, index = fine.gpu(), coarse.gpu(), index.gpu()
        return (*results, fine, coarse, index, position)

    return views_pipeline()
