"""The dllama-py command line, end to end on tiny models."""

from __future__ import annotations

import json

from dllama_py.cli import main


def test_convert_inspect_bench(tiny_models, tmp_path, capsys):
    hf_dir = tiny_models.hf("glm4_moe_lite")[0]
    out = tmp_path / "lite.m"
    assert main(["convert", str(hf_dir), "-o", str(out), "--dtype", "q80", "-q"]) == 0
    assert main(["inspect", str(out), "--tensors"]) == 0
    text = capsys.readouterr().out
    assert "glm4_moe_lite (GLM4_MOE_LITE), weights Q80" in text
    assert "KV cache: 480 B per token (80 f16 values per layer)" in text  # 3 layers x (64 latent + 16 rope)
    assert "layers.1.moe.experts.7.down" in text
    assert main(["bench", "-m", str(out), "-t", "1", "--prompt-tokens", "8", "--gen-tokens", "4", "--bandwidth", "20"]) == 0
    text = capsys.readouterr().out
    assert "decode" in text and "bytes read per token" in text and "bandwidth reached" in text
    assert main(["bench", "-m", str(out), "-t", "1", "--prompt-tokens", "4", "--gen-tokens", "3", "--parallel", "1,3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["streams", "aggregate", "tok/s"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "3"] and lines[1].split()[4] == "1.00x"
    assert main(["bench", "-m", str(out), "--parallel", "0,2"]) == 1
    assert "stream counts >= 1" in capsys.readouterr().err
    assert main(["bench", "-m", str(out), "--parallel", "eight"]) == 1
    assert "--parallel takes stream counts such as 1,2,4,8, not 'eight'" in capsys.readouterr().err


def test_generate_without_a_tokenizer_says_so(tmp_path, capsys):
    from hf_models import random_model

    hf_dir = tmp_path / "hf"
    random_model("llama", 0).save_pretrained(hf_dir)
    out = tmp_path / "m.m"
    assert main(["convert", str(hf_dir), "-o", str(out), "-q"]) == 0
    assert main(["generate", "-m", str(out), "Hello", "-n", "2"]) == 1
    assert "has no tokenizer bundle" in capsys.readouterr().err


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.m")]) == 1
    assert "missing.m: cannot read" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["convert", str(tmp_path), "-o", str(tmp_path / "x.m")]) == 1
    assert "'bert' is not supported; supported:" in capsys.readouterr().err
