"""A stand-in for the Hugging Face Hub on 127.0.0.1, serving model repos that a test writes.

It answers what huggingface_hub asks while downloading: `GET /api/models/{repo}` (the file list, for tuitune's
repo fetch) and `HEAD` / `GET /{repo}/resolve/{revision}/{file}` with the `ETag`, `X-Repo-Commit` and
`Content-Length` headers it checks (a missing file is a 404 with `X-Error-Code: EntryNotFound`, as the hub says
it). `fail` makes a file go wrong: "500" (its GET is a server error), "cut" (the connection closes mid-file) or
"missing" (listed by the API, but a 404 when asked for); keyed by file name, or by "repo/file" for one repo's.
`throttle` (bytes per second) slows file bodies down, to watch a download's progress.

Run it by hand for a demo: `python tests/engine/hub_server.py REPO_ID FOLDER [--throttle BYTES_PER_S]`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class StandInHub:
    """`with StandInHub({"org/name": {"config.json": b"..."}}) as hub:` then HF_ENDPOINT=hub.url. Stopped on exit,
    however the test ends."""

    def __init__(
        self, repos: dict[str, dict[str, bytes]], fail: dict[str, str] | None = None, throttle: float = 0.0
    ) -> None:
        self.repos, self.fail, self.throttle = repos, dict(fail or {}), throttle
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> StandInHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # ------------------------------------------------------------------------------------------------ answers
    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = h.path.split("?")[0]
        self.requests.append((h.command, path))
        if path.startswith("/api/models/"):
            return self._model_info(h, path[len("/api/models/") :], body)
        parts = path.strip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, name = "/".join(parts[:2]), "/".join(parts[4:])
            return self._file(h, repo, name, body)
        self._send(h, 404, b"not found", {"X-Error-Code": "RepoNotFound"}, body)

    def _model_info(self, h: BaseHTTPRequestHandler, rest: str, body: bool) -> None:
        repo = "/".join(rest.split("/")[:2])
        if repo not in self.repos:
            return self._send(h, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
        info = {
            "id": repo,
            "modelId": repo,
            "sha": COMMIT,
            "siblings": [{"rfilename": f} for f in sorted(self.repos[repo])],
        }
        self._send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

    def _file(self, h: BaseHTTPRequestHandler, repo: str, name: str, body: bool) -> None:
        files = self.repos.get(repo)
        if files is None:
            return self._send(h, 404, b"no repo", {"X-Error-Code": "RepoNotFound"}, body)
        fail = self.fail.get(f"{repo}/{name}", self.fail.get(name, ""))
        if name not in files or fail == "missing":
            return self._send(h, 404, b"no file", {"X-Error-Code": "EntryNotFound"}, body)
        data = files[name]
        headers = {
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "X-Repo-Commit": COMMIT,
            "Content-Type": "application/octet-stream",
        }
        mode = fail if body else ""
        if mode == "500":
            return self._send(h, 500, b"internal error", {"X-Repo-Commit": COMMIT}, body)
        start = _range_start(h.headers.get("Range"))
        if mode == "cut":
            start = 0  # every attempt, resumed or not, dies half-way
        h.send_response(206 if start else 200)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        if not body:
            return
        payload = data[start : len(data) // 2] if mode == "cut" else data[start:]
        self._write(h, payload)
        if mode == "cut":
            h.close_connection = True
            h.wfile.flush()
            h.connection.shutdown(2)

    def _write(self, h: BaseHTTPRequestHandler, payload: bytes) -> None:
        chunk = 64 * 1024
        for i in range(0, len(payload), chunk):
            h.wfile.write(payload[i : i + chunk])
            if self.throttle:
                time.sleep(len(payload[i : i + chunk]) / self.throttle)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        h.send_response(code)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)


def _range_start(value: str | None) -> int:
    if not value or not value.startswith("bytes="):
        return 0
    return int(value[len("bytes=") :].split("-")[0] or 0)


def repo_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


if __name__ == "__main__":  # a demo hub: REPO_ID FOLDER [--throttle BYTES_PER_S] [--port N]
    args = sys.argv[1:]
    throttle = float(args[args.index("--throttle") + 1]) if "--throttle" in args else 0.0
    with StandInHub({args[0]: repo_files(Path(args[1]))}, throttle=throttle) as hub:
        print(hub.url, flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
