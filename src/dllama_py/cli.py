"""The dllama-py command line: convert, pull, list, generate, chat, serve, worker, inspect, bench."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .engine import SECRET_ENV
from .model_file import ModelFileError

LOAD_PROGRESS_DELAY_S = 1.0  # a loading bar for loads that take longer than this


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 86400:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, 86400], not {text}")
    return value


MODEL_HELP = ("a .m file, or a model's name or repo id from `dllama-py list` once pulled "
              "(default: SmolLM2-135M-Instruct, converted on first use)")


def _resolve_model(args):
    """-m as given (see catalog.resolve_model), the default model when absent."""
    from .catalog import resolve_model

    args.model = resolve_model(args.model, notice=lambda line: print(line, file=sys.stderr, flush=True))


def _draft_tokens(text: str) -> int:
    from .speculative import MAX_DRAFT_TOKENS

    value = int(text)
    if not 1 <= value <= MAX_DRAFT_TOKENS:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_DRAFT_TOKENS}, not {value}")
    return value


def _add_split_option(p: argparse.ArgumentParser, help: str):
    p.add_argument("--split", default=None, metavar="W,W,...|auto", help=help)


def _split(args, n_nodes: int | None):
    """--split checked for n_nodes nodes (None: as many as it has weights): None, "auto" or the weights;
    ValueError naming --split."""
    from . import _core
    from .cluster import parse_split

    try:
        split = parse_split(args.split)
        if split == "auto" and (n_nodes or 1) == 1:
            raise ValueError("auto needs workers (--workers) to weigh; or give weights, e.g. 2,1,1")
        if isinstance(split, list):
            _core.check_split_weights(n_nodes or len(split), split)
    except ValueError as e:
        raise ValueError(f"--split {args.split}: {e}") from None
    return split


def _add_run_options(p: argparse.ArgumentParser):
    p.add_argument("-m", "--model", default=None, help=MODEL_HELP)
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer bundle, or a Hugging Face checkpoint directory or tokenizer.json "
                        "(default: the model's own, MODEL.tokenizer.json)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--max-seq-len", type=_positive_int, default=None,
                   help="context length to allocate (default: the model's, capped at 4096)")
    p.add_argument("--workers", nargs="+", default=None, metavar="HOST:PORT",
                   help="split the model with these `dllama-py worker`s")
    p.add_argument("--secret", default=None, help=f"the workers' shared secret (default: ${SECRET_ENV})")
    p.add_argument("--exchange", choices=["q80", "f32"], default=None,
                   help="how partial sums travel between nodes (default: f32 for F32 models, else q80)")
    _add_split_option(p, "each node's share of every layer, one weight per node, root first (e.g. 2,1,1; "
                         "default: equal), or auto: by each node's measured read bandwidth, within its free RAM")
    p.add_argument("--draft", choices=["ngram", "mtp"], default=None,
                   help="speculative decoding: guess tokens by prompt lookup (ngram) or with the model's "
                        "multi-token-prediction layer (mtp, GLM-4.5 and later), and check them in one step")
    p.add_argument("--draft-tokens", type=_draft_tokens, default=4, metavar="K",
                   help="guesses checked per step with --draft (default 4)")


def _engine(args, max_sequences: int = 1):
    from tqdm import tqdm

    from .engine import Engine

    split = _split(args, 1 + len(args.workers or []))
    _resolve_model(args)
    # On a terminal only (disable=None); its last state (100%, the time it took) stays.
    with tqdm(unit="B", unit_scale=True, unit_divisor=1000, desc=f"loading {args.model}", delay=LOAD_PROGRESS_DELAY_S,
              disable=None, dynamic_ncols=True, file=sys.stderr) as bar:
        def progress(done: int, total: int):
            bar.total = total
            bar.update(done - bar.n)

        return Engine(args.model, threads=args.threads, max_seq_len=args.max_seq_len, tokenizer=args.tokenizer,
                      workers=args.workers, secret=args.secret, exchange=args.exchange, split=split,
                      load_progress=progress, max_sequences=max_sequences, draft=args.draft, draft_tokens=args.draft_tokens)


def _add_sampling_options(p: argparse.ArgumentParser, max_tokens: int):
    p.add_argument("-n", "--max-tokens", type=int, default=max_tokens, help=f"tokens to generate (default {max_tokens})")
    p.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding (default 0.8)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9)")
    p.add_argument("--top-k", type=int, default=0, help="keep only the k most likely tokens (default 0: off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    p.add_argument("--stop", action="append", default=None, help="stop at this text (repeatable)")


def cmd_convert(args) -> int:
    from .convert import convert

    convert(args.hf_dir, args.output, dtype=args.dtype, progress=not args.quiet, pure=args.pure, mtp=not args.no_mtp)
    return 0


def cmd_generate(args) -> int:
    from .chat_repl import print_stats, terminal_safe

    show = terminal_safe if sys.stdout.isatty() else str
    with _engine(args) as eng:
        for piece in eng.generate(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                  top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop=args.stop):
            print(show(piece), end="", flush=True)
        print()
        if not args.quiet:
            print_stats(eng)
    return 0


def cmd_chat(args) -> int:
    from .chat_repl import Settings, run_chat

    settings = Settings(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_tokens=args.max_tokens,
                        seed=args.seed, stop=args.stop, think=args.think, system=args.system, verbose=args.verbose,
                        hide_reasoning=args.hide_reasoning)
    with _engine(args) as eng:
        return run_chat(eng, settings, keep_history=not args.no_history)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


def _print_memory_per_node(layout, cfg, context: str, split: list[float] | None):
    """Each node's memory for 1-4 nodes with equal shares, or for the nodes of `split`."""
    from .node_memory import node_memory

    print(f"memory per node at {context} (weights + KV cache; node 0 also reads the embedding table from the file):")
    for n_nodes in [len(split)] if split else range(1, 5):
        label = f"{n_nodes} node{'s' if n_nodes > 1 else ' '}" + (f", split {','.join(f'{w:g}' for w in split)}"
                                                                   if split else "")
        try:
            nodes = [node_memory(layout, node, n_nodes, cfg.seq_len, cfg.kv_f16, split=split or ())
                     for node in range(n_nodes)]
        except ValueError as e:
            print(f"  {label}: {e}")
            continue
        low, high = min(m.total for m in nodes[1:] or nodes), max(m.total for m in nodes[1:] or nodes)
        if split:
            workers = "".join(f", node {i} {_fmt_bytes(m.total)}" for i, m in enumerate(nodes[1:], 1))
        else:
            workers = "" if n_nodes == 1 else f", each worker {_fmt_bytes(high)}" if low == high else \
                f", workers {_fmt_bytes(low)} to {_fmt_bytes(high)}"
        print(f"  {label}: root {_fmt_bytes(nodes[0].total)} "
              f"({_fmt_bytes(nodes[0].weights)} weights, {_fmt_bytes(nodes[0].kv_cache)} KV cache, "
              f"{_fmt_bytes(nodes[0].mapped)} embedding){workers}")
    if layout.params.get("n_mtp_layers"):
        extra = (node_memory(layout, 0, 1, cfg.seq_len, cfg.kv_f16, mtp=True).total
                 - node_memory(layout, 0, 1, cfg.seq_len, cfg.kv_f16).total)
        print(f"multi-token-prediction layer: layers.{layout.params['n_layers']}, {_fmt_bytes(extra)} more on one node "
              f"(with its KV cache), loaded only with --draft mtp")


