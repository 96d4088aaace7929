"""Quantized blocks (32 values) against shapes that do not fit them: tensors whose rows are not whole
blocks are stored at F16 by the converter (a per-tensor type in the header, shown by inspect), and a
split across nodes never cuts a block: shares are arranged on block boundaries, or the split is
refused before any worker is contacted, naming the constraint and the node counts that work."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hf_models import N_PREFILL, random_model, reference_logits, sequence, with_clear_routing
from test_distributed import Workers

from dllama_py import Engine
from dllama_py.architectures import read_layout
from dllama_py.cli import main
from dllama_py.convert import convert
from dllama_py.model_file import TENSOR_TYPE_KEYS, FloatType, ModelFileError, encode_header, read_header

Q80_BOUND = 0.08  # max |error| / std of the reference, as in test_parity


def prefill_then_decode(engine: Engine, ids: list[int]) -> np.ndarray:
    return np.concatenate([engine.forward(ids[:N_PREFILL])] + [engine.forward([t]) for t in ids[N_PREFILL:]])


@pytest.fixture(scope="module")
def q_lora_48(tmp_path_factory):
    """GLM-4.7-Flash's shape in small with q_lora_rank 48: q_b has 48 columns, 1.5 blocks per row."""
    directory = tmp_path_factory.mktemp("q_lora_48")
    ids = sequence(384)
    model = with_clear_routing(lambda seed: random_model("glm4_moe_lite", seed, q_lora_rank=48), ids)
    model.save_pretrained(directory / "hf")
    return directory, ids, reference_logits(model, ids)


@pytest.mark.parametrize("dtype", ["q80", "q40"])
def test_rows_of_partial_blocks_are_stored_at_f16(q_lora_48, dtype, capsys):
    directory, ids, ref = q_lora_48
    path = directory / f"{dtype}.m"
    convert(directory / "hf", path, dtype=dtype, progress=False, log=lambda *a: None)
    layout = read_layout(path)
    types = {t.spec.name: t.dtype for t in layout.tensors}
    assert {n for n, t in types.items() if t == FloatType.F16 and n.startswith("layers.")} == \
        {f"layers.{l}.attn.q_b" for l in range(3)}
    assert types["layers.1.attn.kv_a"] == FloatType.Q80  # whole blocks: the rule's type (Q80 at q40 too, see storage_type)
    assert main(["inspect", str(path), "--tensors"]) == 0
    text = capsys.readouterr().out
    index = list(types).index("layers.0.attn.q_b")
    assert f"{TENSOR_TYPE_KEYS + index:<34d} layers.0.attn.q_b stored as F16" in text
    assert any(line.split()[:2] == ["layers.0.attn.q_b", "F16"] for line in text.splitlines())
    with Engine(path, threads=2) as eng:
        ours = prefill_then_decode(eng, ids)
    rel = np.abs(ours - ref).max() / ref.std()
    assert rel <= (Q80_BOUND if dtype == "q80" else 1.0)


def test_files_that_need_no_other_type_carry_no_type_keys(q_lora_48):
    directory, _, _ = q_lora_48
    convert(directory / "hf", directory / "f32.m", dtype="f32", progress=False, log=lambda *a: None)
    assert read_header(directory / "f32.m").tensor_types == {}


