"""GLM's multi-token-prediction layer against transformers' own MTP path (MtpModel, which
`generate(use_mtp=True)` drives), on tiny glm4_moe (GQA) and glm4_moe_lite (latent attention) models
whose checkpoints hold an MTP layer the way GLM's do: the converter keeps it, the engine runs it, and
its draft logits match over a prefill chunk, single steps and chained drafts."""

from __future__ import annotations

import numpy as np
import pytest
from hf_models import N_PREFILL, build_with_mtp

from dllama_py import Engine
from dllama_py.architectures import read_layout
from dllama_py.convert import convert
from dllama_py.sampling import Sampler

CHAIN = 3  # drafts chained after the last position


class MtpModels:
    def __init__(self, root):
        self.root, self.built, self.converted = root, {}, {}

    def hf(self, name, bigram=False):
        key = (name, bigram)
        if key not in self.built:
            directory = self.root / f"{name}{'-bigram' if bigram else ''}"
            self.built[key] = (directory, *build_with_mtp(name, directory, bigram))
        return self.built[key]

    def m(self, name, dtype, mtp=True, bigram=False):
        key = (name, dtype, mtp, bigram)
        if key not in self.converted:
            out = self.root / f"{name}-{dtype}{'' if mtp else '-nomtp'}{'-bigram' if bigram else ''}.m"
            convert(self.hf(name, bigram)[0], out, dtype=dtype, progress=False, log=lambda *a: None, mtp=mtp)
            self.converted[key] = out
        return self.converted[key]


@pytest.fixture(scope="module")
def mtp_models(tmp_path_factory):
    return MtpModels(tmp_path_factory.mktemp("mtp_models"))


def oracle(model, mtp, ids: list[int]):
    """transformers: the main model's last hidden states (what MTPCandidateGenerator hands the MTP
    layer: hidden_states[-1], which transformers ties to the output after the final norm), the MTP
    layer's logits at every position i (token i+1 with h_i), then CHAIN drafts, each fed the layer's own
    output hidden state and the previous draft's argmax."""
    import torch
    from transformers.cache_utils import MtpCache

    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=-1)
        h = [x for x in out.hidden_states if x is not None][-1]
        n = len(ids) - 1
        cache = MtpCache(config=model.config.get_mtp_config())
        hidden = mtp.forward_layer(0, h[:, :n], torch.arange(1, n + 1)[None], cache, input_ids=torch.tensor([ids[1:]]))
        rows = [mtp._project_to_logits(hidden)[0]]
        drafts = []
        for j in range(CHAIN):
            drafts.append(int(rows[-1][-1].argmax()))
            hidden = mtp.forward_layer(0, hidden[:, -1:], torch.tensor([[n + 1 + j]]), cache,
                                       input_ids=torch.tensor([[drafts[-1]]]))
            rows.append(mtp._project_to_logits(hidden)[0])
    return h[0].numpy(), torch.cat(rows).numpy(), drafts


def ours(path, ids: list[int], drafts: list[int]):
    """The engine: main steps (a prefill chunk, then single tokens) with their hidden states, the MTP
    layer over the same positions (a chunk, then single rows), then the chained drafts."""
    with Engine(path, threads=2, draft="mtp", max_seq_len=64) as eng:
        m = eng.model
        assert m.has_mtp
        hidden = []
        for chunk in [ids[:N_PREFILL]] + [[t] for t in ids[N_PREFILL:]]:
            pos = m.length(0)
            n = len(chunk)
            _, h = m.step(chunk, [0] * n, range(pos, pos + n), [False] * n, hidden=True)
            hidden.append(h)
        hidden = np.concatenate(hidden)
        n = len(ids) - 1
        logits = []
        for a, b in [(0, N_PREFILL)] + [(i, i + 1) for i in range(N_PREFILL, n)]:
            out, h_out = m.mtp_step(ids[a + 1:b + 1], hidden[a:b], [0] * (b - a), range(a, b), [True] * (b - a))
            logits.append(out)
        for j, d in enumerate(drafts):
            out, h_out = m.mtp_step([d], h_out[-1:], [0], [n + j], [True])
            logits.append(out)
        assert m.mtp_length(0) == n + len(drafts) and m.length(0) == len(ids)
        m.truncate(0, 10)
        assert m.mtp_length(0) == 10
    return hidden, np.concatenate(logits)