def cmd_inspect(args) -> int:
    from .architectures import kv_cache_values_per_token, read_layout
    from .engine import model_config
    from .model_file import TENSOR_TYPE_KEYS

    split = _split(args, None)
    _resolve_model(args)
    layout = read_layout(args.model)
    print(f"{layout.path}: {layout.arch.builder} ({layout.arch.arch_type.name}), weights {layout.weight_type.name}, "
          f"{_fmt_bytes(layout.path.stat().st_size)}")
    print("header:")
    for k, v in layout.params.items():
        print(f"  {k:34s} {v}")
    for index, dtype in sorted(layout.header.tensor_types.items()):
        print(f"  {TENSOR_TYPE_KEYS + index:<34d} {layout.tensors[index].spec.name} stored as {dtype.name}")
    cfg = model_config(layout, args.max_seq_len)
    context = f"a context of {cfg.seq_len}" if args.max_seq_len else f"the default context of {cfg.seq_len}"
    kv_values = kv_cache_values_per_token(layout.params)
    kv_per_token = (2 if cfg.kv_f16 else 4) * kv_values
    print(f"KV cache: {_fmt_bytes(kv_per_token)} per token ({kv_values // cfg.n_layers} {'f16' if cfg.kv_f16 else 'f32'} "
          f"values per layer), {_fmt_bytes(kv_per_token * cfg.seq_len)} at {context}")
    _print_memory_per_node(layout, cfg, context, split)
    if args.tensors:
        print("tensors:")
        for t in layout.tensors:
            print(f"  {t.spec.name:32s} {t.dtype.name:4s} {t.spec.rows:>7} x {t.spec.cols:<7} "
                  f"{_fmt_bytes(t.nbytes):>10}  @ {t.offset}")
    else:
        print(f"{len(layout.tensors)} tensors (--tensors lists them)")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench, run_parallel_bench

    split = _split(args, 1 + len(args.workers or []))
    _resolve_model(args)
    if args.parallel:
        try:
            streams = [int(s) for s in args.parallel.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--parallel takes stream counts such as 1,2,4,8, not {args.parallel!r}") from None
        run_parallel_bench(args.model, streams, threads=args.threads, prompt_tokens=args.prompt_tokens,
                           gen_tokens=args.gen_tokens, max_seq_len=args.max_seq_len, workers=args.workers,
                           secret=args.secret, exchange=args.exchange, split=split)
        return 0
    run_bench(args.model, threads=args.threads, prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
              bandwidth_gbps=args.bandwidth, max_seq_len=args.max_seq_len, workers=args.workers, secret=args.secret,
              exchange=args.exchange, tokenizer=args.tokenizer, draft=args.draft, draft_tokens=args.draft_tokens,
              prompt_text=args.prompt, split=split)
    return 0


def cmd_pull(args) -> int:
    from .hub import pull

    pull(args.repo, dtype=args.dtype, revision=args.revision, output=args.output, pure=args.pure,
         progress=not args.quiet, mtp=not args.no_mtp)
    return 0


def cmd_list(args) -> int:
    from .catalog import KNOWN_MODELS, model_sizes, pulled_copies

    gb = lambda n: f"{n / 1e9:,.1f}"  # noqa: E731
    print(f"{'MODEL':24} {'REPO':36} {'ARCH':14} {'PARAMS (ACTIVE)':17} {'Q40 GB':>7} {'Q80 GB':>7}  "
          f"{'RAM GB PER NODE, 1/2/3/4 NODES (Q40)':36} HERE")
    models = [m for m in KNOWN_MODELS if not args.filter or args.filter.lower() in (m.name + m.repo).lower()]
    for m in models:  # printed as computed: the larger MoE models take a moment each
        s = model_sizes(m.config)
        params = f"{s.total_params / 1e9:.1f}B" + (f" ({s.active_params / 1e9:.1f}B)" if s.active_params != s.total_params else "")
        ram = " / ".join(gb(r) if r else "-" for r in s.ram_per_node)
        here = ", ".join(p.name for p in pulled_copies(m.repo)) or "-"
        print(f"{m.name:24} {m.repo:36} {m.config['model_type']:14} {params:17} {gb(s.file_bytes['q40']):>7} "
              f"{gb(s.file_bytes['q80']):>7}  {ram:36} {here}", flush=True)
    if not models:
        print(f"no known model matches {args.filter!r}")
    print("\nGet one with `dllama-py pull REPO` (any Hugging Face repo of a supported architecture works), then run "
          "it with `dllama-py chat -m NAME`. RAM: the largest node's weights, mapped embedding rows and KV cache "
          "at a 4096-token context.")
    return 0


def cmd_serve(args) -> int:
    try:
        from .server import ServerOptions, serve
    except ImportError as e:
        raise RuntimeError(f"serve needs the server extra ({e.name} is missing): pip install 'dllama_py[server]'") from None
    options = ServerOptions(parallel=args.parallel, max_queue=args.queue_size, api_key=args.api_key or None,
                            cors_origins=args.cors_origin, max_body_bytes=args.max_body_mb << 20,
                            body_timeout=args.body_timeout, header_timeout=args.header_timeout,
                            model_name=args.model_name)
    with _engine(args, max_sequences=args.parallel) as eng:
        serve(eng, args.host, args.port, options)
    return 0


def _default_cache_dir():
    import platformdirs

    return platformdirs.user_cache_path("dllama-py") / "slices"


def cmd_worker(args) -> int:
    import os

    from . import _core
    from .engine import NET_TIMEOUT_ENV, _milliseconds, default_threads

    secret = args.secret or os.environ.get(SECRET_ENV, "")
    cache_dir = "" if args.no_cache or args.model else str(args.cache_dir or _default_cache_dir())
    worker = _core.Worker(args.host, args.port, args.threads or default_threads(), secret, args.model or "",
                          _milliseconds(None, NET_TIMEOUT_ENV, 5.0), cache_dir, int(args.cache_max_gb * 1e9))
    print(f"dllama-py worker listening on {args.host}:{worker.port}", flush=True)
    if not secret:
        print(f"warning: no --secret (or ${SECRET_ENV}): anyone who can reach this port can use this worker",
              file=sys.stderr, flush=True)
    try:
        while True:
            worker.serve_one(500)
    except KeyboardInterrupt:
        return 0


def cmd_cluster_check(args) -> int:
    import os

    from .cluster import check

    return check(args.workers, args.secret or os.environ.get(SECRET_ENV, ""), args.model, args.threads,
                 split=_split(args, 1 + len(args.workers)))


def _version() -> str:
    import platform

    from . import _core

    return f"dllama-py {__version__} (core built for {_core.cpu_features()}; Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dllama-py", description="Run GLM, Llama and Qwen3 models on CPUs.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # --version on one line
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="convert a Hugging Face checkpoint or a GGUF file to a .m model file",
                       description="Convert a Hugging Face checkpoint directory (config.json, safetensors, "
                                   "tokenizer.json) or a llama.cpp GGUF file to a .m model file plus its "
                                   "tokenizer bundle.")
    p.add_argument("hf_dir", metavar="SOURCE", help="the checkpoint directory or .gguf file")
    p.add_argument("-o", "--output", required=True, help="the .m file to write")
    p.add_argument("--dtype", default="q40", choices=["f32", "f16", "q80", "q40"], help="weight type (default q40)")
    p.add_argument("--pure", action="store_true",
                   help="q40: quantize the output head to Q40 too and use distributed-llama's quantizer "
                        "(default: head at Q80, each block's scale fitted; the file is then for dllama-py only)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-mtp", action="store_true",
                   help="leave out the multi-token-prediction layer (GLM-4.5 and later; about 2%% of the weights, "
                        "used only by --draft mtp)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("pull", help="download a Hugging Face model and convert it, one shard at a time",
                       description="Download REPO from the Hugging Face Hub and convert it to a .m file, one "
                                   "safetensors shard at a time (disk: the output plus one shard). A stopped pull "
                                   "continues where it stopped when run again. Gated repos: `hf auth login` or "
                                   "HF_TOKEN.")
    p.add_argument("repo", help="the repo id, e.g. zai-org/GLM-4.5-Air (see `dllama-py list`)")
    p.add_argument("--dtype", default="q40", choices=["f32", "f16", "q80", "q40"], help="weight type (default q40)")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument("-o", "--output", default=None,
                   help="the .m file to write (default: REPO-DTYPE.m in the cache directory, where -m NAME finds it)")
    p.add_argument("--pure", action="store_true", help="as for convert")
    p.add_argument("--no-mtp", action="store_true", help="as for convert")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("list", help="list known models: sizes, memory per node, which are here",
                       description="Known models with their size at q40/q80 and the memory each node needs for "
                                   "1-4 nodes, computed from their configs by the converter's own rules.")
    p.add_argument("filter", nargs="?", default=None, help="only models whose name or repo contains this")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("generate", help="continue a prompt", description="Stream a continuation of PROMPT.")
    _add_run_options(p)
    p.add_argument("prompt", help="the prompt text")
    _add_sampling_options(p, 256)
    p.add_argument("-q", "--quiet", action="store_true", help="no statistics line")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat interactively",
                       description="Chat with the model using its chat template. Type /help in the chat for its "
                                   "commands (/set temperature 0.2, /show, /clear, /bye, ...).")
    _add_run_options(p)
    p.add_argument("--system", default=None, help="system prompt")
    _add_sampling_options(p, 1024)
    p.add_argument("-v", "--verbose", action="store_true", help="print speed after each reply")
    p.add_argument("--hide-reasoning", action="store_true", help="do not show the model's <think> reasoning")
    p.add_argument("--no-history", action="store_true", help="neither read nor save the history of typed lines")
    think = p.add_mutually_exclusive_group()
    think.add_argument("--think", dest="think", action="store_true", default=None,
                       help="ask for reasoning (enable_thinking=True in the chat template)")
    think.add_argument("--no-think", dest="think", action="store_false",
                       help="ask for a direct answer (enable_thinking=False)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="serve an OpenAI-style HTTP API and a chat page",
                       description="Serve /v1/chat/completions and /v1/completions (streaming, tools, "
                                   "reasoning_content, logprobs, JSON output), /v1/models, /health, /metrics "
                                   "and a chat page at /.")
    _add_run_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="sequence slots: requests admitted at once (default 1); more wait in the queue")
    p.add_argument("--queue-size", type=int, default=64, help="requests waiting for a slot before the server "
                   "answers 503 with Retry-After (default 64)")
    p.add_argument("--api-key", default=os.environ.get("DLLAMA_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 and /metrics (default: $DLLAMA_API_KEY)")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="allow browsers on this origin to call the API (repeatable; '*' for any)")
    p.add_argument("--max-body-mb", type=int, default=8, help="largest request body in MiB (default 8; 413 above)")
    p.add_argument("--body-timeout", type=_seconds, default=15.0,
                   help="seconds a request body may take to arrive (default 15; 408 after)")
    p.add_argument("--header-timeout", type=_seconds, default=15.0,
                   help="seconds a request's line and headers may take to arrive (default 15; the connection is "
                        "closed after)")
    p.add_argument("--model-name", default=None, help="the model id the API reports (default: the file's name)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="serve a share of a model to a root over TCP",
                       description="Wait for a root (Engine(workers=...) or --workers), run its share of the "
                                   "model, then wait for the next root.")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=9990, help="port (default 9990; 0 picks a free one)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--secret", default=None, help=f"shared secret the root must prove (default: ${SECRET_ENV})")
    p.add_argument("--model", default=None, help="a local copy of the root's .m file, to load from disk")
    p.add_argument("--cache-dir", default=None,
                   help="keep the weight slices roots send here, so that the next session with the same model "
                        "and split needs none of them again (default: the user cache folder's dllama-py/slices)")
    p.add_argument("--cache-max-gb", type=float, default=100.0,
                   help="size limit of the cache; the least recently used models go first (default 100)")
    p.add_argument("--no-cache", action="store_true", help="keep no slices on disk")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("cluster", help="check workers before using them")
    cluster = p.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    p = cluster.add_parser("check", help="probe workers; with -m, plan a model's split",
                           description="Ask each worker (without starting a session) whether it is reachable, "
                                       "speaks this protocol and accepts the secret, and about its cores, RAM, "
                                       "memory bandwidth and link; with -m, whether the model fits this split and "
                                       "about how many tokens/s it would decode.")
    p.add_argument("workers", nargs="+", metavar="HOST:PORT")
    p.add_argument("-m", "--model", default=None, help="a .m file to plan the split of")
    p.add_argument("--secret", default=None, help=f"the workers' shared secret (default: ${SECRET_ENV})")
    p.add_argument("-t", "--threads", type=int, default=None, help="this machine's threads (for its bandwidth)")
    _add_split_option(p, "with -m, plan this split: one weight per node, root first (e.g. 2,1,1), or auto "
                         "(what --split auto would choose; default: equal)")
    p.set_defaults(func=cmd_cluster_check)

    p = sub.add_parser("inspect", help="show a .m file's header, tensors and memory per node")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.add_argument("--max-seq-len", type=_positive_int, default=None,
                   help="context length for the KV cache figures (default: the model's, capped at 4096)")
    _add_split_option(p, "memory per node for this split, one weight per node, root first (e.g. 2,1,1), "
                         "instead of 1-4 nodes with equal shares")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("bench", help="measure prefill and decode speed",
                       description="Measure prefill and decode tokens/s, bytes read per token and the share of "
                                   "the machine's memory bandwidth that decode reaches.")
    _add_run_options(p)
    p.add_argument("--prompt-tokens", type=int, default=128, help="prefill length (default 128)")
    p.add_argument("--prompt", default=None, metavar="TEXT",
                   help="decode after this text instead of random tokens (speculation needs real text to guess from)")
    p.add_argument("--gen-tokens", type=int, default=32, help="decode steps (default 32)")
    p.add_argument("--bandwidth", type=float, default=None,
                   help="memory bandwidth in GB/s to compare against (default: measured now)")
    p.add_argument("--parallel", default=None, metavar="N,N,...",
                   help="decode that many streams at once (e.g. 1,2,4,8,16): aggregate tok/s and per-stream latency")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ModelFileError, OSError, ValueError, RuntimeError) as e:  # OSError: e.g. an output path that is a directory
        print(f"dllama-py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # e.g. while the model loads
        print("dllama-py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
