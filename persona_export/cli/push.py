"""`persona-export push`: share a persona's export on the Hugging Face Hub."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from persona_export import console
from persona_export.cli._options import (
    GGUF_DIR,
    MERGED_DIR,
    GgufDir,
    MergedDir,
    Persona,
    WorkDir,
    work_layout,
)
from persona_export.cli._output import record

if TYPE_CHECKING:
    from persona_export.stages.push import RepoPush

EPILOG = (
    "Example: persona-export push --persona demo_pirate --repo me/demo-pirate --work-dir "
    "demo_work --dry-run"
)


def plan_lines(pushes: tuple[RepoPush, ...], *, private: bool, revision: str | None) -> list[str]:
    """What each repository gets: one line per file with its size, then the total."""
    from persona_export.units import human_size

    lines = []
    for push in pushes:
        visibility = "private" if private else "public"
        lines.append(
            f"{push.repo} ({push.kind}, revision {revision or 'main'}, {visibility} if new) "
            f"<- {push.folder}/"
        )
        width = max(len(f.path_in_repo) for f in push.files)
        for item in push.files:
            what = "  model card for this repository" if isinstance(item.source, bytes) else ""
            lines.append(f"  {item.path_in_repo:<{width}}  {human_size(item.size):>9}{what}")
        lines.append(f"  {len(push.files)} files, {human_size(push.size)}")
    return lines


def push(
    persona: Persona,
    repo: Annotated[
        str,
        typer.Option("--repo", help="The repository to push to: OWNER/NAME (created if missing)."),
    ],
    what: Annotated[
        str,
        typer.Option(
            "--what",
            help="gguf: the GGUF folder (Ollama runs it as hf.co/OWNER/NAME); merged: the merged "
            "Transformers folder; both: merged to OWNER/NAME and GGUF to OWNER/NAME-gguf.",
        ),
    ] = "gguf",
    private: Annotated[
        bool, typer.Option("--private", help="Create the repository private (a new one only).")
    ] = False,
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision", help="The branch to commit to (created if missing; default main)."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the files and the model card, upload nothing."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Push even when verify failed, is missing or is out of date."),
    ] = False,
    merged_dir: MergedDir = MERGED_DIR,
    gguf_dir: GgufDir = GGUF_DIR,
    work_dir: WorkDir = None,
) -> None:
    """Upload the persona's GGUF folder (or merged folder) to a Hugging Face Hub repository, with its model card.

    The GGUF repository gets the GGUFs, the Modelfile, the files Ollama reads from a Hub repository (template, system, params), the base's licence and the card, so `ollama run hf.co/OWNER/NAME:Q4_K_M` runs the persona. Never uploads manifests, logs or verify.json. Refuses an export that verify did not pass on these files (unless --force). The token is HF_TOKEN or the stored login (`hf auth login`). Prints the files with their sizes (--dry-run: and the card, then stops) and the repository's URL.
    """
    from persona_export.demo.run import DEFAULT_WORK_DIR, demo_layout
    from persona_export.errors import InputNotFoundError
    from persona_export.stages.push import PushConfig, run

    config = PushConfig(
        persona,
        layout=work_layout(work_dir, merged_dir, gguf_dir),
        repo=repo,
        what=what,
        private=private,
        revision=revision,
        dry_run=dry_run,
        force=force,
        verbose=console.mode().verbose,
    )

    def show(pushes: tuple[RepoPush, ...], refusals: tuple[str, ...]) -> None:
        for line in plan_lines(pushes, private=private, revision=revision):
            console.out(line)
        for refusal in refusals:
            said = "a push would be refused" if dry_run else "pushing anyway (--force)"
            console.warn(f"{said}: {refusal}")
        if dry_run:
            for planned in pushes:
                console.out("")
                console.out(f"--- README.md of {planned.repo} ---")
                console.out(planned.card.rstrip("\n"))

    try:
        result = run(config, show=show)
    except InputNotFoundError as exc:
        # after `make demo` the export is in demo_work/, not in the default folders
        demo = demo_layout(DEFAULT_WORK_DIR)
        here = config.layout.gguf_dir(persona).is_dir()
        if work_dir is None and not here and demo.gguf_dir(persona).is_dir():
            hint = f"the demo's export is in {DEFAULT_WORK_DIR}/: add --work-dir {DEFAULT_WORK_DIR}"
            raise InputNotFoundError(exc.message, hint) from exc
        raise
    record(
        result=result.to_json(),
        repositories=[
            {
                "repo": p.repo,
                "kind": p.kind,
                "url": p.url,
                "commit_url": p.commit_url,
                "files": [{"path": f.path_in_repo, "bytes": f.size} for f in p.files],
            }
            for p in result.pushes
        ],
        dry_run=result.dry_run,
    )
    if result.dry_run:
        console.info("dry run: nothing was uploaded")
        return
    for pushed in result.pushes:
        if pushed.commit_url is None:
            console.info(f"{pushed.repo} already had these files: nothing to commit")
        else:
            console.info(f"committed {pushed.commit_url}")
        console.out(pushed.url)
