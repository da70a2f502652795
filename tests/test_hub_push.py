"""persona_export.hf.hub_push against the stand-in hub (tests/hubkit.py): the real
huggingface_hub client's calls for a push (whoami, repository creation, preupload, LFS batch
and upload by sha256, commit), resuming an interrupted push, and each failure as one line
with a hint. Fast: small files, no model."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from persona_export.errors import (
    ExternalToolError,
    InputNotFoundError,
    OfflineError,
    PersonaExportError,
    UsageError,
)
from persona_export.hf.hub_push import Upload, upload
from tests.hubkit import TOKEN, StandInHub, git_sha1, stand_in_hub


def use_hub(monkeypatch: pytest.MonkeyPatch, url: str, tmp_path: Path) -> None:
    """Point huggingface_hub (already imported, so its constants are set) at ``url`` as
    HF_ENDPOINT would, with the stand-in's token and the LFS protocol (no Xet)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[StandInHub]:
    with stand_in_hub(lfs_threshold=1000, multipart_chunk=64 * 1024) as server:
        use_hub(monkeypatch, server.url, tmp_path)
        yield server


@pytest.fixture
def files(tmp_path: Path) -> list[Upload]:
    big = tmp_path / "cap-Q4_K_M.gguf"
    big.write_bytes(os.urandom(200 * 1024))  # multipart: 4 parts of 64 KiB
    small_lfs = tmp_path / "cap-Q8_0.gguf"
    small_lfs.write_bytes(os.urandom(5000))  # LFS, one PUT
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./cap-Q4_K_M.gguf\n")
    return [
        Upload("README.md", b"---\nlicense: mit\n---\n# card\n"),
        Upload(big.name, big),
        Upload(small_lfs.name, small_lfs),
        Upload("Modelfile", modelfile),
    ]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def push(items: list[Upload], repo: str = "me/cap", **kw: object) -> object:
    options = {"message": "test push", "private": False, "revision": None, **kw}
    return upload(repo, items, **options)  # type: ignore[arg-type]


def content(item: Upload) -> bytes:
    return item.source if isinstance(item.source, bytes) else item.source.read_bytes()


def test_push_creates_the_repo_uploads_large_files_by_sha256_and_commits(
    hub: StandInHub, files: list[Upload]
) -> None:
    done = push(files, private=True)
    assert done.repo_url == f"{hub.url}/me/cap"  # type: ignore[attr-defined]
    assert done.commit_url.startswith(f"{hub.url}/me/cap/commit/")  # type: ignore[attr-defined]
    assert hub.repos["me/cap"].private
    created = hub.called("POST", "/api/repos/create")
    assert [r.json for r in created] == [
        {"name": "cap", "organization": "me", "visibility": "private", "type": "model"}
    ]
    # every file landed with its bytes; the large ones through LFS, checked by sha256
    assert hub.files("me/cap") == {f.path_in_repo: content(f) for f in files}
    big, small = content(files[1]), content(files[2])
    assert set(hub.lfs) == {sha256(big), sha256(small)}
    assert len(hub.called("PUT", f"/lfs-part/{sha256(big)}/")) == 4  # multipart upload
    assert len(hub.called("PUT", f"/lfs-upload/{sha256(small)}")) == 1
    assert len(hub.called("POST", "/lfs-verify/")) == 2
    # one commit: regular files inline (base64), LFS files by oid and size
    (commit,) = hub.repos["me/cap"].commits
    ops = {line["value"]["path"]: line for line in commit["lines"][1:]}
    assert ops["cap-Q4_K_M.gguf"] == {
        "key": "lfsFile",
        "value": {
            "path": "cap-Q4_K_M.gguf",
            "algo": "sha256",
            "oid": sha256(big),
            "size": len(big),
        },
    }
    assert ops["README.md"]["key"] == ops["Modelfile"]["key"] == "file"
    assert commit["header"]["summary"] == "test push"
    assert len(hub.called("POST", "/api/validate-yaml")) == 1  # the card's front matter


