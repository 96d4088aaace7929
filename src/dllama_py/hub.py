"""`dllama-py pull`: a Hugging Face repo straight to a .m file, one shard at a time.

The .m file is planned from the repo's config.json (convert.plan_file) and preallocated at its final
size; each safetensors shard is downloaded, the tensors it holds are written at their places, and the
shard is deleted, so a 200 GB checkpoint needs the output's size plus one shard of disk. A small state
file beside the output records the finished shards: a run stopped by Ctrl-C or a network failure
continues where it stopped, without downloading finished shards again. Downloads go through
huggingface_hub (its endpoint, HF_ENDPOINT, and token, HF_TOKEN or `hf auth login`, as usual).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from shutil import disk_usage

from tqdm import tqdm

from . import tokenizer as tokenizer_bundle
from .catalog import pulled_path
from .convert import describe_skipped, fp8_block_size, install, plan_file, without_missing_mtp, write_tensor
from .json_files import read_json_object
from .safetensors_reader import SCALE_SUFFIX, Checkpoint, CheckpointError, read_weight_map

INDEX = "model.safetensors.index.json"
SMALL_FILES = ("config.json", INDEX, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "generation_config.json", "chat_template.jinja")


@dataclass
class PullState:
    """What a resumed pull must agree on, and what is already done."""

    repo: str
    revision: str | None
    commit: str
    dtype: str
    pure: bool
    size: int
    done_shards: list[str] = field(default_factory=list)

    def matches(self, other: "PullState") -> bool:
        return (self.repo, self.revision, self.commit, self.dtype, self.pure, self.size) == (
            other.repo, other.revision, other.commit, other.dtype, other.pure, other.size)


def _hub_errors(repo: str):
    """huggingface_hub's errors, as one-line messages that say what to do."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    def explain(e: Exception) -> str | None:
        if isinstance(e, GatedRepoError):
            return (f"{repo} is gated: accept its conditions on its Hugging Face page, then log in with "
                    "`hf auth login` or set HF_TOKEN")
        if isinstance(e, RevisionNotFoundError):
            return f"{repo}: no such revision"
        if isinstance(e, RepositoryNotFoundError):
            return f"{repo} was not found on the Hub (a private repo needs `hf auth login` or HF_TOKEN)"
        if isinstance(e, HfHubHTTPError):
            return f"{repo}: {e}".splitlines()[0]
        return None

    return explain


def pull(repo: str, dtype: str = "q40", revision: str | None = None, output: str | os.PathLike | None = None,
         pure: bool = False, progress: bool = True, log=print, mtp: bool = True) -> Path:
    """Downloads and converts REPO to `output` (default: the models directory); returns the .m path.
    pure, mtp: as for convert."""
    from huggingface_hub import HfApi

    explain = _hub_errors(repo)
    output = Path(output) if output else pulled_path(repo, dtype)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    state_path = output.with_name(output.name + ".pull.json")
    work = output.with_name(f".{output.name}.download")  # shards and small files, while in use
    previous = _read_state(state_path)
    try:
        # A resumed pull keeps the commit it started from, so the file is never a mix of two.
        commit = previous.commit if previous and (previous.repo, previous.revision) == (repo, revision) else None
        info = HfApi().model_info(repo, revision=commit or revision, files_metadata=True)
        sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
        commit = commit or info.sha
        for name in SMALL_FILES:
            if name in sizes:
                _download(repo, name, commit, work)
    except Exception as e:
        if (message := explain(e)) is None:
            raise
        raise RuntimeError(message) from None
    if not (work / "config.json").is_file():
        raise FileNotFoundError(f"{repo} has no config.json: not a transformers checkpoint")
    config = read_json_object(work / "config.json", CheckpointError)
    block = fp8_block_size(config, f"{repo}/config.json")
    shards = _shards(work, sizes, repo)
    checkpoint_bytes = sum(sizes.get(s, 0) for s in shards)
    bound = dict(where=repo, tensor_bytes=(8 * checkpoint_bytes, "bytes: 8 per byte of the repo's safetensors files"))
    plan = plan_file(config, dtype, pure, mtp=mtp, **bound)
    bundle = tokenizer_bundle.build_bundle(work) if (work / "tokenizer.json").is_file() else None

    weight_map = _weight_map(work, shards)
    if weight_map is not None:
        plan = without_missing_mtp(plan, lambda name: name in weight_map, log, **bound)
    for name in SMALL_FILES:  # read: from here on the disk holds the output and the shard in use (and
        (work / name).unlink(missing_ok=True)  # huggingface_hub's part of an interrupted one, to resume)
    state = PullState(repo, revision, commit, dtype, pure, plan.size)
    if previous is None or not state.matches(previous) or not partial.is_file():
        partial.unlink(missing_ok=True)
        _write_state(state_path, state)
    else:
        state = previous
    todo = [s for s in shards if s not in state.done_shards]
    _check_free_space(output.parent, plan.size - _allocated(partial), max((sizes.get(s, 0) for s in todo), default=0))

    if weight_map is not None:
        try:  # every tensor the model needs must be in some shard, before anything big is downloaded
            plan.source_names(lambda name: name in weight_map)
        except CheckpointError as e:
            raise CheckpointError(f"{repo}: {e}") from None
    log(f"Pulling {repo} ({commit[:10]}) as {plan.weight_type.name} to {output}: {plan.size / 1e9:,.2f} GB, "
        f"{len(todo)} of {len(shards)} shard(s) to download ({sum(sizes.get(s, 0) for s in todo) / 1e9:,.2f} GB)")

    with open(partial, "r+b" if partial.exists() else "w+b") as f:
        if _allocated(partial) < plan.size:
            _preallocate(f, plan.size)
        f.seek(0)
        f.write(plan.header)
        bar = tqdm(total=sum(sizes.get(s, 0) for s in shards), initial=sum(sizes.get(s, 0) for s in state.done_shards),
                   unit="B", unit_scale=True, unit_divisor=1000, desc=f"pull {repo}", disable=None if progress else True,
                   dynamic_ncols=True, file=sys.stderr)
        try:
            _convert_shards(repo, commit, work, plan, todo, sizes, weight_map, block, f, state, state_path, bar,
                            explain, log)
        finally:
            bar.close()
    bundle_tmp = None
    if bundle is not None:
        bundle_tmp = work / "bundle.partial"
        work.mkdir(exist_ok=True)
        tokenizer_bundle.write_bundle(bundle, bundle_tmp)
    else:
        log(f"Warning: {repo} has no tokenizer.json; the model will need token ids, not text")
    install(partial, output, bundle_tmp, tokenizer_bundle.bundle_path(output))
    state_path.unlink()
    shutil.rmtree(work, ignore_errors=True)
    log(f"Wrote {output}")
    return output


