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

from kernels import hex_kernels as K
from kernels.config import FP32_DOT, GPU_CONFIG, MAX_REPAIR_PASSES, SELECT_THRESHOLDS, feature_blocks, select_plan

_TRITON_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_INPUTS = ("A", "C", "X", "Y")
_I64 = ("POS", "SELF", "POSA", "SELFA", "GA", "GC")
_F32_SCALARS = ("scale2", "inv_tau", "log2w", "inv_m", "weight")
_POINTER_TYPES = {"ROUT": "*fp64", "GLOSS": "*fp64", "STATUS": "*i8"}
_INTS = ("M", "N", "S", "D", "J", "M_own", "N_other")


def _signature(fn, dtype: str, constexprs: dict, out_dtype: str | None = None) -> dict:
    """Argument name -> Triton type string (pointers, i32 scalars, fp32 scalars, constexpr)."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _INPUTS:
            sig[name] = "*" + dtype
        elif name == "DX":
            sig[name] = "*" + (out_dtype or "fp32")
        elif name in _I64:
            sig[name] = "*i64"
        elif name in _POINTER_TYPES:
            sig[name] = _POINTER_TYPES[name]
        elif name in _F32_SCALARS:
            sig[name] = "fp32"
        elif name[0].isupper() and name not in _INTS:
            sig[name] = "*fp32"
        else:
            sig[name] = "i32"
    return sig


def kernel_specs(dtype: str = "bfloat16", rules=(1,), d: int = 128, n: int = 8192, fp32_dot: str = FP32_DOT,
                 arch: int = 90):
    """(label, fn, signature, constexprs) for every kernel at the shipped GPU configuration for D = d
    on sm_<arch> (fp32 inputs with the dot `fp32_dot`, kernels/config.py)."""
    tdt = _TRITON_DTYPE[dtype]
    cfg = GPU_CONFIG
    precision = fp32_dot if dtype == "float32" else "tf32"
    single_k, block_d, block_dout = feature_blocks(cfg, d, precision, arch)
    plan = select_plan(n, max(1, n // 100))
    common = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, SINGLE_K=single_k,
                  NORM_DIV=dtype == "float32", UPCAST=False, PRECISION=precision)
    loss = dict(FIXED_MAX=True, HAS_W=True, POS_IN_DEN=False, SQUARE=True)
    specs = []

    def add(label, fn, out_dtype=None, **const):
        c = dict(common, **const)
        specs.append((f"{label}[{dtype},D{d}]", fn, _signature(fn, tdt, c, out_dtype), c))

    add("sketch", K._sketch_kernel)
    add("fused", K._fwd_kernel, RULE=1, SELECT=True, LSE=True, HAS_HI=True, **loss)
    add("select", K._select_kernel, SQUARE=True, CAP=plan.cap, NT=SELECT_THRESHOLDS,
        SUB=max(1, min(cfg.block_m, 4096 // plan.cap)), MAX_PASSES=MAX_REPAIR_PASSES)
    add("settle", K._settle_kernel, CAP=plan.cap, CHUNK=min(plan.cap, 32), **loss)
    add("minmax", K._minmax_kernel)
    for rule in rules:
        add(f"lse.rule{rule}", K._fwd_kernel, RULE=rule, SELECT=False, LSE=True, HAS_HI=False, **loss)
        bwd = dict(RULE=rule, POS_IN_DEN=False, SQUARE=True, ONE_EXP=True, FUSE_NORM=single_k, BLOCK_DOUT=block_dout)
        out = tdt if single_k else "fp32"
        add(f"bwd_square.rule{rule}", K._bwd_kernel, out, OWN_ANCHOR=True, OTHER_ANCHOR=True, **bwd)
        rect = dict(bwd, SQUARE=False)
        add(f"bwd_anchors.rule{rule}", K._bwd_kernel, out, OWN_ANCHOR=True, OTHER_ANCHOR=False, **rect)
        add(f"bwd_candidates.rule{rule}", K._bwd_kernel, out, OWN_ANCHOR=False, OTHER_ANCHOR=True, **rect)
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
_DIVISIBLE_INTS = ("N", "D", "stride_a", "stride_c", "stride_x", "stride_y", "stride_dx")


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


def _compile_entry(job) -> dict:
    """One (dtype, rule set, D, spec index, arch) compile + ptxas report (a worker process's unit)."""
    dtype, rules, d, index, arch = job
    label, fn, sig, const = kernel_specs(dtype, rules, d, arch=arch)[index]
    k = compile_one(fn, sig, const, arch)
    entry = {"kernel": label, "arch": f"sm_{arch}", "shared_bytes": k.metadata.shared,
             "num_warps": GPU_CONFIG.num_warps, "num_stages": GPU_CONFIG.num_stages,
             "block_m": GPU_CONFIG.block_m, "block_n": GPU_CONFIG.block_n,
             "block_d": const["BLOCK_D"], "single_k": const["SINGLE_K"], "precision": const["PRECISION"],
             "mma": "wgmma" if "wgmma" in k.asm["ptx"] else ("mma" if "mma.sync" in k.asm["ptx"] else "fma")}
    entry.update(ptxas_resources(k.asm["ptx"], arch))
    return entry


def report(dtypes=("bfloat16", "float16", "float32"), rules=(0, 1, 2, 3), archs=(90, 80),
           dims=(128, 512), workers: int | None = None) -> dict:
    """Compile every kernel x dtype x D x arch, on all cores (compiles are independent)."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(dtype, tuple(rules), d, i, arch) for dtype in dtypes for d in dims
            for i in range(len(kernel_specs(dtype, rules, d))) for arch in archs]
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(_compile_entry, jobs))
    return {"triton": triton.__version__, "config": GPU_CONFIG.__dict__, "kernels": rows}


# What the CI test compiles: the bf16 fast path at both architectures (adaptive rule), fp32 (its
# tf32x3 tensor-core dot) at both; `report()` with its defaults covers every dtype, rule and arch.
QUICK = [dict(dtypes=("bfloat16",), rules=(1,), archs=(90, 80), dims=(128,)),
         dict(dtypes=("bfloat16",), rules=(1,), archs=(90,), dims=(512,)),
         dict(dtypes=("float32",), rules=(1,), archs=(90, 80), dims=(128,))]


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
