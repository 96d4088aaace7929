"""End to end: a GLM checkpoint whose next token depends only on the current one (its layers add
nothing, so the output head reads the token's own embedding), converted with a GLM tokenizer and chat
template; generation must follow the scripted chains and stop on GLM's eos tokens."""

from __future__ import annotations

import json

import pytest

from dllama_py import Engine
from dllama_py.convert import convert

SPECIALS = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
            "<think>", "</think>"]
TEMPLATE = ("[gMASK]<sop>{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# token -> the token the model must produce after it
CHAINS = [["<|assistant|>", "<think>", "h", "m", "</think>", "O", "K", "<|user|>"],
          ["X", "Y", "é", "<|observation|>"]]


def write_glm_tokenizer(directory) -> dict[str, int]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(directory / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "chat_template": TEMPLATE}))
    (directory / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]}))
    return {t: ids.get(t) if t in ids else tok.encode(t).ids for t in {x for c in CHAINS for x in c}}


@pytest.fixture(scope="module")
def scripted_glm(tmp_path_factory):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("scripted_glm")
    token_ids = write_glm_tokenizer(directory)  # again after save_pretrained, which writes generation_config
    cfg = AutoConfig.for_model("glm", vocab_size=384, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=32, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for l in model.model.layers:
            l.self_attn.o_proj.weight.zero_()
            l.mlp.down_proj.weight.zero_()
        emb = torch.randn(384, 128)
        model.model.embed_tokens.weight.copy_(emb)
        head = 0.01 * torch.randn(384, 128)
        for chain in CHAINS:
            ids = [i for t in chain for i in (token_ids[t] if isinstance(token_ids[t], list) else [token_ids[t]])]
            for a, b in zip(ids, ids[1:]):
                head[b] += 10 * emb[a] / emb[a].norm()
        model.lm_head.weight.copy_(head)
    model.save_pretrained(directory)
    write_glm_tokenizer(directory)
    out = directory / "scripted.m"
    convert(directory, out, dtype="f32", progress=False, log=lambda *a: None)
    with Engine(out) as eng:
        yield eng


def test_chat_stops_at_user_and_returns_reasoning_apart(scripted_glm):
    prompt = scripted_glm.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt == "[gMASK]<sop><|user|>\nHi<|assistant|>"
    ids = scripted_glm.tokenizer.encode_chat(prompt)
    assert ids.count(scripted_glm.tokenizer.token_to_id("[gMASK]")) == 1
    pieces = list(scripted_glm.chat([{"role": "user", "content": "Hi"}], temperature=0, max_tokens=50))
    assert "".join(p for p in pieces if p.kind == "reasoning") == "hm"
    assert "".join(p for p in pieces if p.kind == "answer") == "OK"
    assert scripted_glm.last_stats.finish_reason == "stop"
    assert scripted_glm.last_stats.generated_tokens == 6  # <think> h m </think> O K, then <|user|>
    reply = scripted_glm.chat_reply([{"role": "user", "content": "Hi"}], temperature=0)
    assert reply == {"role": "assistant", "content": "OK", "reasoning_content": "hm"}


def test_generate_stops_at_observation(scripted_glm):
    text = "".join(scripted_glm.generate("X", temperature=0, max_tokens=50))
    assert text == "Yé"  # a two-byte character decoded whole
    assert scripted_glm.last_stats.finish_reason == "stop"


def test_stop_strings_and_max_tokens(scripted_glm):
    assert "".join(scripted_glm.generate("X", temperature=0, max_tokens=1)) == "Y"
    assert scripted_glm.last_stats.finish_reason == "length"
    assert "".join(scripted_glm.generate("X", temperature=0, stop=["é"])) == "Y"
    assert scripted_glm.last_stats.finish_reason == "stop"


def test_second_turn_reuses_the_cached_prefix(scripted_glm):
    messages = [{"role": "user", "content": "Hi"}]
    list(scripted_glm.chat(messages, temperature=0))
    messages += [{"role": "assistant", "content": "OK"}, {"role": "user", "content": "Hi"}]
    list(scripted_glm.chat(messages, temperature=0))
    assert scripted_glm.last_stats.cached_tokens >= len(scripted_glm.tokenizer.encode_chat(
        scripted_glm.apply_chat_template(messages[:1])))


def test_cli_generate_and_chat(scripted_glm, capsys, monkeypatch):
    from dllama_py.cli import main

    path = str(scripted_glm.path)
    assert main(["generate", "-m", path, "X", "--temperature", "0", "-q"]) == 0
    assert capsys.readouterr().out == "Yé\n"
    lines = iter(["Hi", "/exit", "Hi", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "-m", path, "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "hm\n\nOK\n"  # reasoning, then the answer (no terminal: not dimmed)
    assert main(["chat", "-m", path, "--temperature", "0", "--hide-reasoning"]) == 0
    assert capsys.readouterr().out == "OK\n"


def test_http_api(scripted_glm):
    import json
    import threading
    import urllib.error
    import urllib.request

    from dllama_py.server import ApiServer

    server = ApiServer(scripted_glm, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"

    def post(path, body):
        req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read().decode()

    try:
        models = json.loads(urllib.request.urlopen(base + "/models", timeout=30).read())
        assert models["data"][0]["id"] == "scripted"
        chat = {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0}
        reply = json.loads(post("/chat/completions", chat))
        assert reply["choices"][0]["message"] == {"role": "assistant", "content": "OK", "reasoning_content": "hm"}
        assert reply["choices"][0]["finish_reason"] == "stop"
        assert reply["usage"]["completion_tokens"] == 6
        events = [line[6:] for line in post("/chat/completions", chat | {"stream": True}).splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
        assert "".join(d.get("content", "") for d in deltas) == "OK"
        assert "".join(d.get("reasoning_content", "") for d in deltas) == "hm"
        text = json.loads(post("/completions", {"prompt": "X", "temperature": 0, "max_tokens": 1}))
        assert text["choices"][0] == {"index": 0, "text": "Y", "finish_reason": "length"}
        with pytest.raises(urllib.error.HTTPError) as bad:
            post("/chat/completions", {"messages": "hello"})
        assert bad.value.code == 400 and "'messages' must be" in json.loads(bad.value.read())["error"]["message"]
    finally:
        server.shutdown()
        server.server_close()


def test_generation_stops_when_the_context_is_full(scripted_glm):
    with Engine(scripted_glm.path, max_seq_len=9) as eng:
        pieces = list(eng.chat([{"role": "user", "content": "Hi"}], temperature=0, max_tokens=50))
        assert eng.last_stats.prompt_tokens == 7
        assert eng.last_stats.finish_reason == "context"
        assert eng.position == 9
        # <think>, h and m were generated; the last one (m) is still returned but never fed back.
        assert eng.last_stats.generated_tokens == 3
        assert "".join(pieces) == "hm" and all(p.kind == "reasoning" for p in pieces)
