"""The OpenAI-style HTTP server (`dllama-py serve`); needs the `server` extra: pip install 'dllama_py[server]'."""

from .app import ApiServer, ServerOptions, create_app, serve

__all__ = ["ApiServer", "ServerOptions", "create_app", "serve"]
