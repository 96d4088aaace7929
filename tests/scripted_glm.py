"""A GLM checkpoint whose next token depends only on the current one (its layers add nothing, so the
output head reads the token's own embedding), with a GLM tokenizer and chat template: generation follows
scripted chains of tokens exactly, at any temperature."""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
            "<think>", "</think>"]
# `assistant_prefix` (a chat_template_kwargs entry) lets a test choose the token generation starts from.
# Tools are listed in GLM-4.5's call format (which the server reads from the template).
TEMPLATE = ("[gMASK]<sop>{% if tools %}<|system|>\nTools:{% for t in tools %} {{ t.function.name }}{% endfor %}. "
            "Call as <tool_call>name<arg_key>key</arg_key><arg_value>value</arg_value></tool_call>{% endif %}"
            "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{{ assistant_prefix | default('') }}{% endif %}")


def write_glm_tokenizer(directory: Path, words: list[str]):
    """Writes a byte-level tokenizer with GLM's special tokens and `words` as whole (non-special) tokens;
    returns it (a tokenizers.Tokenizer)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.add_tokens([AddedToken(w, normalized=False) for w in words])
    tok.save(str(directory / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "chat_template": TEMPLATE}))
    (directory / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]}))
    return tok


def build_scripted_glm(directory: Path, chains: list[list[str]], words: list[str] = ()) -> Path:
    """Writes the checkpoint and converts it (F32). A chain element of several tokens (a multi-byte
    character) becomes a chain of its tokens; no token may follow two different ones."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from dllama_py.convert import convert

    directory.mkdir(parents=True, exist_ok=True)
    cfg = AutoConfig.for_model("glm", vocab_size=384, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=32, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    tok = write_glm_tokenizer(directory, list(words))
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = torch.randn(384, 128)
        model.model.embed_tokens.weight.copy_(emb)
        head = 0.01 * torch.randn(384, 128)
        for chain in chains:
            ids = [i for t in chain for i in tok.encode(t).ids]
            for a, b in zip(ids, ids[1:]):
                head[b] += 10 * emb[a] / emb[a].norm()
        model.lm_head.weight.copy_(head)
    model.save_pretrained(directory)
    write_glm_tokenizer(directory, list(words))  # again: save_pretrained writes its own generation_config
    out = directory / "scripted.m"
    convert(directory, out, dtype="f32", progress=False, log=lambda *a: None)
    return out
