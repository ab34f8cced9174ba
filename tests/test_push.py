"""`datagen push`: export, then create a dataset repository and upload the export in one commit.

No Hub is reachable from the test machines, so `RecordingHfApi` below STANDS IN FOR THE HUGGING FACE HUB: it replaces
`huggingface_hub.HfApi` inside datagen.publish.push and records every call (repository id, type, privacy, and each file's
path in the repository and bytes). Everything up to huggingface_hub's API is the real code; the real
`CommitOperationAdd`/`CommitOperationDelete` classes are used, so a missing local file would fail here too.
"""

from __future__ import annotations

import inspect

import pytest
from huggingface_hub import HfApi
from typer.testing import CliRunner

import datagen.publish.push
from datagen.cli import app
from tests.export_fixtures import SECRET, build_store, set_export

TOKEN = "hf_testTOKEN_do_not_leak_0042"
STALE = "data/train-00002-of-00003.parquet"  # a shard an earlier, larger export left in the repository


def real_signature_accepts(method: str, *args, **kwargs) -> None:
    """The call datagen made would bind to the real HfApi method: the stand-in must not hide an API mismatch."""
    inspect.signature(getattr(HfApi, method)).bind(None, *args, **kwargs)


class RecordingHfApi:
    """Stands in for the Hub: records what datagen asks huggingface_hub to do instead of sending it."""

    instances: list[RecordingHfApi] = []

    def __init__(self, token=None, **kwargs):
        inspect.signature(HfApi.__init__).bind(None, token=token, **kwargs)
        self.token = token
        self.repos: list[dict] = []
        self.commits: list[dict] = []
        RecordingHfApi.instances.append(self)

    def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kwargs):
        real_signature_accepts("create_repo", repo_id, repo_type=repo_type, private=private, exist_ok=exist_ok,
                               **kwargs)
        self.repos.append({"repo_id": repo_id, "repo_type": repo_type, "private": private, "exist_ok": exist_ok})
        return f"https://huggingface.co/datasets/{repo_id}"

    def list_repo_files(self, repo_id, *, repo_type=None, **kwargs):
        real_signature_accepts("list_repo_files", repo_id, repo_type=repo_type, **kwargs)
        assert repo_type == "dataset"
        return [".gitattributes", "README.md", "data/train-00000-of-00003.parquet", STALE]

    def create_commit(self, repo_id, operations, *, commit_message=None, repo_type=None, **kwargs):
        real_signature_accepts("create_commit", repo_id, operations, commit_message=commit_message,
                               repo_type=repo_type, **kwargs)
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        adds = {op.path_in_repo: open(op.path_or_fileobj, "rb").read()
                for op in operations if isinstance(op, CommitOperationAdd)}
        deletes = [op.path_in_repo for op in operations if isinstance(op, CommitOperationDelete)]
        self.commits.append({"repo_id": repo_id, "repo_type": repo_type, "message": commit_message,
                             "adds": adds, "deletes": deletes})


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        yield build_store(tmp_path_factory.mktemp("push"), mp,
                          extra="export:\n  hub: {repo_id: someone/tiny-distill}\n  columns: [_id]\n")
    finally:
        mp.undo()


@pytest.fixture
def hub(monkeypatch):
    RecordingHfApi.instances = []
    monkeypatch.setattr(datagen.publish.push, "HfApi", RecordingHfApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("TEACHER_API_KEY", SECRET)
    return RecordingHfApi


def test_push_uploads_the_export_to_a_private_dataset_repo(spec, hub):
    result = CliRunner().invoke(app, ["push", str(spec)])
    assert result.exit_code == 0, result.output
    [api] = hub.instances
    assert api.token == TOKEN
    assert api.repos == [{"repo_id": "someone/tiny-distill", "repo_type": "dataset", "private": True,
                          "exist_ok": True}]
    [commit] = api.commits
    assert commit["repo_id"] == "someone/tiny-distill" and commit["repo_type"] == "dataset"
    assert sorted(commit["adds"]) == ["README.md", "data/train-00000-of-00001.parquet"]
    assert commit["deletes"] == ["data/train-00000-of-00003.parquet", STALE]
    card = commit["adds"]["README.md"].decode()
    assert 'load_dataset("someone/tiny-distill")' in card
    assert commit["adds"]["data/train-00000-of-00001.parquet"][:4] == b"PAR1"
    for data in commit["adds"].values():
        assert TOKEN.encode() not in data and SECRET.encode() not in data
    assert TOKEN not in result.output
    assert "data/train-00000-of-00001.parquet" in result.output and "private" in result.output


def test_repo_id_option_and_public(spec, hub):
    result = CliRunner().invoke(app, ["push", str(spec), "--repo-id", "other/name", "--public"])
    assert result.exit_code == 0, result.output
    [api] = hub.instances
    assert api.repos[0]["repo_id"] == "other/name" and api.repos[0]["private"] is False
    assert api.commits[0]["repo_id"] == "other/name"


def test_dry_run_sends_nothing_and_needs_no_token(spec, hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    result = CliRunner().invoke(app, ["push", str(spec), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert hub.instances == []
    assert "would upload to dataset repository someone/tiny-distill (private)" in result.output
    assert "  README.md" in result.output and "  data/train-00000-of-00001.parquet" in result.output


def test_missing_token_is_a_user_error(spec, hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    result = CliRunner().invoke(app, ["push", str(spec)])
    assert result.exit_code == 2
    assert "set HF_TOKEN" in result.output
    assert hub.instances == []


def test_bad_or_missing_repo_id(spec, hub):
    result = CliRunner().invoke(app, ["push", str(spec), "--repo-id", "no-slash"])
    assert result.exit_code == 2 and "must look like OWNER/NAME" in result.output
    set_export(spec, "export:\n  columns: [_id]\n")
    try:
        result = CliRunner().invoke(app, ["push", str(spec)])
    finally:
        set_export(spec, "export:\n  hub: {repo_id: someone/tiny-distill}\n  columns: [_id]\n")
    assert result.exit_code == 2 and "--repo-id OWNER/NAME" in result.output
    assert hub.instances == []


def test_refused_token_is_a_user_error_without_the_token(spec, hub, monkeypatch):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    def refuse(self, repo_id, **kwargs):  # what huggingface_hub raises when the Hub answers 401 (nothing is sent)
        response = httpx.Response(401, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
        raise HfHubHTTPError(f"401 Unauthorized for token {TOKEN}", response=response)

    monkeypatch.setattr(RecordingHfApi, "create_repo", refuse)
    result = CliRunner().invoke(app, ["push", str(spec)])
    assert result.exit_code == 2
    assert "the Hub refused HF_TOKEN" in result.output
    assert TOKEN not in result.output