def test_type_keys_round_trip_and_are_checked(q_lora_48, tmp_path):
    directory, _, _ = q_lora_48
    path = directory / "q80.m"
    if not path.exists():
        convert(directory / "hf", path, dtype="q80", progress=False, log=lambda *a: None)
    header = read_header(path)
    data = path.read_bytes()[header.size:]
    n_tensors = len(read_layout(path).tensors)

    def rewrite(tensor_types, name="bad.m"):
        out = tmp_path / name
        out.write_bytes(encode_header(header.params, tensor_types) + data)
        return out

    assert read_header(rewrite(header.tensor_types)).tensor_types == header.tensor_types
    with pytest.raises(ModelFileError, match=f"header key {TENSOR_TYPE_KEYS + n_tensors} gives a type for tensor "
                                             f"{n_tensors}, but the glm4_moe_lite model has {n_tensors} tensors"):
        read_layout(rewrite({**header.tensor_types, n_tensors: FloatType.F16}))
    # Without its key, q_b would be Q80 with rows of 1.5 blocks: what an older converter wrote.
    with pytest.raises(ModelFileError, match="tensor 'layers.0.attn.q_b' is stored as Q80, but its rows of 48 values "
                                             "are not whole 32-value blocks"):
        read_layout(rewrite({}))
    index = min(header.tensor_types)
    raw = bytearray(rewrite(header.tensor_types).read_bytes())
    key = struct.pack("<ii", TENSOR_TYPE_KEYS + index, int(FloatType.F16))
    raw[raw.index(key) + 4: raw.index(key) + 8] = struct.pack("<i", 9)
    (tmp_path / "type9.m").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=f"header key {TENSOR_TYPE_KEYS + index} \\(type of tensor {index}\\) "
                                             "has unknown float type 9"):
        read_header(tmp_path / "type9.m")


@pytest.fixture(scope="module")
def workers():
    w = Workers(3)
    yield w
    w.close()


@pytest.fixture(scope="module")
def heads_of_16(tmp_path_factory):
    """glm4_moe with head_dim 16 (two heads per 32-value block of o's columns) and experts 80 wide (their
    down projections stored at F16, so their rows split anywhere). (heads, KV heads) -> (Q80 file,
    token ids, reference logits)."""
    root = tmp_path_factory.mktemp("heads_of_16")
    made = {}

    def make(n_heads, n_kv):
        if (n_heads, n_kv) not in made:
            ids = sequence(384)
            model = with_clear_routing(lambda seed: random_model("glm4_moe_air", seed, num_attention_heads=n_heads,
                                                                 num_key_value_heads=n_kv, head_dim=16,
                                                                 moe_intermediate_size=80), ids)
            model.save_pretrained(root / f"{n_heads}")
            path = root / f"{n_heads}.m"
            convert(root / f"{n_heads}", path, dtype="q80", progress=False, log=lambda *a: None)
            made[n_heads, n_kv] = path, ids, reference_logits(model, ids)
        return made[n_heads, n_kv]

    return make


@pytest.mark.parametrize("nodes", [2, 3, 4])
def test_shares_of_heads_end_on_block_boundaries(heads_of_16, workers, nodes):
    """10 heads of 16 columns at Q80 are 5 blocks: 3 nodes take 2, 4 and 4 heads (3, 3 and 4 would cut
    blocks), 4 nodes 2, 2, 2 and 4; the experts' 80 rows go 26, 27, 27 and 20 x 4."""
    path, ids, ref = heads_of_16(10, 2)
    types = {t.spec.name: t.dtype for t in read_layout(path).tensors}
    assert types["layers.1.moe.experts.0.down"] == FloatType.F16 and types["layers.1.attn.o"] == FloatType.Q80
    with Engine(path, threads=1) as eng:
        single = prefill_then_decode(eng, ids)
    with Engine(path, threads=1, workers=workers.addresses[:nodes - 1], exchange="f32") as eng:
        split = prefill_then_decode(eng, ids)
    assert np.abs(split - single).max() <= 1e-4 * single.std()
    assert np.abs(split - ref).max() <= Q80_BOUND * ref.std()


def test_impossible_split_is_refused_before_contacting_workers(heads_of_16):
    path, _, _ = heads_of_16(4, 2)
    # Nothing listens there: the refusal must come before any connection is tried.
    with pytest.raises(ValueError, match=r"cannot split .*4\.m across 3 nodes: layers\.0\.attn\.o \(q80\) can only be "
                                         r"cut between 32-value blocks of its 64 input columns, i\.e\. after every 2 of "
                                         r"its 4 heads of 16 columns; it runs on 1 to 2 nodes \(more with F32 or F16 "
                                         r"weights\)"):
        Engine(path, threads=1, workers=["127.0.0.1:1", "127.0.0.1:1"])
