"""Fused Triton kernels for HEX. Imported lazily: a CPU-only install without Triton still works."""
