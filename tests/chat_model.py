"""A small random model with a byte-level tokenizer and a chat template, for the command-line tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from make_model import PRESETS, write_byte_tokenizer, write_checkpoint  # noqa: E402

# ChatML with Qwen3's switch: enable_thinking=False writes an empty reasoning block into the prompt.
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n"
            "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def make_chat_model(directory: Path) -> Path:
    """Writes the checkpoint to directory/hf and converts it to directory/tiny.m (Q80, 3.8 MB)."""
    from dllama_py.convert import convert

    hf = directory / "hf"
    write_checkpoint(PRESETS["tiny"], hf)
    write_byte_tokenizer(hf, PRESETS["tiny"]["vocab_size"])
    config = json.loads((hf / "tokenizer_config.json").read_text())
    (hf / "tokenizer_config.json").write_text(json.dumps(dict(config, chat_template=TEMPLATE)))
    out = directory / "tiny.m"
    convert(hf, out, dtype="q80", progress=False, log=lambda *a: None)
    return out