@pytest.mark.parametrize("name", ["glm4_moe_air", "glm4_moe_lite"])
def test_mtp_draft_logits_match_transformers(mtp_models, name):
    _, model, mtp, ids = mtp_models.hf(name)
    ref_hidden, ref, drafts = oracle(model, mtp, ids)
    hidden, logits = ours(mtp_models.m(name, "f32"), ids, drafts)
    assert np.abs(hidden - ref_hidden).max() <= 1e-4 * ref_hidden.std()
    assert logits.shape == ref.shape == (len(ids) - 1 + CHAIN, 384)
    assert np.abs(logits - ref).max() <= 1e-3 * ref.std()
    # Q40 weights: the parity tests' bound (far closer than unrelated logits, ~4 x std).
    _, q40 = ours(mtp_models.m(name, "q40"), ids, drafts)
    assert np.abs(q40 - ref).max() < ref.std() and (q40.argmax(-1) == ref.argmax(-1)).mean() >= 0.5


def test_converter_keeps_the_mtp_layer_unless_asked_not_to(mtp_models):
    with_mtp, without = read_layout(mtp_models.m("glm4_moe_air", "q40")), read_layout(mtp_models.m("glm4_moe_air", "q40", mtp=False))
    assert with_mtp.params["n_mtp_layers"] == 1 and "n_mtp_layers" not in without.params
    extra = [t.spec.name for t in with_mtp.tensors[len(without.tensors):]]
    assert [t.spec.name for t in with_mtp.tensors[:len(without.tensors)]] == [t.spec.name for t in without.tensors]
    assert extra[-4:] == ["layers.3.mtp.enorm", "layers.3.mtp.hnorm", "layers.3.mtp.eh_proj", "layers.3.mtp.head_norm"]
    assert "layers.3.moe.experts.7.up" in extra and "layers.3.attn.q" in extra
    with Engine(without.path, threads=1) as eng:
        assert not eng.model.has_mtp
    with pytest.raises(ValueError, match="has no multi-token-prediction layer"):
        Engine(without.path, threads=1, draft="mtp")
    with Engine(with_mtp.path, threads=1) as eng:  # loaded only when drafting with it
        assert not eng.model.has_mtp
        small = eng.kv_cache_bytes
    with Engine(with_mtp.path, threads=1, draft="mtp") as eng:
        assert eng.model.has_mtp and eng.kv_cache_bytes == small * 4 // 3  # one more layer's cache


def direct_drafts(model, seq: list[int], k: int, slot: int) -> list[int]:
    """The MTP layer's k greedy guesses after seq, computed from scratch in `slot`."""
    model.truncate(slot, 0)
    n = len(seq) - 1
    _, h = model.step(seq[:n], [slot] * n, range(n), [False] * n, hidden=True)
    logits, out = model.mtp_step(seq[1:], h, [slot] * n, range(n), [False] * (n - 1) + [True])
    drafts = [int(logits[-1].argmax())]
    for j in range(k - 1):
        logits, out = model.mtp_step([drafts[-1]], out[-1:], [slot], [n + j], [True])
        drafts.append(int(logits[-1].argmax()))
    return drafts