def _convert_shards(repo, commit, work, plan, todo, sizes, weight_map, block, f, state, state_path, bar, explain, log):
    """Downloads each shard in turn and writes the tensors it completes; a shard is deleted as soon as no
    tensor still to write needs it (at once, unless a tensor's FP8 scales are in a later shard)."""
    done = set(state.done_shards)
    pending = sources = needs = None  # known once the weight map is
    local: list[str] = []
    for shard in todo:
        try:
            _download(repo, shard, commit, work)
        except Exception as e:
            if (message := explain(e)) is None:
                raise
            raise RuntimeError(f"{message} (run the same command again to continue)") from None
        local.append(shard)
        if weight_map is None:  # a single-file checkpoint: its header is the map
            with Checkpoint(work, files=[shard]) as ckpt:
                weight_map = {name: shard for name in ckpt.names()}
        if pending is None:
            sources = plan.source_names(lambda name: name in weight_map)
            needs = [{weight_map[n]} | ({weight_map[n + SCALE_SUFFIX]} if n + SCALE_SUFFIX in weight_map else set())
                     for n in sources]
            pending = {i for i, need in enumerate(needs) if not need <= done}
            used = set(sources) | {n + SCALE_SUFFIX for n in sources}
            describe_skipped(plan, sorted(n for n in weight_map if n not in used), log)
        available = done | set(local)
        ready = [i for i in sorted(pending) if needs[i] <= available]
        with Checkpoint(work, files=local, weight_block_size=block) as ckpt:
            for i in ready:
                write_tensor(f, ckpt, plan.placed[i], sources[i], plan.pure)
        pending -= set(ready)
        f.flush()
        os.fsync(f.fileno())  # written for good before the state says so
        still_needed = set().union(*(needs[i] for i in pending))
        for finished in [s for s in local if s not in still_needed]:
            (work / finished).unlink()
            local.remove(finished)
            done.add(finished)
            state.done_shards.append(finished)
        if not local:
            shutil.rmtree(work / ".cache", ignore_errors=True)  # huggingface_hub's notes on finished downloads
        _write_state(state_path, state)
        bar.update(sizes.get(shard, 0))
    if pending:
        names = ", ".join(plan.placed[i].spec.name for i in sorted(pending)[:3])
        raise CheckpointError(f"{repo}: no shard holds the data of {len(pending)} tensor(s), e.g. {names}")


def _download(repo: str, name: str, commit: str, work: Path) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, name, revision=commit, local_dir=work))


def _shards(work: Path, sizes: dict[str, int], repo: str) -> list[str]:
    if (work / INDEX).is_file():
        return sorted(set(read_weight_map(work / INDEX, shards_present=False).values()))
    shards = sorted(n for n in sizes if n.endswith(".safetensors") and "/" not in n)
    if not shards:
        raise FileNotFoundError(f"{repo} has no *.safetensors files")
    return shards


def _weight_map(work: Path, shards: list[str]) -> dict[str, str] | None:
    """Tensor -> shard from the index; None for a single-file checkpoint (its header says it all)."""
    if (work / INDEX).is_file():
        return read_weight_map(work / INDEX, shards_present=False)
    if len(shards) > 1:
        raise CheckpointError(f"{len(shards)} safetensors files but no {INDEX}")
    return None


def _allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def _preallocate(f, size: int):
    """Reserves the whole file now, so the disk cannot run out halfway (a sparse file where the
    filesystem cannot)."""
    try:
        os.posix_fallocate(f.fileno(), 0, size)
    except (AttributeError, OSError):
        f.truncate(size)


def _check_free_space(directory: Path, output_bytes: int, shard_bytes: int):
    free = disk_usage(directory).free
    need = output_bytes + shard_bytes
    if free < need:
        raise RuntimeError(f"not enough disk space in {directory}: {need / 1e9:,.2f} GB needed ({output_bytes / 1e9:,.2f} GB "
                           f"of model file still to allocate and {shard_bytes / 1e9:,.2f} GB for the largest shard), "
                           f"{free / 1e9:,.2f} GB free")


def _read_state(path: Path) -> PullState | None:
    try:
        return PullState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(path: Path, state: PullState):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(state)))
    os.replace(tmp, path)
