"""The push stage: share a persona's export on the Hugging Face Hub.

``--what gguf`` (the default) uploads the GGUF folder to ``--repo``: the GGUFs, the
Modelfile, the Hub files Ollama reads (``template``, ``system``, ``params``), the base's
licence files and the model card, so ``ollama run hf.co/<repo>:<QUANT>`` runs the persona.
``--what merged`` uploads the merged Transformers folder to ``--repo``; ``--what both`` the
merged folder to ``--repo`` and the GGUF folder to ``--repo`` + ``-gguf`` (each repository
has its own card; the GGUF card names the merged repository as the model it quantizes).

What is uploaded is what the stages wrote, never manifests (``*.manifest.json``,
``persona_export_manifest.json``), logs (``*.log``), the verify report (it holds local
paths; its figures are in the card) or files someone else put in the folders. The cards are
rendered again for the repositories (usage lines name them) from the facts their stages
recorded; no local path is in them.

Refused, before anything is uploaded, unless ``force``: a merged folder that is not as the
merge wrote it, a GGUF folder whose card is not up to date (``persona-export card``), and an
export that verify did not pass on exactly these files. ``dry_run`` stops after the plan
(the refusals are then warnings). The push itself is :mod:`persona_export.hf.hub_push`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export import __version__, console
from persona_export.artifacts import DIR_MANIFEST, list_files, persona_lock, read_json
from persona_export.errors import InputNotFoundError, UsageError, VerificationError
from persona_export.hf.hub_push import Upload, repo_url
from persona_export.hf.model_card import CARD_NAME, is_repo_id, render_card
from persona_export.ollama.hub_files import HUB_FILES
from persona_export.stages import card as card_stage
from persona_export.stages.base import StageConfig, StageResult, Status
from persona_export.verify.report import certify

STAGE = "push"
WHATS = ("gguf", "merged", "both")
GGUF_REPO_SUFFIX = "-gguf"  # lower case: Ollama model names are lower-case letters, digits, _-.
_REVISION = re.compile(r"^[A-Za-z0-9][\w./-]*$")


@dataclass(frozen=True)
class PushConfig(StageConfig):
    """Where to push: ``repo`` (``owner/name``), ``what`` (gguf, merged or both), a new
    repository's visibility, the branch (``revision``, default main). ``dry_run``: plan
    only. ``force``: push even when verify does not vouch for the files. ``verbose``:
    huggingface_hub's own progress bars and messages."""

    repo: str = ""
    what: str = "gguf"
    private: bool = False
    revision: str | None = None
    dry_run: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_repo_id(self.repo):
            raise UsageError(
                f"--repo {self.repo!r} is not a Hugging Face repository id",
                "give OWNER/NAME (your user or organisation name, then the repository's name), "
                "e.g. --repo me/demo-pirate",
            )
        if self.what not in WHATS:
            raise UsageError(f"unknown --what {self.what!r}", f"use one of: {', '.join(WHATS)}")
        if self.what == "both" and not is_repo_id(self.repo + GGUF_REPO_SUFFIX):
            raise UsageError(
                f"--repo {self.repo!r} is too long for its -gguf companion",
                "choose a shorter name (the hub allows 96 characters)",
            )
        if self.revision is not None and not _REVISION.fullmatch(self.revision):
            raise UsageError(
                f"--revision {self.revision!r} is not a branch name",
                "give a branch of the repository, e.g. --revision main (created if missing)",
            )

    def repos(self) -> dict[str, str]:
        """folder kind -> repository."""
        if self.what == "both":
            return {"merged": self.repo, "gguf": self.repo + GGUF_REPO_SUFFIX}
        return {self.what: self.repo}


@dataclass(frozen=True)
class RepoPush:
    """One repository's push: the files (name in the repository -> local file or bytes),
    its card's text, and after the upload the commit's URL (None: nothing changed)."""

    kind: str  # merged | gguf
    repo: str
    folder: Path
    files: tuple[Upload, ...]
    card: str
    url: str
    commit_url: str | None = None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "repo": self.repo,
            "url": self.url,
            "folder": str(self.folder),
            "files": [
                {
                    "path": f.path_in_repo,
                    "size": f.size,
                    "source": "generated" if isinstance(f.source, bytes) else str(f.source),
                }
                for f in self.files
            ],
            "bytes": self.size,
            "commit_url": self.commit_url,
        }


@dataclass(frozen=True)
class PushResult(StageResult):
    """The repositories planned (dry run) or pushed, and what ``--force`` let through."""

    pushes: tuple[RepoPush, ...] = ()
    dry_run: bool = False
    refusals: tuple[str, ...] = field(default=())


def _merged_push(config: PushConfig, repo: str, companion: str | None) -> tuple[RepoPush, list]:
    folder = config.layout.merged(config.persona)
    manifest = read_json(folder / DIR_MANIFEST)
    if manifest is None or manifest.get("stage") != "merge":
        raise InputNotFoundError(
            f"no merged model for {config.persona} at {folder}",
            f"merge it first: persona-export merge --persona {config.persona}",
        )
    recorded = manifest.get("outputs") or {}
    current = list_files(folder)
    problems = []
    if changed := sorted(n for n in set(recorded) | set(current) if _differs(n, recorded, current)):
        problems.append(f"{folder} is not as the merge wrote it ({', '.join(changed[:3])})")
    facts = manifest.get("card")
    if not isinstance(facts, dict):
        raise InputNotFoundError(
            f"{folder} was merged by an older persona-export (no model card facts)",
            f"merge again: persona-export merge --persona {config.persona} --force",
        )
    text = render_card(facts, repo=repo, companion=companion)
    files = [Upload(CARD_NAME, text.encode("utf-8"))]
    ours = {name: path for name, path in current.items() if name in recorded}
    files += [Upload(name, path) for name, path in ours.items() if _shareable(name)]
    vouched = {f"merged/{name}": path for name, path in ours.items()}
    problems += list(certify(config.layout.verify_report(config.persona), vouched).problems)
    return RepoPush("merged", repo, folder, tuple(files), text, repo_url(repo)), problems