@pytest.mark.parametrize("name", ["glm4_moe_air", "glm4_moe_lite"])
def test_scheduler_drafts_with_the_mtp_layer(mtp_models, name):
    """Greedy output equals plain greedy output; at every step the scheduler's guesses are the MTP layer's
    guesses computed from scratch for the sequence so far (a 70-token prompt prefilled in two chunks,
    then verification steps that keep some guesses and drop others)."""
    path = mtp_models.m(name, "f32")
    rng = np.random.default_rng(5)
    prompt = rng.integers(0, 384, 70).tolist()
    with Engine(path, threads=2, draft="mtp", max_sequences=3, max_seq_len=128) as eng:
        sched = eng.scheduler
        plain = list(sched.submit(prompt, max_tokens=24))
        req = sched.submit(prompt + [1], max_tokens=24, draft="mtp", draft_tokens=3)  # shares the prompt's cache
        records = []
        while sched.step():
            if req._next is not None and req._mtp_drafts:
                records.append((req._slot.tokens + [req._next], list(req._mtp_drafts)))
        again = sched.submit(prompt, max_tokens=24, draft="mtp", draft_tokens=3)
        assert list(again) == plain
        assert again.stats.drafted_tokens > 0 and again.stats.cached_tokens > 0
        full = prompt + [1] + list(req._out)
        assert len(records) >= 5
        for seq, drafts in records:
            assert full[:len(seq)] == seq
            assert drafts == direct_drafts(eng.model, seq, len(drafts), slot=2)
        # Several requests at once, sampling too: each is a valid run of its own.
        reqs = [sched.submit(prompt[:40 + 7 * i], max_tokens=16, draft="mtp", draft_tokens=2 + i) for i in range(3)]
        outs = [list(r) for r in reqs]
        assert outs == [list(sched.submit(prompt[:40 + 7 * i], max_tokens=16)) for i in range(3)]
        sampled = sched.submit(prompt, max_tokens=16, draft="mtp", sampler=Sampler(seed=1))
        assert len(list(sampled)) == 16 and sampled.stats.drafted_tokens > 0


