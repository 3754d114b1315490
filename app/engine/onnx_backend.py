"""ONNX Runtime as the CPU backend: the ESPCN graph written out layer by layer, run by ORT's MLAS kernels.

Why: it is the fastest exact CPU path measured, on whole frames and on batched
tiles, ahead of frozen TorchScript, with outputs within 1e-6 of eager PyTorch
(figures in docs/benchmarks.md). ESPCN is three convolutions,
two activations and a periodic shuffle, so the graph is built here directly
from the loaded weights (``Conv``, ``Tanh``/``Relu``/``PRelu``, ``DepthToSpace``
in ``CRD`` mode, which is ``torch.pixel_shuffle``'s channel order) rather than
through ``torch.onnx.export``, whose tracing front-ends change between PyTorch
releases. Nothing is written to disk and nothing is unpickled.

``onnxruntime`` and ``onnx`` are imported lazily: without them (see :func:`available`)
the runner falls back to TorchScript; it also checks the session against eager.
ORT's threads sleep when idle (``allow_spinning = 0``), for the same reason as
``OMP_WAIT_POLICY=PASSIVE``: the codec threads share the cores. Memory patterns
(``enable_mem_pattern``) are off: ORT plans one per input shape, and shapes here vary
(batches of 1–N tiles, whole images of any size). With them on, the second call at each new,
larger whole-image shape paid for allocation again, and a process held more memory after the
batch sizes and a dozen image sizes, for no gain at steady state (``python scripts/ort_memory.py``;
figures in docs/benchmarks.md).

Every session of a process allocates from one arena registered with ORT's environment
(``session.use_env_allocators``), not from an arena of its own: a process holds a narrow and
a wide session per served scale, each arena kept the largest activations it had ever seen, and
the model calls of a process run one at a time anyway. With arenas of their own a process grew
several times more than with the shared one, at the same speed (``python scripts/ort_memory.py``;
figures in docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor, nn

from app.core.espcn import ESPCN

OPSET = 17
IR_VERSION = 8  # what opset 17 needs; pinned so a newer onnx package cannot outrun an older onnxruntime


def available() -> bool:
    """Whether ``onnxruntime`` and ``onnx`` can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def espcn_graph(model: ESPCN) -> bytes:
    """The serialised ONNX model of ``model.forward_valid``: (N, c, H, W) → (N, c, r·(H − 2R), r·(W − 2R))."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, weights = [], []
    current = "x"

    def tensor(name: str, value: Tensor) -> str:
        weights.append(numpy_helper.from_array(value.detach().cpu().float().numpy(), name))
        return name

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    acts = [m for m in model.features if not isinstance(m, nn.Conv2d)]
    for i, conv in enumerate(convs):
        if conv.padding != (0, 0) or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError("only unpadded, unit-stride, ungrouped convolutions are supported")
        inputs = [current, tensor(f"w{i}", conv.weight)] + ([tensor(f"b{i}", conv.bias)] if conv.bias is not None else [])
        current = f"conv{i}"
        nodes.append(helper.make_node("Conv", inputs, [current], kernel_shape=list(conv.kernel_size)))
        if i < len(acts):
            act, out = acts[i], f"act{i}"
            if isinstance(act, nn.Tanh):
                nodes.append(helper.make_node("Tanh", [current], [out]))
            elif isinstance(act, nn.ReLU):
                nodes.append(helper.make_node("Relu", [current], [out]))
            elif isinstance(act, nn.PReLU):
                slope = act.weight.detach().reshape(-1, 1, 1)  # per channel (or one), broadcast over H, W
                nodes.append(helper.make_node("PRelu", [current, tensor(f"slope{i}", slope)], [out]))
            else:
                raise ValueError(f"no ONNX mapping for {type(act).__name__}")
            current = out
    nodes.append(helper.make_node("DepthToSpace", [current], ["y"], blocksize=model.scale, mode="CRD"))
    graph = helper.make_graph(
        nodes,
        f"espcn_x{model.scale}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", model.channels, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", model.channels, "H", "W"])],
        initializer=weights,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="app",
                              ir_version=IR_VERSION)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


class OrtModel:
    """``forward_valid`` on CPU tensors through an ONNX Runtime session.

    With ``wide_threads`` above ``threads`` a second session with that many
    threads is built too, for the calls that may borrow idle cores
    (:mod:`app.engine.core_tokens`); both give the same numbers (tested).
    """

    def __init__(self, model: ESPCN, threads: int, wide_threads: int = 0) -> None:
        graph = espcn_graph(model)
        self.session = session(graph, threads)
        self.wide = session(graph, wide_threads) if wide_threads > threads else None

    def __call__(self, x: Tensor, wide: bool = False) -> Tensor:
        """Raises ``RuntimeError`` on bad input, as the PyTorch paths do (ORT has its own exception types)."""
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        session = self.wide if wide and self.wide is not None else self.session
        try:
            return torch.from_numpy(session.run(["y"], {"x": array})[0])
        except Exception as exc:
            raise RuntimeError(f"ONNX Runtime failed on input {tuple(x.shape)}: {exc}") from exc


def session(graph: bytes, threads: int, *, mem_pattern: bool = False, shared_arena: bool = True):  # noqa: ANN201
    """An ONNX Runtime CPU session of ``graph`` with ``threads`` intra-op threads that sleep when idle.

    ``shared_arena``: allocate from the process's one arena (:func:`_register_shared_arena`)
    instead of an arena of the session's own; see the module docstring.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_pattern = mem_pattern  # off by default: see the module docstring
    if shared_arena:
        _register_shared_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=1)
def _register_shared_arena() -> None:
    """Register one CPU arena with ONNX Runtime's environment, once per process (ORT's defaults for its sizes)."""
    import onnxruntime as ort

    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, -1, -1, -1))
