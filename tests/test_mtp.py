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