def test_right_mtp_guesses_are_kept(mtp_models):
    """A model whose MTP layer always guesses right (hf_models.build_with_mtp(bigram=True)): every guess
    is kept, so each step gives draft_tokens + 1 tokens, the same as plain decoding gives one by one;
    with sampling, most guesses are kept too."""
    _, model, mtp, ids = mtp_models.hf("glm4_moe_air", bigram=True)
    path = mtp_models.m("glm4_moe_air", "f32", bigram=True)
    with Engine(path, threads=2, draft="mtp", max_seq_len=128) as eng:
        plain = list(eng.scheduler.submit(ids, max_tokens=30))
        for k in (1, 3, 4):
            req = eng.scheduler.submit(ids, max_tokens=30, draft="mtp", draft_tokens=k)
            assert list(req) == plain
            assert req.stats.accepted_tokens == req.stats.drafted_tokens > 0
            assert req.stats.decode_steps == -(-29 // (k + 1))
        req = eng.scheduler.submit(ids, max_tokens=30, draft="mtp", draft_tokens=3, sampler=Sampler(temperature=0.5, seed=3))
        assert len(list(req)) == 30 and req.stats.acceptance_rate > 0.5


@pytest.mark.parametrize("n_workers", [1, 2])
def test_speculation_with_workers(mtp_models, n_workers):
    """Split over in-process workers (f32 exchange): the same tokens, guesses and acceptance as on one
    node, and a verification step of k + 1 rows costs the exchanges of a one-row step."""
    from test_distributed import Workers

    _, _, _, ids = mtp_models.hf("glm4_moe_lite", bigram=True)
    path = mtp_models.m("glm4_moe_lite", "f32", bigram=True)
    workers = Workers(n_workers)
    try:
        results = []
        for addresses in ([], workers.addresses):
            with Engine(path, threads=1, draft="mtp", max_seq_len=96, workers=addresses, exchange="f32") as eng:
                sched = eng.scheduler
                runs = [sched.submit(ids, max_tokens=20, draft="mtp", draft_tokens=3),
                        sched.submit(ids + ids, max_tokens=20, draft="ngram", draft_tokens=4)]
                outs = [(list(r), r.stats.accepted_tokens, r.stats.decode_steps) for r in runs]
                # Exchanges of one decode step, without and with 4 guesses to check.
                syncs = []
                for drafts in ([], ids[1:5]):
                    sched.reset(0)
                    eng.forward(ids[:8])
                    eng.reset_net_stats()
                    n = 1 + len(drafts)
                    eng.model.step([ids[8]] + drafts, [0] * n, range(8, 8 + n), [True] * n)
                    syncs.append(eng.net_stats()["syncs"])
                results.append((outs, syncs))
        (single, _), (split, syncs) = results
        assert split == single
        assert single[0][1] > 0 and syncs[0] == syncs[1] > 0
    finally:
        workers.close()


def test_command_line(mtp_models, tmp_path, capsys):
    """convert keeps the layer (--no-mtp drops it), inspect shows it, bench --draft mtp measures it."""
    from dllama_py.cli import main

    hf_dir = mtp_models.hf("glm4_moe_air", bigram=True)[0]
    for flags, name in (([], "a.m"), (["--no-mtp"], "b.m")):
        assert main(["convert", str(hf_dir), "-o", str(tmp_path / name), "--dtype", "f32", "-q", *flags]) == 0
    assert main(["inspect", str(tmp_path / "a.m")]) == 0
    text = capsys.readouterr().out
    assert "n_mtp_layers" in text and "multi-token-prediction layer: layers.3, " in text and "with --draft mtp" in text
    assert main(["inspect", str(tmp_path / "b.m")]) == 0
    assert "multi-token-prediction" not in capsys.readouterr().out
    assert main(["bench", "-m", str(tmp_path / "a.m"), "-t", "1", "--prompt-tokens", "8", "--gen-tokens", "9",
                 "--bandwidth", "20", "--draft", "mtp", "--draft-tokens", "3"]) == 0
    text = capsys.readouterr().out
    assert "decode, --draft mtp" in text and "3 per step, 100% kept, 4.00 tokens per step" in text
    assert "same tokens as plain   yes" in text


@pytest.mark.parametrize("name, dtype", [("glm4_moe_air", "f32"), ("glm4_moe_lite", "q40")])
def test_node_memory_counts_the_mtp_layer(mtp_models, name, dtype):
    """inspect's memory per node (node_memory.py) with and without the MTP layer, against what the C++
    graph reads and allocates for each node's share."""
    from dllama_py import _core
    from dllama_py.engine import model_config
    from dllama_py.node_memory import node_memory

    layout = read_layout(mtp_models.m(name, dtype))
    tensors = [_core.TensorInfo(t.spec.name, _core.FloatType(int(t.dtype)), t.spec.rows, t.spec.cols, t.offset)
               for t in layout.tensors]
    for mtp in (False, True):
        cfg = model_config(layout, 100, mtp=mtp)
        for n_nodes in (1, 2):
            for node in range(n_nodes):
                measured = _core.measure_node_share(str(layout.path), cfg, tensors, node, n_nodes)
                estimate = node_memory(layout, node, n_nodes, cfg.seq_len, cfg.kv_f16, mtp=mtp)
                assert (estimate.weights, estimate.kv_cache) == measured, (mtp, node, n_nodes)


def test_bad_mtp_calls_are_refused_with_a_reason(mtp_models):
    path = mtp_models.m("glm4_moe_air", "f32")
    hidden = np.zeros((1, 128), dtype=np.float32)
    with Engine(path, threads=1) as eng:
        with pytest.raises(Exception, match="loaded without its MTP layer"):
            eng.model.mtp_step([1], hidden, [0], [0], [True])
        with pytest.raises(ValueError, match="draft='mtp' needs the model's multi-token-prediction layer"):
            eng.scheduler.submit([1, 2, 3], draft="mtp")
    with Engine(path, threads=1, draft="mtp") as eng:
        m = eng.model
        with pytest.raises(Exception, match="continues at position 0, not 3"):
            m.mtp_step([1], hidden, [0], [3], [True])
        with pytest.raises(Exception, match="hidden must be rows x dim"):
            m.mtp_step([1, 2], hidden, [0, 0], [0, 1], [True, True])
        with pytest.raises(Exception, match="outside the vocabulary"):
            m.mtp_step([384], hidden, [0], [0], [True])
        with pytest.raises(Exception, match="can only be cut back"):
            m.truncate_mtp(0, 1)
