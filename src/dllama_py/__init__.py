"""dllama_py: GLM, Llama and Qwen3 models on CPUs, on one machine or split across several."""

__version__ = "0.1.0"
__all__ = ["Engine", "__version__"]


def __getattr__(name):
    # Imported lazily so that the converter and tokenizer tools load without the C++ core.
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(f"module 'dllama_py' has no attribute {name!r}")
