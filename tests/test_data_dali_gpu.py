"""The DALI pipeline's GPU graph, built on a CPU-only machine.

DALI defines a pipeline's graph in Python without touching CUDA (only building the backend does:
`build()` / `serialize()` then fail with "CUDA is not available"), so the graph the GPU would run is
checked here operator by operator: with device_id=0, files are decoded by the "mixed" decoder,
arrays go to the GPU straight after the external source, every image operator runs on the GPU, and
the views, labels and indices come out on the GPU; the position stays on the host, where the loader
reads it. Running it needs a GPU (bench/test_step_bench.py and scripts/gpu_kernel_check.sh).
"""
import pytest

from train.data import augment_preset, dali_available
from train.data.dali_pipeline import HEAD, build_pipeline

pytestmark = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI not installed")
IMAGE_OPS = {"Resize", "ColorTwist", "GaussianBlur", "CropMirrorNormalize", "Mean", "_ArithmeticGenericOp",
             "_TensorSubscript"}


def _graph(encoded: bool, device_id):
    aug = augment_preset("asymmetric", 64)
    pipe = build_pipeline(lambda: None, aug, (0.5,) * 3, (0.2,) * 3, encoded=encoded, batch_size=4,
                          num_threads=1, device_id=device_id)
    pipe._build_graph()  # the Python graph only: no backend, no CUDA
    ops = {op.name: (op._op.__class__.__name__, op._op.device, [i.device for i in op.inputs]) for op in pipe._ops}
    outputs = [o.device for o in pipe._graph_outputs]
    return aug, ops, outputs


@pytest.mark.parametrize("encoded", [False, True])
def test_gpu_graph_runs_every_image_operator_on_the_gpu(encoded):
    aug, ops, outputs = _graph(encoded, device_id=0)
    kinds = [k for k, _, _ in ops.values()]
    for kind in ("Resize", "ColorTwist", "GaussianBlur", "CropMirrorNormalize"):
        assert kind in kinds, kind
    decoders = [(dev, inputs) for k, dev, inputs in ops.values() if k == "Image"]
    if encoded:
        assert decoders == [("mixed", ["cpu"])]  # host parses the file, the GPU decodes it
    else:
        assert decoders == []
    for name, (kind, dev, inputs) in ops.items():
        if kind in IMAGE_OPS:
            assert dev == "gpu", (name, kind, dev)
        if kind == "Resize":
            assert inputs[0] == "gpu", name  # the image; its box arguments are per-sample host inputs
        if kind == "ExternalSource":
            assert dev == "cpu"  # host data: the draws, and the arrays / file bytes before their copy
    n = aug.num_views
    assert outputs[:n] == ["gpu"] * n
    assert outputs[n:] == ["gpu", "gpu", "gpu", "cpu"] and len(HEAD) - 1 == 4  # fine, coarse, index, position


def test_cpu_graph_stays_on_the_cpu():
    _, ops, outputs = _graph(True, device_id=None)
    assert {dev for _, dev, _ in ops.values()} == {"cpu"} and set(outputs) == {"cpu"}
