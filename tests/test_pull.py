"""`dllama-py pull` against a loopback Hub (HF_ENDPOINT): a multi-shard repo converts to the same file as
converting the checkpoint directory, with peak disk of the output plus one shard; a killed pull resumes
without downloading its finished shards again; gated repos need the token; too little disk is refused
before downloading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import MEASURED
from hub_server import FakeHub
from safetensors.numpy import load_file, save_file

from dllama_py.convert import convert
from dllama_py.tokenizer import bundle_path

REPO = "acme/tiny-moe"
N_SHARDS = 4


@pytest.fixture(scope="module")
def repo_dir(tiny_models, tmp_path_factory):
    """glm4_moe_air saved the way the Hub holds big models: several shards, an index, a tokenizer."""
    from tokenizers import Tokenizer, models

    hf_dir = tiny_models.hf("glm4_moe_air")[0]
    state = load_file(str(hf_dir / "model.safetensors"))
    directory = tmp_path_factory.mktemp("repo")
    names = sorted(state)
    total = sum(state[n].nbytes for n in names)
    shards, current, size = [], [], 0
    for name in names:  # about equal bytes per shard
        current.append(name)
        size += state[name].nbytes
        if size >= total * (len(shards) + 1) / N_SHARDS and len(shards) < N_SHARDS - 1:
            shards.append(current)
            current = []
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: state[n] for n in shard}, str(directory / fname), metadata={"format": "pt"})
        weight_map |= {n: fname for n in shard}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text((hf_dir / "config.json").read_text())
    vocab = {f"t{i}": i for i in range(384)}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(directory / "tokenizer.json"))
    return directory


def run_pull(hub, tmp_path, *args, token=None, wait=True):
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = token
    cmd = [sys.executable, "-m", "dllama_py.cli", "pull", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def disk_used(directory) -> int:
    """Bytes the files under directory take on disk (allocated blocks)."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def test_pull_converts_shard_by_shard_within_output_plus_one_shard(repo_dir, tmp_path):
    shard_bytes = [p.stat().st_size for p in repo_dir.glob("*.safetensors")]
    hub = FakeHub({REPO: repo_dir}, bytes_per_second=2e6)  # slow enough to watch the disk between shards
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], disk_used(out_dir))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run_pull(hub, tmp_path, REPO, "--dtype", "f32", "-o", str(out_dir / "m.m"))
    finally:
        stop.set()
        watcher.join()
        hub.close()
    assert result.returncode == 0, result.stderr
    convert(repo_dir, tmp_path / "direct.m", dtype="f32", progress=False, log=lambda *a: None)
    assert (out_dir / "m.m").read_bytes() == (tmp_path / "direct.m").read_bytes()
    assert bundle_path(out_dir / "m.m").read_bytes() == bundle_path(tmp_path / "direct.m").read_bytes()
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.m", "m.m.tokenizer.json"]  # no leftovers
    output = disk_used(out_dir)
    small_files = sum(p.stat().st_size for p in repo_dir.iterdir() if p.suffix == ".json") + (64 << 10)
    MEASURED.setdefault("dllama-py pull from the loopback hub", []).append(
        f"peak disk {peak[0]:,} B; output (model and tokenizer) {output:,} B + largest shard {max(shard_bytes):,} B "
        f"= {output + max(shard_bytes):,} B (shards {shard_bytes}; config, index, tokenizer {small_files - (64 << 10):,} B)")
    assert peak[0] <= output + max(shard_bytes) + small_files
    assert peak[0] < output + 2 * min(shard_bytes)  # never two shards at once


def test_killed_pull_resumes_without_downloading_finished_shards(repo_dir, tmp_path):
    hub = FakeHub({REPO: repo_dir}, bytes_per_second=3e5)
    out = tmp_path / "m.m"
    state_file = tmp_path / "m.m.pull.json"
    try:
        proc = run_pull(hub, tmp_path, REPO, "-o", str(out), wait=False)
        deadline = time.monotonic() + 120
        done = []
        while time.monotonic() < deadline and proc.poll() is None:
            if state_file.exists():
                try:
                    done = json.loads(state_file.read_text())["done_shards"]
                except ValueError:
                    done = []
            if len(done) >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
        assert len(done) >= 2 and not out.exists(), "the pull should have been killed halfway"
        result = run_pull(hub, tmp_path, REPO, "-o", str(out))
    finally:
        hub.close()
    assert result.returncode == 0, result.stderr
    for shard in done:
        assert hub.downloads(shard) == 1, shard
    convert(repo_dir, tmp_path / "direct.m", dtype="q40", progress=False, log=lambda *a: None)
    assert out.read_bytes() == (tmp_path / "direct.m").read_bytes()
    assert not state_file.exists() and not (tmp_path / "m.m.partial").exists()


def test_gated_repo_needs_the_token(repo_dir, tmp_path):
    hub = FakeHub({REPO: repo_dir}, gated={REPO: "hf_secret"})
    try:
        refused = run_pull(hub, tmp_path, REPO, "-o", str(tmp_path / "m.m"))
        allowed = run_pull(hub, tmp_path, REPO, "-o", str(tmp_path / "m.m"), token="hf_secret")
    finally:
        hub.close()
    assert refused.returncode == 1
    assert f"{REPO} is gated" in refused.stderr and "HF_TOKEN" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert allowed.returncode == 0, allowed.stderr


def test_unknown_repo_is_named(repo_dir, tmp_path):
    hub = FakeHub({REPO: repo_dir})
    try:
        result = run_pull(hub, tmp_path, "acme/nothing", "-o", str(tmp_path / "m.m"))
    finally:
        hub.close()
    assert result.returncode == 1 and "acme/nothing was not found" in result.stderr


def test_too_little_disk_is_refused_before_downloading(repo_dir, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants as hub_constants

    from dllama_py import hub as pull_module

    hub = FakeHub({REPO: repo_dir})
    monkeypatch.setattr(hub_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(pull_module, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1000))
    try:
        with pytest.raises(RuntimeError, match=r"not enough disk space .* GB needed .* largest shard"):
            pull_module.pull(REPO, output=tmp_path / "m.m", progress=False, log=lambda *a: None)
    finally:
        hub.close()
    assert not any(name.endswith(".safetensors") for _, name, _ in hub.log)


@pytest.mark.parametrize("name, content, message", [
    ("config.json", "{not json", "config.json: cannot be read as JSON"),
    ("config.json", "[1, 2]", "config.json: not a JSON object"),
    ("model.safetensors.index.json", '{"weight_map": [1]}', "weight_map is not an object"),
    ("model.safetensors.index.json", '{"weight_map": {"a": "../x.safetensors"}}', "is not a file name"),
])
def test_corrupt_repo_files_are_named(repo_dir, tmp_path, name, content, message):
    import shutil

    corrupt = tmp_path / "repo"
    shutil.copytree(repo_dir, corrupt)
    (corrupt / name).write_text(content)
    hub = FakeHub({REPO: corrupt})
    try:
        result = run_pull(hub, tmp_path, REPO, "-o", str(tmp_path / "m.m"))
    finally:
        hub.close()
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not any(f.endswith(".safetensors") for _, f, _ in hub.log)
