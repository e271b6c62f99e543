"""A stand-in for the Hugging Face Hub on 127.0.0.1, serving model repos that a test writes.

It answers what huggingface_hub asks while downloading: `GET /api/models/{repo}` (the file list, for tuitune's
repo fetch) and `HEAD` / `GET /{repo}/resolve/{revision}/{file}` with the `ETag`, `X-Repo-Commit` and
`Content-Length` headers it checks (a missing file is a 404 with `X-Error-Code: EntryNotFound`, as the hub says
it). `fail` makes a file go wrong: "500" (its GET is a server error), "cut" (the connection closes mid-file) or
"missing" (listed by the API, but a 404 when asked for); keyed by file name, or by "repo/file" for one repo's.
`throttle` (bytes per second) slows file bodies down, to watch a download's progress.

It also takes uploads, as huggingface_hub makes them (`create_repo`, then `upload_folder` / `create_commit`), each
refused with 401 without a token in `tokens`: `POST /api/repos/create` (409 when the repo exists; its visibility kept
in `created`), `POST /api/models/{repo}/preupload/{revision}` (every file a regular git blob: huggingface_hub then
sends it base64 inside the commit, no LFS or Xet transfer), `POST /api/models/{repo}/commit/{revision}` (NDJSON: a
header, then `file` and `deletedFile` lines; the files are stored, a new commit id answered and recorded in
`commits`), `POST /api/validate-yaml` (a README.md's metadata, which `create_commit` checks first) and
`GET /api/models/{repo}/tree/{revision}` (what `list_repo_files` reads). Pushed files are then served like any
other. `fail={"create": "500"}` or `{"commit": "500"}` makes that write a server error.

Run it by hand for a demo: `python tests/engine/hub_server.py REPO_ID FOLDER [--throttle BYTES_PER_S]`.
"""

from __future__ import annotations

import base64
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
        self,
        repos: dict[str, dict[str, bytes]],
        fail: dict[str, str] | None = None,
        throttle: float = 0.0,
        tokens: tuple[str, ...] = ("hf_test_token",),
    ) -> None:
        self.repos, self.fail, self.throttle, self.tokens = repos, dict(fail or {}), throttle, tokens
        self.requests: list[tuple[str, str]] = []
        self.created: dict[str, dict[str, Any]] = {}  # repo -> {"private": bool, "payload": the create request}
        self.commits: list[dict[str, Any]] = []  # {"repo", "oid", "summary", "files", "deleted"}, in order
        self.heads: dict[str, str] = {}  # repo -> its latest commit (COMMIT for the repos given at the start)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

            def do_POST(self) -> None:
                hub._post(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # a short poll: shutdown() waits for the loop to look, 0.5 s at the default
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

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
        if path.startswith("/api/models/") and "/tree/" in path:
            return self._tree(h, path[len("/api/models/") :], body)
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
            "sha": self.heads.get(repo, COMMIT),
            "private": self.created.get(repo, {}).get("private", False),
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
            "X-Repo-Commit": self.heads.get(repo, COMMIT),
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

    # ------------------------------------------------------------------------------------------------- uploads
    def _post(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        self.requests.append((h.command, path))
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        auth = h.headers.get("Authorization", "")
        if auth.removeprefix("Bearer ") not in self.tokens:
            return self._json(h, 401, {"error": "Invalid username or password."}, {"X-Error-Code": "Unauthorized"})
        if path == "/api/repos/create":
            return self._create(h, json.loads(body))
        if path == "/api/validate-yaml":  # create_commit asks before it uploads a README.md (without hf_xet)
            return self._validate_yaml(h, json.loads(body)["content"])
        parts = path.removeprefix("/api/models/").split("/")
        repo, action = "/".join(parts[:2]), parts[2] if len(parts) > 2 else ""
        if not path.startswith("/api/models/") or action not in ("preupload", "commit"):
            return self._json(h, 404, {"error": "not found"}, {})
        if repo not in self.repos:
            return self._json(h, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if action == "preupload":
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in json.loads(body)["files"]
            ]
            return self._json(h, 200, {"files": files, "commitOid": self.heads.get(repo, COMMIT)}, {})
        if self.fail.get("commit") == "500":
            return self._json(h, 500, {"error": "Internal Error"}, {})
        return self._json(h, 200, self._commit(repo, body), {})

    def _create(self, h: BaseHTTPRequestHandler, payload: dict[str, Any]) -> None:
        if self.fail.get("create") == "500":
            return self._json(h, 500, {"error": "Internal Error"}, {})
        repo = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"{self.url}/{repo}"
        if payload.get("type", "model") not in (None, "model"):
            return self._json(h, 400, {"error": "this stand-in keeps model repos only"}, {})
        if repo in self.repos:
            return self._json(h, 409, {"error": "You already created this model repo", "url": url}, {})
        self.repos[repo] = {}
        self.created[repo] = {"private": payload.get("visibility", "public") != "public", "payload": payload}
        return self._json(h, 200, {"url": url, "name": repo}, {})

    def _validate_yaml(self, h: BaseHTTPRequestHandler, content: str) -> None:
        """The card's metadata block must be a YAML mapping between `---` lines (400 with the errors otherwise)."""
        import yaml  # huggingface_hub's own dependency

        head, sep, rest = content.partition("---\n")
        meta, end, _ = rest.partition("\n---")
        try:
            ok = not head and bool(sep) and bool(end) and isinstance(yaml.safe_load(meta), dict)
        except yaml.YAMLError:
            ok = False
        if not ok:
            return self._json(h, 400, {"errors": [{"message": "README.md: no YAML metadata mapping"}]}, {})
        return self._json(h, 200, {"errors": [], "warnings": []}, {})

    def _commit(self, repo: str, body: bytes) -> dict[str, Any]:
        """Apply an NDJSON commit (header, then file / deletedFile lines) to the repo's files."""
        files = self.repos[repo]
        record: dict[str, Any] = {"repo": repo, "summary": "", "files": [], "deleted": []}
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                record["summary"] = value.get("summary", "")
            elif key == "file":
                assert value.get("encoding") == "base64", value
                files[value["path"]] = base64.b64decode(value["content"])
                record["files"].append(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
                record["deleted"].append(value["path"])
            else:  # lfsFile, copies: never asked for, every file being a regular blob here
                raise ValueError(f"stand-in hub: commit line {key!r} not supported")
        oid = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode())
        record["oid"] = self.heads[repo] = oid.hexdigest()
        self.commits.append(record)
        return {"commitUrl": f"{self.url}/{repo}/commit/{record['oid']}", "commitOid": record["oid"]}

    def _tree(self, h: BaseHTTPRequestHandler, rest: str, body: bool) -> None:
        repo = "/".join(rest.split("/")[:2])
        if repo not in self.repos:
            return self._send(h, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
        entries = [
            {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            for name, data in sorted(self.repos[repo].items())
        ]
        self._send(h, 200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, body)

    def _json(self, h: BaseHTTPRequestHandler, code: int, data: dict[str, Any], headers: dict[str, str]) -> None:
        self._send(h, code, json.dumps(data).encode(), {"Content-Type": "application/json", **headers}, True)

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
