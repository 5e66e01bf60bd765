"""Ahead-of-time compilation of every HEX kernel at its shipped GPU configuration (no GPU needed).

The interpreter accepts code the compiler rejects; compiling for sm_90 / sm_80 on a CPU machine
catches that, and ptxas's resource report (registers, spills) shows tuning problems before any GPU
time. Used by tests/test_kernel_compile.py and by

    python -m kernels.aot [out.json]      # all kernels x dtypes x rules x {sm_90, sm_80}
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.config import GPU_CONFIG, SELECT_CAPACITY, SELECT_THRESHOLDS, feature_blocks
from kernels.hex_kernels import _bwd_cols_kernel, _bwd_rows_kernel, _lse_kernel
from kernels.quantile import _collect_kernel, _count_kernel, _minmax_kernel

_TRITON_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_ROW = ("POS", "SELF")
_SIM = ("A", "C", "RA", "RC")


def _signature(fn, dtype: str, pointer_types: dict, constexprs: dict) -> dict:
    """Argument name -> Triton type string (pointers, i32 scalars, fp32 scalars, constexpr)."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("A", "C"):
            sig[name] = "*" + dtype
        elif name in pointer_types:
            sig[name] = pointer_types[name]
        elif name in ("scale2", "inv_tau", "weight"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def kernel_specs(dtype: str = "bfloat16", rules=(1,), d: int = 128):
    """(label, fn, signature, constexprs) for every kernel at the shipped GPU configuration for D = d."""
    tdt = _TRITON_DTYPE[dtype]
    cfg = GPU_CONFIG
    single_k, block_d, block_dout = feature_blocks(cfg, d, half=dtype != "float32")
    common = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, SINGLE_K=single_k,
                  NORM_DIV=dtype == "float32", UPCAST=False,
                  PRECISION="ieee" if dtype == "float32" else "tf32")
    f32 = "*fp32"
    ptr = {"RA": f32, "RC": f32, "ROWS": "*i32", "THR": f32, "CLO": "*i32", "CHI": "*i32",
           "REFINE": "*i8", "LO": f32, "HI": f32,
           "BUF": f32, "OUT_MIN": f32, "OUT_MAX": f32, "POS": "*i64", "SELF": "*i64", "EPS": f32,
           "RMIN": f32, "RDEN": f32, "GA": "*i64", "GC": "*i64", "OUT": f32, "LSE2": f32,
           "GSCALE": f32, "DA": f32, "DC": f32}
    specs = []

    def add(label, fn, **const):
        c = dict(common, **const)
        specs.append((f"{label}[{dtype},D{d}]", fn, _signature(fn, tdt, ptr, c), c))

    add("count", _count_kernel, NT=SELECT_THRESHOLDS, FIRST=False)
    add("collect", _collect_kernel, CAP=SELECT_CAPACITY)
    add("minmax", _minmax_kernel)
    for rule in rules:
        add(f"lse.rule{rule}", _lse_kernel, RULE=rule)
        for pos_in_den in (False, True):
            extra = dict(RULE=rule, POS_IN_DEN=pos_in_den, BLOCK_DOUT=block_dout)
            add(f"bwd_rows.rule{rule}.pos{int(pos_in_den)}", _bwd_rows_kernel, **extra)
            add(f"bwd_cols.rule{rule}.pos{int(pos_in_den)}", _bwd_cols_kernel, **extra)
    return specs


def _ptxas() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def ptxas_resources(ptx: str, arch: int) -> dict:
    """Registers, spill stores/loads and stack of a PTX module, from `ptxas -v`."""
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([_ptxas(), "-v", f"--gpu-name={gpu}", path, "-o", os.path.join(tmp, "k.o")],
                             capture_output=True, text=True, check=True)
    text = out.stderr + out.stdout
    regs = re.findall(r"Used (\d+) registers", text)
    spill = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    stack = re.findall(r"(\d+) bytes stack frame", text)
    return {"registers": int(regs[-1]) if regs else None,
            "spill_stores": int(spill[-1][0]) if spill else None,
            "spill_loads": int(spill[-1][1]) if spill else None,
            "stack_bytes": int(stack[-1]) if stack else None}


# Triton's launcher specialises pointers (16-byte aligned) and integers divisible by 16; compile
# for that typical case (D, N, strides multiples of 16), as a launch at D = 128 would.
_DIVISIBLE_INTS = ("N", "D", "stride_a", "stride_c")


def _attrs(signature: dict) -> dict:
    attrs = {}
    for i, (name, ty) in enumerate(signature.items()):
        if ty.startswith("*") or name in _DIVISIBLE_INTS:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


def compile_one(fn, signature, constexprs, arch: int):
    """Compile for sm_<arch>; returns Triton's compiled kernel (asm: ttir, ttgir, ptx, cubin)."""
    opts = {"num_warps": GPU_CONFIG.num_warps, "num_stages": GPU_CONFIG.num_stages}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=_attrs(signature))
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


def report(dtypes=("bfloat16", "float16", "float32"), rules=(0, 1, 2, 3), archs=(90, 80),
           dims=(128, 512)) -> dict:
    rows = []
    for dtype in dtypes:
        for label, fn, sig, const in [s for d in dims for s in kernel_specs(dtype, rules, d)]:
            for arch in archs:
                k = compile_one(fn, sig, const, arch)
                entry = {"kernel": label, "arch": f"sm_{arch}", "shared_bytes": k.metadata.shared,
                         "num_warps": GPU_CONFIG.num_warps, "num_stages": GPU_CONFIG.num_stages,
                         "block_m": GPU_CONFIG.block_m, "block_n": GPU_CONFIG.block_n,
                         "block_d": const["BLOCK_D"], "single_k": const["SINGLE_K"],
                         "mma": "wgmma" if "wgmma" in k.asm["ptx"] else
                         ("mma" if "mma.sync" in k.asm["ptx"] else "fma")}
                entry.update(ptxas_resources(k.asm["ptx"], arch))
                rows.append(entry)
    return {"triton": triton.__version__, "config": GPU_CONFIG.__dict__, "kernels": rows}


# What the CI test compiles: the bf16 fast path at both architectures (adaptive rule), fp32 on
# sm_90 (groups rule); `report()` with its defaults covers every dtype, rule and architecture.
QUICK = [dict(dtypes=("bfloat16",), rules=(1,), archs=(90, 80), dims=(128,)),
         dict(dtypes=("bfloat16",), rules=(1,), archs=(90,), dims=(512,)),
         dict(dtypes=("float32",), rules=(3,), archs=(90,), dims=(128,))]


if __name__ == "__main__":
    # Compilation needs the real JIT: run this without TRITON_INTERPRET=1.
    args = sys.argv[1:]
    quick = "--quick" in args
    args = [a for a in args if a != "--quick"]
    out = args[0] if args else "bench/results/kernel_resources.json"
    if quick:
        parts = [report(**q) for q in QUICK]
        result = dict(parts[0], kernels=[r for p in parts for r in p["kernels"]])
    else:
        result = report()
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    for r in result["kernels"]:
        print(f"{r['kernel']:40s} {r['arch']}  regs={r['registers']} spills={r['spill_stores']}/"
              f"{r['spill_loads']} smem={r['shared_bytes']} {r['mma']}")
