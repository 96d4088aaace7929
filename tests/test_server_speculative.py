"""`dllama-py serve --draft ngram|mtp`: replies equal to those of a server without speculation (greedy,
alone and two at once), the guesses in the usage (OpenAI's predicted-output fields) and in /metrics."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

from dllama_py import Engine  # noqa: E402
from dllama_py.convert import convert  # noqa: E402
from dllama_py.server import ApiServer, ServerOptions  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from make_model import write_byte_tokenizer  # noqa: E402

PROMPT = [{"role": "user", "content": "one two three four five six, one two three four five six, one two three"}]


@pytest.fixture(scope="module")
def glm_with_mtp(tmp_path_factory) -> Path:
    """The tiny GLM-4.5 whose MTP layer always guesses right (hf_models.build_with_mtp), with a tokenizer."""
    from hf_models import build_with_mtp

    directory = tmp_path_factory.mktemp("server_mtp")
    build_with_mtp("glm4_moe_air", directory / "hf", bigram=True)
    write_byte_tokenizer(directory / "hf", 384)
    out = directory / "glm.m"
    convert(directory / "hf", out, dtype="f32", progress=False, log=lambda *a: None)
    return out


def replies(engine: Engine, n: int = 2, **request) -> tuple[list[str], list, str]:
    """n greedy chat completions sent at once to a server over `engine`: (texts, usages, /metrics text)."""
    server = ApiServer(engine, port=0, options=ServerOptions(parallel=2)).start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
    results: list = [None] * n

    def ask(i: int):
        results[i] = client.chat.completions.create(model="m", messages=PROMPT, temperature=0, max_tokens=40 + i,
                                                    **request)

    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        import urllib.request

        with urllib.request.urlopen(server.url + "/metrics") as r:
            metrics = r.read().decode()
    finally:
        server.stop()
    return [r.choices[0].message.content for r in results], [r.usage for r in results], metrics


def metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


@pytest.mark.parametrize("draft", ["ngram", "mtp"])
def test_speculating_server_gives_the_same_replies(glm_with_mtp, draft):
    with Engine(glm_with_mtp, threads=1, max_sequences=2) as eng:
        plain, usages, _ = replies(eng)
    assert all(u.completion_tokens_details is None or not u.completion_tokens_details.accepted_prediction_tokens
               for u in usages)
    with Engine(glm_with_mtp, threads=1, max_sequences=2, draft=draft, draft_tokens=3) as eng:
        fast, usages, metrics = replies(eng)
        sampled, _, _ = replies(eng, n=1, frequency_penalty=0.5, seed=1)  # penalties apply guess by guess
    assert fast == plain and len(sampled[0]) > 0
    accepted = sum(u.completion_tokens_details.accepted_prediction_tokens for u in usages)
    rejected = sum(u.completion_tokens_details.rejected_prediction_tokens for u in usages)
    assert accepted > 0 and (draft == "ngram" or rejected == 0)  # the MTP layer of this model is always right
    assert metric(metrics, "dllama_draft_tokens_accepted_total") == accepted
    assert metric(metrics, "dllama_draft_tokens_total") == accepted + rejected
