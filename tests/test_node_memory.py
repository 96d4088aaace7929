"""`inspect`'s memory per node (node_memory.py) against what the C++ graph really reads and allocates
when it builds each node's share, for every architecture, weight type and 1-4 nodes, equal and uneven."""

from __future__ import annotations

import pytest

from dllama_py import _core
from dllama_py.architectures import read_layout
from dllama_py.engine import model_config
from dllama_py.node_memory import node_memory

MODELS = ["llama", "qwen3", "glm", "glm4", "glm4_moe_air", "glm4_moe_46", "glm4_moe_lite", "glm4_moe_lite_noqlora",
          "qwen3_moe"]


@pytest.mark.parametrize("dtype", ["f32", "q40"])
@pytest.mark.parametrize("name", MODELS)
def test_node_memory_is_what_the_graph_takes(tiny_models, name, dtype):
    layout = read_layout(tiny_models.converted(name, dtype))
    cfg = model_config(layout, 100)
    tensors = [_core.TensorInfo(t.spec.name, _core.FloatType(int(t.dtype)), t.spec.rows, t.spec.cols, t.offset)
               for t in layout.tensors]
    splits = 0
    for split in ([1], [1, 1], [1, 1, 1], [1, 1, 1, 1], [3, 1], [1, 3], [1, 2, 1], [2, 1, 1], [1, 1, 2, 5]):
        n_nodes = len(split)
        for node in range(n_nodes):
            try:
                weights, kv_cache = _core.measure_node_share(str(layout.path), cfg, tensors, node, n_nodes, split)
            except ValueError:  # the graph cannot be split this way: neither can the estimate
                with pytest.raises(ValueError, match=f"cannot split .* across {n_nodes} nodes"):
                    node_memory(layout, node, n_nodes, cfg.seq_len, cfg.kv_f16, split=split)
                continue
            estimate = node_memory(layout, node, n_nodes, cfg.seq_len, cfg.kv_f16, split=split)
            assert (estimate.weights, estimate.kv_cache) == (weights, kv_cache), (node, n_nodes)
            assert estimate.mapped == (layout.tensors[0].nbytes if node == 0 else 0)
            splits += 1
    assert splits >= 1 + 2 + 2  # every tiny model splits in two, evenly and 3:1
