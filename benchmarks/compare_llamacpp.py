"""Measures dllama_py against llama.cpp on the same weights, same threads, in one run.

    # 1. a random checkpoint with real widths, converted by both tools
    python benchmarks/make_model.py llama-1b /tmp/llama-1b
    dllama-py convert /tmp/llama-1b -o /tmp/llama-1b-q40.m --dtype q40 --pure
    dllama-py convert /tmp/llama-1b -o /tmp/llama-1b-q80.m --dtype q80
    python benchmarks/compare_llamacpp.py gguf /tmp/llama-1b --llama-cpp-src /tmp/lcp/src -o /tmp/llama-1b

    # 2. both engines, 2 threads, prefill of 128 tokens and 64 greedy decode steps, median of 5
    python benchmarks/compare_llamacpp.py run --threads 2 --repeats 5 \\
        /tmp/llama-1b-q40.m /tmp/llama-1b-q4_0.gguf /tmp/llama-1b-q80.m /tmp/llama-1b-q8_0.gguf

llama.cpp comes from the `llama-cpp-python` package (`import llama_cpp`); its converter
(`convert_hf_to_gguf.py` with `gguf-py/`) from llama.cpp's source tree, e.g. the one vendored in the
llama-cpp-python sdist. Nothing of llama.cpp lives in this repository.

Q4_0 and Q8_0 are the same block formats as our Q40 and Q80 (32 weights per block, one f16 scale), and the
GGUF files are quantized with `pure` set, so the output head is Q4_0/Q8_0 too (llama.cpp otherwise makes it
Q6_K): both engines read the same weight bytes per decoded token.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# Conversion to GGUF with llama.cpp's own tools
# ---------------------------------------------------------------------------------------------------------------


def _shadow_checkpoint(hf_dir: Path, work: Path) -> Path:
    """A directory of links to hf_dir whose config.json names the HF architecture class.

    make_model.py writes `"architectures": []`; llama.cpp's converter picks its model class from that list.
    """
    cfg = json.loads((hf_dir / "config.json").read_text())
    if cfg.get("architectures"):
        return hf_dir
    classes = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen3": "Qwen3ForCausalLM"}
    cfg["architectures"] = [classes[cfg["model_type"]]]
    work.mkdir(parents=True, exist_ok=True)
    for f in hf_dir.iterdir():
        link = work / f.name
        if f.name != "config.json" and not link.exists():
            link.symlink_to(f.resolve())
    (work / "config.json").write_text(json.dumps(cfg, indent=2))
    return work


def convert_to_gguf(hf_dir: Path, llama_cpp_src: Path, out_prefix: Path, quants: list[str]) -> list[Path]:
    """HF checkpoint -> f16 GGUF (convert_hf_to_gguf.py) -> Q4_0 / Q8_0 GGUF (llama_model_quantize)."""
    import logging

    f16 = Path(f"{out_prefix}-f16.gguf")
    if not f16.exists():
        src = _shadow_checkpoint(hf_dir, Path(f"{out_prefix}-hf-shadow"))
        sys.path[:0] = [str(llama_cpp_src), str(llama_cpp_src / "gguf-py")]
        import convert_hf_to_gguf  # noqa: F401  (registers the model classes)
        from conversion import ModelBase, get_model_architecture, get_model_class, ModelType
        from conversion.base import TextModel
        import gguf

        # make_model.py's tokenizer is a byte-level BPE with no merges whose pre-tokenizer hash llama.cpp does
        # not know. The weights do not depend on it: keep the tokens, call the pre-tokenizer "gpt-2" (the
        # same ByteLevel regex), and skip the sentencepiece attempt (there is no tokenizer.model).
        orig_pre = TextModel.get_vocab_base_pre

        def vocab_pre(self, tokenizer):
            try:
                return orig_pre(self, tokenizer)
            except NotImplementedError:
                return "gpt-2"

        orig_sp = TextModel._set_vocab_sentencepiece

        def set_vocab_sp(self, *a, **kw):
            if not (self.dir_model / "tokenizer.model").is_file():
                raise FileNotFoundError("no tokenizer.model")
            return orig_sp(self, *a, **kw)

        # llama.cpp refuses a "gpt2" vocabulary without merges ("cannot find tokenizer merges in model file"):
        # give it one merge ("Ġ Ġ") whose result is not in the vocabulary, so tokenization is unchanged.
        orig_add = gguf.SpecialVocab.add_to_gguf

        def add_to_gguf(self, gw, *a, **kw):
            if self.load_merges and not self.merges:
                self.merges = ["\u0120 \u0120"]
            return orig_add(self, gw, *a, **kw)

        TextModel.get_vocab_base_pre = vocab_pre
        TextModel._set_vocab_sentencepiece = set_vocab_sp
        gguf.SpecialVocab.add_to_gguf = add_to_gguf
        logging.basicConfig(level=logging.WARNING)

        import torch

        with torch.inference_mode():
            hparams = ModelBase.load_hparams(src, False)
            cls = get_model_class(get_model_architecture(hparams, ModelType.TEXT))
            model = cls(src, gguf.LlamaFileType.MOSTLY_F16, f16)
            model.write()
        print(f"wrote {f16}")

    import llama_cpp

    ftypes = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}
    outs = []
    for q in quants:
        out = Path(f"{out_prefix}-{q}.gguf")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftypes[q]
        params.nthread = 2
        params.pure = True  # every matrix in `q`, the output head included, as in our --pure .m files
        t0 = time.perf_counter()
        rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), params)
        if rc != 0:
            raise SystemExit(f"llama_model_quantize({q}) failed with {rc}")
        print(f"wrote {out} ({out.stat().st_size / 1e6:,.1f} MB in {time.perf_counter() - t0:.1f} s)")
        outs.append(out)
    return outs


# ---------------------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    prefill_tps: float
    decode_tps: float


def prompt_tokens(vocab: int, n: int) -> list[int]:
    return np.random.default_rng(0).integers(0, vocab, n).tolist()  # the prompt run_bench uses


def bench_ours(path: Path, threads: int, n_prompt: int, n_gen: int, bandwidth: float):
    from dllama_py.bench import run_bench

    r = run_bench(path, threads=threads, prompt_tokens=n_prompt, gen_tokens=n_gen, bandwidth_gbps=bandwidth / 1e9,
                  max_seq_len=512, print_table=False)
    return Sample(r.prefill_tokens_per_s, r.decode_tokens_per_s), r


class LlamaCppRunner:
    def __init__(self, path: Path, threads: int):
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=512,
                                   n_batch=128, logits_all=False, verbose=False)
        self.vocab = self.llm.n_vocab()
        self.llm.eval(prompt_tokens(self.vocab, 8))  # warm-up, as run_bench does
        self._argmax()

    def _argmax(self) -> int:
        ptr = self.llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(self.vocab,)).argmax())

    def sample(self, n_prompt: int, n_gen: int) -> Sample:
        llm = self.llm
        prompt = prompt_tokens(self.vocab, n_prompt)
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        token = self._argmax()
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n_gen):
            llm.eval([token])
            token = self._argmax()
        decode_s = time.perf_counter() - t0
        return Sample(n_prompt / prefill_s, n_gen / decode_s)

    def close(self):
        self.llm.close()


def kv_f16_bytes_per_token(path_m: Path, n_prompt: int, n_gen: int) -> float:
    """Mean KV cache bytes a decode step reads in llama.cpp (f16 K and V) over the decode positions."""
    from dllama_py.architectures import read_layout

    p = read_layout(path_m).params
    head_dim = p.get("head_dim") or p["dim"] // p["n_heads"]
    mean_pos = n_prompt + (n_gen + 1) / 2
    return 2 * p["n_layers"] * p["n_kv_heads"] * head_dim * 2 * mean_pos


def run(pairs: list[tuple[Path, Path]], threads: int, repeats: int, n_prompt: int, n_gen: int):
    from dllama_py import _core

    print(f"measuring read bandwidth ({threads} threads, 2 GiB, best of 5, before and after) ...", flush=True)
    bandwidth = _core.read_bandwidth(1 << 31, threads, 5)
    print(f"read bandwidth: {bandwidth / 1e9:.2f} GB/s")
    rows = []
    for m_path, gguf_path in pairs:
        ours: list[Sample] = []
        theirs: list[Sample] = []
        runner = LlamaCppRunner(gguf_path, threads)
        last = None
        for i in range(repeats):  # interleaved, so both engines see the same background load
            s, last = bench_ours(m_path, threads, n_prompt, n_gen, bandwidth)
            ours.append(s)
            t = runner.sample(n_prompt, n_gen)
            theirs.append(t)
            print(f"  {last.weights} rep {i + 1}/{repeats}: ours prefill {s.prefill_tps:7.1f} decode {s.decode_tps:6.2f}"
                  f" | llama.cpp prefill {t.prefill_tps:7.1f} decode {t.decode_tps:6.2f} tok/s"
                  f" | load avg {os.getloadavg()[0]:.1f}", flush=True)
        runner.close()
        weights = last.weight_bytes_per_token
        kv_theirs = kv_f16_bytes_per_token(m_path, n_prompt, n_gen)
        for engine, samples, kv in (("dllama_py", ours, last.kv_bytes_per_token), ("llama.cpp", theirs, kv_theirs)):
            pre = [s.prefill_tps for s in samples]
            dec = [s.decode_tps for s in samples]
            rows.append(dict(engine=engine, weights=last.weights, prefill=statistics.median(pre), prefill_best=max(pre),
                             decode=statistics.median(dec), decode_best=max(dec), bytes=weights + kv))
    bandwidth = max(bandwidth, _core.read_bandwidth(1 << 31, threads, 5))  # again: the machine may be shared
    print()
    print(f"{threads} threads, prompt {n_prompt} random tokens, {n_gen} greedy decode steps, median (best) of "
          f"{repeats} interleaved repetitions; read bandwidth {bandwidth / 1e9:.2f} GB/s")
    hdr = ("engine", "weights", "prefill tok/s", "decode tok/s", "MB read/token", "decode GB/s", "% of bandwidth")
    lines = [hdr]
    for r in rows:
        gbs = r["bytes"] * r["decode"] / 1e9
        lines.append((r["engine"], r["weights"], f"{r['prefill']:.1f} ({r['prefill_best']:.1f})",
                      f"{r['decode']:.2f} ({r['decode_best']:.2f})", f"{r['bytes'] / 1e6:.1f}", f"{gbs:.2f}",
                      f"{gbs * 1e9 / bandwidth:.0%}"))
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(hdr))]
    fmt = lambda l: "| " + " | ".join(str(c).ljust(w) for c, w in zip(l, widths)) + " |"  # noqa: E731
    print(fmt(hdr))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for l in lines[1:]:
        print(fmt(l))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gguf", help="convert an HF checkpoint to f16, Q4_0 and Q8_0 GGUF with llama.cpp's tools")
    g.add_argument("hf_dir", type=Path)
    g.add_argument("--llama-cpp-src", type=Path, required=True,
                   help="llama.cpp source tree holding convert_hf_to_gguf.py and gguf-py/")
    g.add_argument("-o", "--out-prefix", type=Path, required=True, help="writes PREFIX-f16.gguf, PREFIX-q4_0.gguf, ...")
    g.add_argument("--quant", nargs="+", default=["q4_0", "q8_0"], choices=["q4_0", "q8_0"])
    r = sub.add_parser("run", help="measure both engines")
    r.add_argument("models", type=Path, nargs="+", help="pairs: OURS.m THEIRS.gguf [OURS.m THEIRS.gguf ...]")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--repeats", type=int, default=5)
    r.add_argument("--prompt-tokens", type=int, default=128)
    r.add_argument("--gen-tokens", type=int, default=64)
    args = ap.parse_args()
    if args.cmd == "gguf":
        convert_to_gguf(args.hf_dir, args.llama_cpp_src, args.out_prefix, args.quant)
    else:
        if len(args.models) % 2:
            ap.error("give the models in pairs: OURS.m THEIRS.gguf")
        pairs = list(zip(args.models[::2], args.models[1::2]))
        run(pairs, args.threads, args.repeats, args.prompt_tokens, args.gen_tokens)


if __name__ == "__main__":
    main()
