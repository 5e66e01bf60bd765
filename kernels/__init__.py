"""Fused Triton kernels for HEX. Imported lazily: a CPU-only install without Triton still works.

`kernels.backend` is the kernel behind hexfast's backend protocol (`hexfast/backend.py`): what
`hexfast.hex_loss` calls for kernel="triton". The kernel's own entry points `kernels.hex_loss_triton`,
`kernels.hex_rect` and `kernels.row_quantiles` load Triton on first use (`import kernels` alone never
does). Design: docs/kernel.md.
"""

__all__ = ["hex_loss_triton", "hex_rect", "row_quantiles"]


def __getattr__(name):
    if name in ("hex_loss_triton", "hex_rect"):
        from kernels import hex_triton

        return getattr(hex_triton, name)
    if name == "row_quantiles":
        from kernels import hex_triton

        return hex_triton.row_quantiles
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
