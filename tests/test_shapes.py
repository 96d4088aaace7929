"""The parity sweep: generated shapes x thread counts x node counts, every architecture, F32.

Work is cut into per-thread pieces (runs of query heads, 16-row weight groups, expert rows, position
blocks) and per-node shares (heads, hidden rows, the vocabulary) differently for every shape and
thread count, so a wrong cut shows up only at some combinations. This sweep generates them instead
of picking a few: for each architecture every head / KV-head ratio 1..16 (MLA: every head count
1..16) with 1-3 KV heads, each run at 1..16 threads; and two shapes per architecture whose head counts
the node counts do not divide, over 2-4 nodes x 1-4 threads per node. Every run is a prefill chunk, 8 decode steps across the 16-position block boundary of the KV cache,
another chunk, 8 more decode steps across the next boundary and a chunk straddling the one after,
compared with transformers at every position. Widths are tiny (head_dim 16; hidden sizes from 64 to
188, mostly not multiples of 16 or 32; vocabulary 100, FFN 72, experts 24), so partial row groups are
exercised too. Each shape is built and converted once; thread and node counts loop over it.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import record_parity
from hf_models import random_hf_model, reference_logits, with_clear_routing
from test_distributed import Workers

from dllama_py import Engine
from dllama_py.convert import convert

BOUND = 1e-3  # max |ours - transformers| / std(transformers), F32
THREADS = range(1, 17)
NODES, THREADS_PER_NODE = (2, 3, 4), (1, 2, 3, 4)
RATIOS = range(1, 17)
# a prefill chunk (positions 0..12), decode 13..20 (crossing the KV cache's 16-position block boundary),
# a chunk 21..26, decode 27..34 (crossing 32), a chunk 35..49 (straddling 48)
STEPS = [13] + [1] * 8 + [6] + [1] * 8 + [15]
VOCAB = 100

BASE = dict(vocab_size=VOCAB, num_hidden_layers=2, intermediate_size=72,
            max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0)
GLM = dict(head_dim=16, partial_rotary_factor=0.5, attention_bias=True, pad_token_id=0, eos_token_id=[1])
MOE = dict(moe_intermediate_size=24, num_experts_per_tok=2)
GLM_EXPERTS = dict(MOE, n_routed_experts=6, n_shared_experts=1, first_k_dense_replace=1, n_group=2, topk_group=1,
                   routed_scaling_factor=1.5, norm_topk_prob=True)
# architecture -> (HF model_type, config apart from the head counts)
ARCHITECTURES = {
    "llama": ("llama", dict(BASE, head_dim=16)),
    "qwen3": ("qwen3", dict(BASE, head_dim=16)),
    "glm": ("glm", dict(BASE, **GLM)),
    "glm4": ("glm4", dict(BASE, **GLM)),
    "glm4_moe": ("glm4_moe", dict(BASE, **GLM, **GLM_EXPERTS, use_qk_norm=True)),
    "qwen3_moe": ("qwen3_moe", dict(BASE, **MOE, head_dim=16, num_experts=6, norm_topk_prob=True)),
    "glm4_moe_lite": ("glm4_moe_lite", dict(BASE, **GLM_EXPERTS, q_lora_rank=40, kv_lora_rank=48, qk_nope_head_dim=16,
                                            qk_rope_head_dim=8, v_head_dim=24, mlp_layer_types=["dense", "sparse"])),
}


def head_shapes(arch: str) -> list[tuple[int, int]]:
    """(heads, KV heads) for every ratio 1..16; the KV-head count cycles through 1, 2, 3 (shifted per
    architecture), so each ratio meets several KV heads per node and head counts up to 48. Latent
    attention has no KV heads: every head count 1..16."""
    if arch == "glm4_moe_lite":
        return [(n, n) for n in RATIOS]
    shift = list(ARCHITECTURES).index(arch)
    return [(r * (1 + (r + shift) % 3), 1 + (r + shift) % 3) for r in RATIOS]


def sequence() -> list[int]:
    return np.random.default_rng(99).integers(0, VOCAB, sum(STEPS)).tolist()


def run_steps(engine: Engine, ids: list[int]) -> np.ndarray:
    logits, done = [], 0
    for n in STEPS:
        logits.append(engine.forward(ids[done:done + n]))
        done += n
    return np.concatenate(logits)


def error(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    return float(np.abs(ours - ref).max() / ref.std()), float((ours.argmax(-1) == ref.argmax(-1)).mean())


class SweepModels:
    """Each shape built with transformers and converted once (F32)."""

    def __init__(self, root):
        self.root, self.built = root, {}

    def get(self, arch: str, n_heads: int, n_kv: int):
        key = (arch, n_heads, n_kv)
        if key not in self.built:
            model_type, config = ARCHITECTURES[arch]
            # transformers wants the hidden size to be a multiple of the head count (and of 4 for its
            # expert kernels): 64 or the next such multiple
            step = np.lcm(n_heads, 4)
            hidden = int(-(-64 // step) * step)
            config = dict(config, hidden_size=hidden, num_attention_heads=n_heads, num_key_value_heads=n_kv)
            ids = sequence()
            model = with_clear_routing(lambda seed: random_hf_model(model_type, config, seed), ids)
            directory = self.root / f"{arch}-{n_heads}-{n_kv}"
            model.save_pretrained(directory)
            path = directory / "model.m"
            convert(directory, path, dtype="f32", progress=False, log=lambda *a: None)
            self.built[key] = (path, ids, reference_logits(model, ids))
        return self.built[key]


@pytest.fixture(scope="module")
def sweep_models(tmp_path_factory):
    return SweepModels(tmp_path_factory.mktemp("sweep"))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_shape_and_thread_count(sweep_models, arch):
    """F32 against transformers; and with the KV cache in f16 (what quantized models use), the same
    logits at every thread count as at one."""
    failures = []
    for n_heads, n_kv in head_shapes(arch):
        path, ids, ref = sweep_models.get(arch, n_heads, n_kv)
        one_thread_f16 = None
        for threads in THREADS:
            with Engine(path, threads=threads) as eng:
                rel, agree = error(run_steps(eng, ids), ref)
            record_parity(f"{arch} sweep", "f32", threads, 1, rel, agree)
            if rel > BOUND:
                failures.append(f"{n_heads}/{n_kv} heads, {threads} threads: {rel:.2e} x std")
            with Engine(path, threads=threads, kv_cache="f16") as eng:
                f16 = run_steps(eng, ids)
            one_thread_f16 = f16 if one_thread_f16 is None else one_thread_f16
            if np.abs(f16 - one_thread_f16).max() > 1e-5 * ref.std():
                failures.append(f"{n_heads}/{n_kv} heads, {threads} threads, f16 KV cache: not the 1-thread logits")
    assert not failures, f"{arch}: {len(failures)} runs off:\n" + "\n".join(failures)


@pytest.fixture(scope="module")
def workers():
    """3 in-process workers for each thread count per node."""
    by_threads = {t: Workers(max(NODES) - 1, threads=t) for t in THREADS_PER_NODE}
    yield by_threads
    for w in by_threads.values():
        w.close()


def node_shapes(arch: str) -> list[tuple[int, int]]:
    """Head counts that 2, 3 and 4 nodes mostly do not divide: 9 heads over 3 KV heads, 10 over 2 (KV
    heads replicated on 3 and 4 nodes); latent attention: 7 and 10 heads."""
    return [(7, 7), (10, 10)] if arch == "glm4_moe_lite" else [(9, 3), (10, 2)]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_node_count(sweep_models, workers, arch):
    """2-4 nodes x 1-4 threads per node."""
    failures = []
    for n_heads, n_kv in node_shapes(arch):
        path, ids, ref = sweep_models.get(arch, n_heads, n_kv)
        for nodes in NODES:
            for threads in THREADS_PER_NODE:
                addresses = workers[threads].addresses[:nodes - 1]
                with Engine(path, threads=threads, workers=addresses, exchange="f32") as eng:
                    assert eng.n_nodes == nodes
                    rel, agree = error(run_steps(eng, ids), ref)
                record_parity(f"{arch} sweep", "f32", threads, nodes, rel, agree)
                if rel > BOUND:
                    failures.append(f"{n_heads}/{n_kv} heads, {nodes} nodes x {threads} threads: {rel:.2e} x std")
    assert not failures, f"{arch}: {len(failures)} runs off:\n" + "\n".join(failures)


UNEVEN_SPLITS = (([3, 1], 3), ([1, 2, 1], 4), ([2, 1, 1], 2))  # --split weights (root first), threads per node


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_uneven_splits(sweep_models, workers, arch):
    """Nodes weighted by --split, on the shapes the node counts do not divide: the 1-node logits, at every
    prefill chunk and decode step (F32 exchange; Q80 and quantized weights: tests/test_distributed.py)."""
    failures = []
    for n_heads, n_kv in node_shapes(arch):
        path, ids, ref = sweep_models.get(arch, n_heads, n_kv)
        with Engine(path, threads=1) as eng:
            single = run_steps(eng, ids)
        for split, threads in UNEVEN_SPLITS:
            addresses = workers[threads].addresses[:len(split) - 1]
            with Engine(path, threads=threads, workers=addresses, exchange="f32", split=split) as eng:
                assert eng.split == split
                logits = run_steps(eng, ids)
            record_parity(f"{arch} uneven", "f32", threads, len(split), *error(logits, ref))
            off = np.abs(logits - single).max() / single.std()
            if off > 1e-4:
                failures.append(f"{n_heads}/{n_kv} heads, split {split}, {threads} threads per node, f32 exchange: "
                                f"{off:.2e} x std from 1 node")
    assert not failures, f"{arch}: {len(failures)} runs off:\n" + "\n".join(failures)
