"""hexfast: Hierarchical Emergence Exploitation (HEX) for self-supervised learning.

`import hexfast.hex_loss` gives `hex_loss(...)` and `HEXLoss`; `hexfast.reference` is the readable
PyTorch specification every fast path is tested against; `hexfast.thresholds` holds the threshold
rules and schedules; `hexfast.losses` the standard SSL losses.
"""

__version__ = "0.1.0"

__all__ = ["hex_loss", "HEXLoss", "__version__"]


def __getattr__(name):  # lazy, so `import hexfast` stays cheap and import cycles cannot form
    if name in ("hex_loss", "HEXLoss"):
        from hexfast import hex_loss as _mod

        return getattr(_mod, name)
    raise AttributeError(f"module 'hexfast' has no attribute {name!r}")
