"""Uploading a folder's files to a Hugging Face Hub model repository, with huggingface_hub.

:func:`upload` takes a list of :class:`Upload` (the name in the repository and a local file,
or bytes for a card rendered for the repository) and makes one commit:

1. the token is huggingface_hub's (``HF_TOKEN``, else the stored login); ``whoami`` says
   whose it is, and a repository outside that user's namespace and organisations is refused
   before anything is created;
2. ``create_repo(exist_ok=True)`` (``private`` applies to a new repository only), then
   ``create_branch`` for a ``revision`` other than ``main``;
3. each file goes through ``preupload_lfs_files``: the hub says whether it is a large (LFS)
   file; a large file is uploaded by content hash (sha256), and one the hub already holds
   is skipped, which makes an interrupted push resumable;
4. ``create_commit`` commits every file; files the repository already has with the same
   content are left out by huggingface_hub (an unchanged push makes no commit).

``HF_ENDPOINT`` points huggingface_hub at another hub (the tests' stand-in server). When the
``hf_xet`` package is installed huggingface_hub moves large files with the Xet protocol
instead of LFS (``HF_HUB_DISABLE_XET=1`` turns that off); the tests exercise the LFS path.

Every failure becomes one :mod:`persona_export.errors` line with a hint: no token, no
network, a repository of someone else, and the HTTP statuses 401, 403, 404 and 413.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.errors import (
    ExternalToolError,
    InputNotFoundError,
    OfflineError,
    PersonaExportError,
    UsageError,
)

TOKEN_HINT = (
    "set HF_TOKEN to a write token (https://huggingface.co/settings/tokens) or run `hf auth login`"
)


@dataclass(frozen=True)
class Upload:
    """One file of a push: its name in the repository, and a local file or bytes."""

    path_in_repo: str
    source: Path | bytes

    @property
    def size(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size


@dataclass(frozen=True)
class Pushed:
    """What one commit did: the repository's URL, the commit's URL (None: nothing changed)."""

    repo_url: str
    commit_url: str | None


def endpoint() -> str:
    """The hub huggingface_hub talks to (``HF_ENDPOINT``, read when it is imported)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def repo_url(repo: str) -> str:
    return f"{endpoint()}/{repo}"


@contextlib.contextmanager
def quiet(verbose: bool) -> Iterator[None]:
    """huggingface_hub's progress bars and warnings only when ``verbose``."""
    from huggingface_hub.utils import disable_progress_bars, logging

    if verbose:
        yield
        return
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with disable_progress_bars():
            yield
    finally:
        logging.set_verbosity(level)


def _namespaces(identity: dict[str, Any]) -> list[str]:
    orgs = [o.get("name") for o in identity.get("orgs") or [] if isinstance(o, dict)]
    return [str(n) for n in [identity.get("name"), *orgs] if n]


def upload(
    repo: str,
    files: Sequence[Upload],
    *,
    message: str,
    private: bool,
    revision: str | None,
    progress: Callable[[Upload], None] | None = None,
) -> Pushed:
    """Commit ``files`` to the model repository ``repo`` (module docstring); raise the
    errors.py class that says what went wrong."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    token = get_token()
    if not token:
        raise UsageError(f"no Hugging Face token to push to {repo}", TOKEN_HINT)
    api = HfApi(token=token)
    with _translated(repo, revision):
        identity = api.whoami()
        owner = repo.split("/")[0]
        namespaces = _namespaces(identity)
        if owner not in namespaces:
            raise UsageError(
                f"{repo} is not in your namespace: the token is {namespaces[0]}'s"
                + (f" (organisations: {', '.join(namespaces[1:])})" if namespaces[1:] else ""),
                f"push to one of yours, e.g. --repo {namespaces[0]}/{repo.split('/')[1]}",
            )
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo, branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(f.path_in_repo, f.source) for f in files]
        for item, operation in zip(files, operations, strict=True):
            if progress is not None:
                progress(item)
            api.preupload_lfs_files(repo, [operation], revision=revision, free_memory=False)
        info = api.create_commit(
            repo, operations, commit_message=message, revision=revision, repo_type="model"
        )
    # huggingface_hub answers an unchanged push with the head's CommitInfo and no public
    # flag; the oids preupload reported (remote) against the files' own (local) tell it
    changed = any(op._remote_oid is None or op._remote_oid != op._local_oid for op in operations)
    return Pushed(str(url), str(info.commit_url) if changed else None)


_STATUS_HINTS = {
    401: ("the hub refused the token (401 Unauthorized)", TOKEN_HINT),
    403: (
        "the hub refused to write there (403 Forbidden): the repository belongs to someone "
        "else, or the token is read-only",
        "use a token with write access to that namespace, or push to your own --repo",
    ),
    404: (
        "the hub does not know that repository or revision (404 Not Found)",
        "check --repo and --revision (a private repository looks missing without access)",
    ),
    413: (
        "the hub refused a file as too large (413 Payload Too Large)",
        "the hub takes files up to 50 GB (it stores large files through LFS/Xet); push a "
        "smaller quantization or check HF_ENDPOINT",
    ),
}


@contextlib.contextmanager
def _translated(repo: str, revision: str | None) -> Iterator[None]:
    """huggingface_hub's and httpx's exceptions as one-line errors with a hint."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    try:
        yield
    except PersonaExportError:
        raise
    except LocalTokenNotFoundError as exc:
        raise UsageError(f"no Hugging Face token to push to {repo}", TOKEN_HINT) from exc
    except HfHubHTTPError as exc:
        raise _http_error(exc, repo, revision) from exc
    except RuntimeError as exc:  # an LFS upload failed: huggingface_hub wraps the cause
        cause = exc.__cause__
        if isinstance(cause, HfHubHTTPError):
            raise _http_error(cause, repo, revision) from exc
        if isinstance(cause, httpx2.HTTPError):
            raise _offline(cause) from exc
        raise
    except httpx2.HTTPError as exc:
        raise _offline(exc) from exc


def _offline(exc: Exception) -> OfflineError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return OfflineError(
        f"cannot reach the Hugging Face Hub at {endpoint()}: {first}",
        "check the network connection (and HF_ENDPOINT, when set); pushing again resumes: "
        "files the hub already has are not sent again",
    )


def _http_error(exc: Any, repo: str, revision: str | None) -> PersonaExportError:
    status = exc.response.status_code if exc.response is not None else None
    said = (exc.server_message or "").strip().splitlines()
    detail = f" ({said[0]})" if said else ""
    where = f"{repo}" + (f"@{revision}" if revision else "")
    if status in _STATUS_HINTS:
        message, hint = _STATUS_HINTS[status]
        error_class = InputNotFoundError if status == 404 else ExternalToolError
        return error_class(f"{where}: {message}{detail}", hint)
    return ExternalToolError(
        f"{where}: the Hugging Face Hub answered {status or 'an error'}{detail}",
        "try again later; pushing again resumes: files the hub already has are not sent again",
    )