def test_an_interrupted_push_resumes_without_sending_stored_files_again(
    hub: StandInHub, files: list[Upload]
) -> None:
    small = sha256(content(files[2]))
    hub.fail("PUT", f"/lfs-upload/{small}", 400)  # the connection dies on the second file
    with pytest.raises(ExternalToolError, match="me/cap: the Hugging Face Hub answered 400"):
        push(files)
    assert hub.repos["me/cap"].commits == []  # nothing committed
    big = sha256(content(files[1]))
    assert set(hub.lfs) == {big}
    sent_before = len(hub.called("PUT", "/lfs-part/"))

    push(files)
    assert len(hub.called("PUT", "/lfs-part/")) == sent_before  # the stored file was skipped
    assert set(hub.lfs) == {big, small}
    assert hub.files("me/cap") == {f.path_in_repo: content(f) for f in files}

    # a third push with nothing changed: preupload reports every file's oid, no commit
    again = push(files)
    assert again.commit_url is None  # type: ignore[attr-defined]
    assert len(hub.repos["me/cap"].commits) == 1
    assert hub.repos["me/cap"].branches["main"]["Modelfile"]["oid"] == git_sha1(content(files[3]))


def test_push_to_a_branch_and_an_organisation(hub: StandInHub, files: list[Upload]) -> None:
    push(files[:1], repo="persona-org/cap", revision="v1")
    assert "v1" in hub.repos["persona-org/cap"].branches
    assert hub.files("persona-org/cap", "v1") == {"README.md": content(files[0])}
    assert hub.files("persona-org/cap", "main") == {}
    assert hub.repos["persona-org/cap"].commits[0]["branch"] == "v1"


def test_a_repo_in_someone_elses_namespace_is_refused_before_anything_is_created(
    hub: StandInHub, files: list[Upload]
) -> None:
    with pytest.raises(UsageError) as caught:
        push(files, repo="someone-else/taken")
    assert caught.value.message == (
        "someone-else/taken is not in your namespace: the token is me's (organisations: "
        "persona-org)"
    )
    assert caught.value.hint == "push to one of yours, e.g. --repo me/taken"
    assert hub.called("POST", "/api/repos/create") == []


def test_no_token_is_said_before_any_request(
    hub: StandInHub, files: list[Upload], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(UsageError) as caught:
        push(files)
    assert caught.value.message == "no Hugging Face token to push to me/cap"
    assert "HF_TOKEN" in caught.value.hint and "hf auth login" in caught.value.hint
    assert hub.requests == []


@pytest.mark.parametrize(
    ("method", "prefix", "status", "error", "message"),
    [
        ("GET", "/api/whoami-v2", 401, ExternalToolError, "the hub refused the token (401"),
        ("POST", "/api/models/me/cap/commit/", 403, ExternalToolError, "refused to write there"),
        ("POST", "/api/models/me/cap/preupload/", 404, InputNotFoundError, "does not know that"),
        ("POST", "/me/cap.git/info/lfs/objects/batch", 413, ExternalToolError, "too large (413"),
    ],
)
def test_http_errors_are_one_line_with_a_hint(
    hub: StandInHub,
    files: list[Upload],
    method: str,
    prefix: str,
    status: int,
    error: type[PersonaExportError],
    message: str,
) -> None:
    hub.fail(method, prefix, status)
    with pytest.raises(error) as caught:
        push(files)
    assert message in caught.value.message
    assert caught.value.message.startswith("me/cap: ")
    assert "\n" not in caught.value.message and caught.value.hint


def test_an_unreachable_hub_is_said_with_what_to_check(
    files: list[Upload], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    use_hub(monkeypatch, f"http://127.0.0.1:{port}", tmp_path)
    with pytest.raises(OfflineError) as caught:
        push(files)
    assert caught.value.message.startswith(
        f"cannot reach the Hugging Face Hub at http://127.0.0.1:{port}: "
    )
    assert "HF_ENDPOINT" in caught.value.hint