def _gguf_push(config: PushConfig, repo: str, companion: str | None) -> tuple[RepoPush, list]:
    layout, persona = config.layout, config.persona
    folder = layout.gguf_dir(persona)
    planned = card_stage.plan(layout, persona)
    facts = planned.facts
    text = render_card(facts, repo=repo, companion=companion)
    files = [Upload(CARD_NAME, text.encode("utf-8"))]
    files += [Upload(q["file"], folder / q["file"]) for q in facts["quants"]]
    files += [Upload("Modelfile", layout.modelfile(persona))]
    files += [Upload(n, folder / n) for n in HUB_FILES if n in planned.payloads]
    merged = layout.merged(persona)
    files += [Upload(n, merged / n) for n in facts["license_files"] if (merged / n).is_file()]
    vouched = {"modelfile": layout.modelfile(persona)}
    vouched |= {f"gguf/{q['file']}": folder / q["file"] for q in facts["quants"]}
    problems = list(certify(layout.verify_report(persona), vouched).problems)
    if not planned.up_to_date(layout, persona):
        problems.append(
            f"the card and Hub files in {folder} are not up to date (run: persona-export card "
            f"--persona {persona})"
        )
    return RepoPush("gguf", repo, folder, tuple(files), text, repo_url(repo)), problems


def _differs(name: str, recorded: dict[str, Any], current: dict[str, Path]) -> bool:
    """Whether file ``name`` is not as the manifest recorded it (by size and mtime)."""
    if name not in recorded or name not in current:
        return True
    st = current[name].stat()
    return st.st_size != recorded[name].get("size") or st.st_mtime_ns != recorded[name].get(
        "mtime_ns"
    )


def _shareable(name: str) -> bool:
    """What a merged folder shares: not our card (rendered again for the repository) or
    logs (manifests are never listed)."""
    return name != CARD_NAME and not name.endswith(".log")


def _require_export(config: PushConfig, repos: dict[str, str]) -> None:
    """A missing folder is said before anything else, with how to make it."""
    layout, persona = config.layout, config.persona
    for kind in repos:
        folder = layout.merged(persona) if kind == "merged" else layout.gguf_dir(persona)
        if not folder.is_dir():
            raise InputNotFoundError(
                f"no {kind} export of {persona} at {folder}",
                f"export it first: persona-export export --persona {persona} (or point "
                "--merged-dir/--gguf-dir/--work-dir at its folders)",
            )


Show = Callable[[tuple[RepoPush, ...], tuple[str, ...]], None]


def run(config: PushConfig, *, show: Show | None = None) -> PushResult:
    """Plan the push, refuse what verify does not vouch for (unless ``force``), call
    ``show`` with the plan, and upload (unless ``dry_run``). Raises the errors.py classes."""
    from persona_export.hf.hub_push import quiet, upload

    started = time.monotonic()
    repos = config.repos()
    _require_export(config, repos)
    with persona_lock(config.layout.lock_file(config.persona), on_wait=console.info):
        planned: list[RepoPush] = []
        problems: list[str] = []
        if "merged" in repos:
            push, found = _merged_push(config, repos["merged"], repos.get("gguf"))
            planned.append(push)
            problems += found
        if "gguf" in repos:
            push, found = _gguf_push(config, repos["gguf"], repos.get("merged"))
            planned.append(push)
            problems += found
        refusals = tuple(dict.fromkeys(problems))
        if refusals and not (config.force or config.dry_run):
            more = f" (and {len(refusals) - 1} more)" if refusals[1:] else ""
            raise VerificationError(
                f"{config.persona} was not pushed: {refusals[0]}{more}",
                f"run `persona-export export --persona {config.persona}` (verify included), or "
                "push --force to share it unverified",
            )
        if show is not None:
            show(tuple(planned), refusals)
        if config.dry_run:
            return _result(config, tuple(planned), refusals, started)
        pushed = []
        with quiet(config.verbose):
            for push in planned:
                console.info(f"pushing {len(push.files)} files to {push.repo}")
                done = upload(
                    push.repo,
                    push.files,
                    message=f"{config.persona} ({push.kind}), by persona-export {__version__}",
                    private=config.private,
                    revision=config.revision,
                    progress=lambda f: console.info(f"  {f.path_in_repo}"),
                )
                pushed.append(_with_commit(push, done.repo_url, done.commit_url))
    return _result(config, tuple(pushed), refusals, started)


def _with_commit(push: RepoPush, url: str, commit_url: str | None) -> RepoPush:
    return RepoPush(push.kind, push.repo, push.folder, push.files, push.card, url, commit_url)


def _result(
    config: PushConfig, pushes: tuple[RepoPush, ...], refusals: tuple[str, ...], started: float
) -> PushResult:
    verb = "would push" if config.dry_run else "pushed"
    return PushResult(
        stage=STAGE,
        persona=config.persona,
        status=Status.SKIPPED if config.dry_run else Status.DONE,
        outputs=(),
        figures={
            "dry_run": config.dry_run,
            "revision": config.revision or "main",
            "repos": [p.to_json() for p in pushes],
        },
        warnings=refusals,
        seconds=time.monotonic() - started,
        detail="; ".join(f"{verb} {len(p.files)} files to {p.repo}" for p in pushes),
        pushes=pushes,
        dry_run=config.dry_run,
        refusals=refusals,
    )
