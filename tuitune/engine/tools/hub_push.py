"""`tuitune export RUN --push-to-hub org/name`: the export folder, with a model card, in a hub repository.

huggingface_hub does the work: `create_repo` (private unless `--public`; an existing repository is kept, but a
private push into one that is public is refused rather than published), then `upload_folder` of the export in one
commit. The card is `README.md` in the export folder (`model_card.build_card`), so the folder and the repository
hold the same files. Two files stay local: `sample.safetensors` (the run's validation inputs: the user's data) and
`export.json` (this machine's paths).

The token is huggingface_hub's (`HF_TOKEN`, or the one `hf auth login` saved) and the hub is `HF_ENDPOINT` when set,
read when the push starts. Everything that can be checked before the export is (`push_target`: the repository id, a
token, not offline), so a refusal costs nothing. A refusal or a client error (401, 403, a bad id) is a `UserError`
(one line, exit 2); a server error (5xx) or an unreachable hub is `PushFailed` (one line, exit 1). Neither touches
the run directory: a push only reads it (and writes the card into its export folder).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuitune.engine.model.hub import is_offline
from tuitune.engine.record.files import write_text_atomic
from tuitune.engine.tools.model_card import build_card, read_story
from tuitune.errors import UserError, first_line

__all__ = ["LOCAL_ONLY", "PushFailed", "PushTarget", "push_export", "push_target"]

LOCAL_ONLY = ["sample.safetensors", "export.json", ".onnx-*", ".*.tmp"]  # never uploaded (see the module doc)
_NETWORK_ERRORS = ("TransportError", "RequestError", "ConnectionError", "TimeoutException", "Timeout")


class PushFailed(Exception):
    """The hub failed (a server error) or could not be reached: one line, exit 1."""


@dataclass(frozen=True)
class PushTarget:
    repo_id: str
    private: bool
    token: str
    endpoint: str | None  # HF_ENDPOINT, else None: huggingface_hub's default hub


def push_target(repo_id: str, private: bool = True) -> PushTarget:
    """The push checked before anything is exported: an `org/name` id the hub accepts, a token, not offline."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1:
        raise UserError(f"--push-to-hub: {repo_id!r} is not a repository id of the form org/name")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"--push-to-hub: {repo_id!r}: {first_line(e)}") from None
    if is_offline():
        raise UserError("--push-to-hub: offline (HF_HUB_OFFLINE is set): nothing can be uploaded")
    token = get_token()
    if not token:
        raise UserError("--push-to-hub: no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
    return PushTarget(repo_id, private, token, os.environ.get("HF_ENDPOINT", "").rstrip("/") or None)


def push_export(target: PushTarget, run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the card into the export folder, create the repository, upload the folder; what was pushed."""
    from huggingface_hub import HfApi

    folder = Path(manifest["dir"])
    card = build_card(read_story(Path(run_dir)), manifest, target.repo_id)
    write_text_atomic(folder / "README.md", str(card))
    files = uploaded_files(folder)
    api = HfApi(endpoint=target.endpoint, token=target.token)
    try:
        url = api.create_repo(target.repo_id, private=target.private, exist_ok=True)
        if target.private and not api.repo_info(target.repo_id).private:
            raise UserError(
                f"--push-to-hub: {target.repo_id} exists and is public; this push was to be private "
                "(pass --public to push to it)"
            )
        commit = api.upload_folder(
            repo_id=target.repo_id,
            folder_path=folder,
            commit_message=f"tuitune export of run {Path(run_dir).name}",
            ignore_patterns=list(LOCAL_ONLY),
        )
    except UserError:
        raise
    except Exception as e:
        raise _failure(e, target) from e
    return {"repo_id": target.repo_id, "url": str(url), "commit": commit.oid, "private": target.private, "files": files}


def uploaded_files(folder: Path) -> list[str]:
    """The export's files that go up (repository paths), as `upload_folder` with LOCAL_ONLY ignored picks them."""
    names = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    return [n for n in names if not any(fnmatch.fnmatch(n, pattern) for pattern in LOCAL_ONLY)]


def _failure(error: Exception, target: PushTarget) -> Exception:
    """A hub answer or a transport error as one line: UserError for a client error, PushFailed for the server's
    or the network's; anything else (a bug) is returned as it is, traceback and all."""
    from huggingface_hub.errors import HfHubHTTPError

    where = target.endpoint or "the Hugging Face Hub"
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else 0
        said = getattr(error, "server_message", "") or first_line(error)
        line = f"--push-to-hub {target.repo_id}: {where} answered {status}: {first_line(ValueError(said), 300)}"
        return PushFailed(line) if status >= 500 or status == 0 else UserError(line)
    if isinstance(error, OSError) or any(c.__name__ in _NETWORK_ERRORS for c in type(error).__mro__):
        return PushFailed(f"--push-to-hub {target.repo_id}: cannot reach {where}: {first_line(error, 300)}")
    return error
