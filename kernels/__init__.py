"""Fused Triton kernels for HEX. Imported lazily: a CPU-only install without Triton still works.

`kernels.backend` is the kernel behind hexfast's backend protocol (`hexfast/backend.py`): what
`hexfast.hex_loss` calls for kernel="triton". `kernels.row_quantiles` (exact per-row quantiles of
the kernel's own similarities) loads Triton on first use; `import kernels` alone never does.
Design: docs/kernel.md.
"""

__all__ = ["backend", "row_quantiles"]


def __getattr__(name):
    if name == "backend":
        import importlib

        return importlib.import_module("kernels.backend")
    if name == "row_quantiles":
        from kernels import hex_triton

        return hex_triton.row_quantiles
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
