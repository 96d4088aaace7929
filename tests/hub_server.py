"""A loopback stand-in for the Hugging Face Hub, enough for huggingface_hub's model_info and
hf_hub_download: repos are local directories; downloads can be throttled; every file request is logged;
a gated repo wants `Authorization: Bearer <token>`."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, Path], gated: dict[str, str] | None = None, bytes_per_second: float | None = None):
        self.repos, self.gated, self.rate = repos, gated or {}, bytes_per_second
        self.log: list[tuple[str, str, str | None]] = []  # (method, file, Range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub._handle(self, body=True)

            def do_HEAD(self):
                hub._handle(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def downloads(self, name: str) -> int:
        """How many times a file's bytes were requested (GET)."""
        return sum(1 for method, path, _ in self.log if method == "GET" and path == name)

    # ------------------------------------------------------------------------------------------------

    def _files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}

    def _handle(self, req: BaseHTTPRequestHandler, body: bool):
        path = req.path.split("?")[0]
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path):
            repo = m[1]
            if not self._allowed(req, repo):
                return
            siblings = [{"rfilename": name, "size": p.stat().st_size, "blobId": _sha1(p)}
                        for name, p in self._files(repo).items()]
            return self._send(req, 200, json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                                    "gated": repo in self.gated and "manual", "disabled": False,
                                                    "siblings": siblings, "tags": []}).encode(), body,
                              {"Content-Type": "application/json"})
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
            repo, name = m[1], m[2]
            self.log.append((req.command, name, req.headers.get("Range")))
            if not self._allowed(req, repo):
                return
            file = self._files(repo).get(name) if repo in self.repos else None
            if file is None:
                return self._send(req, 404, b"not found", body, {"X-Error-Code": "EntryNotFound"})
            data = file.read_bytes()
            start = 0
            if (r := req.headers.get("Range")) and (rm := re.fullmatch(r"bytes=(\d+)-(\d*)", r)):
                start = int(rm[1])
                end = int(rm[2]) + 1 if rm[2] else len(data)
                headers = {"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"}
                return self._send(req, 206, data[start:end], body, self._file_headers(file) | headers)
            return self._send(req, 200, data, body, self._file_headers(file))
        self._send(req, 404, b"not found", body, {"X-Error-Code": "RepoNotFound"})

    def _file_headers(self, file: Path) -> dict[str, str]:
        return {"ETag": f'"{_sha1(file)}"', "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream"}

    def _allowed(self, req, repo: str) -> bool:
        if repo not in self.repos:
            self._send(req, 404, b"Repository not found", True, {"X-Error-Code": "RepoNotFound",
                                                                 "X-Error-Message": "Repository not found"})
            return False
        token = self.gated.get(repo)
        if token is not None and req.headers.get("Authorization") != f"Bearer {token}":
            message = f"Access to model {repo} is restricted. You must have access to it and be authenticated."
            self._send(req, 401, message.encode(), True, {"X-Error-Code": "GatedRepo", "X-Error-Message": message})
            return False
        return True

    def _send(self, req, status: int, data: bytes, body: bool, headers: dict[str, str]):
        try:
            req.send_response(status)
            for k, v in headers.items():
                req.send_header(k, v)
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            if not body or req.command == "HEAD":
                return
            chunk = 64 << 10
            for i in range(0, len(data), chunk):
                req.wfile.write(data[i:i + chunk])
                if self.rate:
                    time.sleep(chunk / self.rate)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a killed pull)


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()
