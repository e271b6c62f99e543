"""`tuitune export RUN --onnx --push-to-hub org/name` against the tests' stand-in hub on 127.0.0.1, then what the hub
holds, read back with huggingface_hub's own `list_repo_files` and `hf_hub_download`: the repository's visibility, its
file list and its model card. Nothing reaches the internet.

    python scripts/push_to_stand_in_hub.py RUN_DIR [org/name] [--public]

(from the repository root, with `PYTHONPATH=$PWD`). Prints the CLI's output, then the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.engine.hub_server import StandInHub  # noqa: E402

TOKEN = "hf_test_token"


def main(argv: list[str]) -> int:
    run_dir, repo = argv[0], next((a for a in argv[1:] if not a.startswith("--")), "tuitune-demo/digits-5-9")
    public = ["--public"] if "--public" in argv else []
    home = Path(tempfile.mkdtemp(prefix="hf-home-"))
    with StandInHub({}) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_TOKEN=TOKEN, HF_HUB_DISABLE_PROGRESS_BARS="1")
        env.update(PYTHONPATH=str(ROOT), NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
        command = [sys.executable, "-m", "tuitune", "export", run_dir, "--onnx", "--push-to-hub", repo, *public]
        print("$ tuitune " + " ".join(command[3:]), flush=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        print(done.stdout + done.stderr, end="")
        print(f"(exit {done.returncode})\n")
        if done.returncode != 0:
            return done.returncode
        from huggingface_hub import HfApi, hf_hub_download

        api = HfApi(endpoint=hub.url, token=TOKEN)
        print(f"stand-in hub {hub.url}: {repo} private={hub.created[repo]['private']}")
        print("requests: " + ", ".join(f"{m} {p}" for m, p in hub.requests))
        print("list_repo_files:", api.list_repo_files(repo))
        card = hf_hub_download(repo, "README.md", endpoint=hub.url, token=TOKEN, cache_dir=str(home / "read"))
        print("\n----- README.md as the hub holds it -----")
        print(Path(card).read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
