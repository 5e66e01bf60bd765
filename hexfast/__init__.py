"""hexfast: Hierarchical Emergence Exploitation (HEX) for self-supervised learning.

`import hexfast.hex_loss` gives `hex_loss(...)` and `HEXLoss`; `hexfast.reference` is the readable
PyTorch specification every fast path is tested against; `hexfast.rules` the hierarchy rule type
(`Rule`), `hexfast.validate` every argument check, `hexfast.backend` the protocol the reference and
the fused kernel implement; `hexfast.thresholds` holds the schedules; `hexfast.losses` the standard
SSL losses.
"""

__version__ = "0.1.0"

__all__ = ["HEXLoss", "__version__"]


def __getattr__(name):
    # Lazy, so `import hexfast` stays cheap. Only HEXLoss is re-exported: `hexfast.hex_loss` is the
    # submodule (`from hexfast.hex_loss import hex_loss` gives the function).
    if name == "HEXLoss":
        import importlib

        return importlib.import_module("hexfast.hex_loss").HEXLoss
    raise AttributeError(f"module 'hexfast' has no attribute {name!r}")
