"""Test set-up shared by every test.

Without a CUDA device the Triton kernels run under the interpreter, which must be switched on
*before* any kernel module is imported, so it happens here at collection time.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
