"""`datagen push`: export, then upload the export folder to a Hugging Face Hub dataset repository in one commit.

The token comes from HF_TOKEN and goes only to huggingface_hub: it is never printed or written. A new repository is
private unless the user asks otherwise. The commit replaces the repository's data files, so shards of an earlier,
larger export do not linger beside the new ones.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from datagen.errors import RunFailed, UserError
from datagen.publish.export import SHARD_RE, export
from datagen.spec.load import LoadedSpec

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
TOKEN_ENV = "HF_TOKEN"


@dataclass
class PushResult:
    repo_id: str
    private: bool
    files: list[tuple[Path, str]]  # (local file, path in the repository)
    deleted: list[str] = field(default_factory=list)
    url: str | None = None
    dry_run: bool = False


def target(loaded: LoadedSpec, repo_id: str | None, public: bool) -> tuple[str, bool]:
    hub = loaded.spec.export.hub if loaded.spec.export else None
    repo_id = repo_id or (hub.repo_id if hub else None)
    if not repo_id:
        raise UserError("no repository to push to: pass --repo-id OWNER/NAME or set `export.hub.repo_id` in the spec")
    if not REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".", "-")):
        raise UserError(f"repository id {repo_id!r} must look like OWNER/NAME (letters, digits, '-', '_', '.')")
    private = not public and (hub.private if hub else True)
    return repo_id, private


def push(loaded: LoadedSpec, repo_id: str | None = None, public: bool = False, dry_run: bool = False,
         out: str | Path | None = None, log: Callable[[str], None] = print) -> PushResult:
    repo_id, private = target(loaded, repo_id, public)
    token = os.environ.get(TOKEN_ENV)
    if not token and not dry_run:
        raise UserError(f"set {TOKEN_ENV} to a Hugging Face token with write access (or use --dry-run to see what "
                        "would be uploaded)")
    result = export(loaded, out=out, repo_id=repo_id)
    files = [(p, p.relative_to(result.path).as_posix()) for p in result.files]
    pushed = PushResult(repo_id, private, files, dry_run=dry_run)
    if dry_run:
        return pushed
    api = HfApi(token=token)
    try:
        pushed.url = str(api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True))
        pushed.deleted = stale_files(api, repo_id, {path for _, path in files})
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local)) for local, path in files]
        operations += [CommitOperationDelete(path_in_repo=path) for path in pushed.deleted]
        api.create_commit(repo_id, operations, repo_type="dataset",
                          commit_message=f"datagen export of {loaded.spec.name}")
    except Exception as exc:  # huggingface_hub raises many types; say which step failed, never with the token
        raise _upload_error(exc, repo_id, token) from None
    return pushed


def stale_files(api, repo_id: str, uploading: set[str]) -> list[str]:
    """Data shards in the repository that this export does not have (an earlier export had more shards)."""
    existing = api.list_repo_files(repo_id, repo_type="dataset")
    return sorted(p for p in existing if p.startswith("data/") and SHARD_RE.match(p[len("data/"):])
                  and p not in uploading)


def _upload_error(exc: Exception, repo_id: str, token: str) -> Exception:
    text = str(exc).replace(token, "[token]").splitlines()[0] if str(exc) else type(exc).__name__
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return UserError(f"the Hub refused {TOKEN_ENV} for {repo_id} ({status}): use a token with write access "
                         f"to that namespace ({text})")
    return RunFailed(f"upload to {repo_id} failed: {type(exc).__name__}: {text}; nothing partial was committed, "
                     "run the same command again")


def pushed_text(pushed: PushResult) -> str:
    privacy = "private" if pushed.private else "public"
    verb = "would upload" if pushed.dry_run else "uploaded"
    lines = [f"{verb} to dataset repository {pushed.repo_id} ({privacy}):"]
    for local, path in pushed.files:
        lines.append(f"  {path}  ({local.stat().st_size:,} bytes)")
    for path in pushed.deleted:
        lines.append(f"  deleted {path} (left by an earlier export)")
    if pushed.dry_run:
        lines.append("  and delete data shards an earlier export left there; nothing was sent (--dry-run)")
    elif pushed.url:
        lines.append(f"  {pushed.url}")
    return "\n".join(lines)
