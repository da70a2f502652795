"""`persona-export merge`: merge a persona's LoRA adapter into the base model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from persona_export import console
from persona_export.cli._app import app
from persona_export.cli._options import DEFAULTS, AdapterDir, Force, MergedDir, Persona
from persona_export.layout import DEFAULT_BASE_MODEL


def _progress() -> Callable[[int, int], None]:
    """A callback printing progress on stderr every tenth of the way."""
    last = [-1]

    def report(done: int, total: int) -> None:
        if total < 1 << 30:  # small models finish before progress would help
            return
        tenth = done * 10 // max(total, 1)
        if tenth > last[0]:
            last[0] = tenth
            console.info(f"  {tenth * 10:3d}%  {done / 1e9:.2f} / {total / 1e9:.2f} GB")

    return report


@app.command(
    epilog="Example: persona-export merge --persona captain_codebeard   (or: make persona=NAME merge)",
)
def merge(
    persona: Persona,
    base_model_id: Annotated[
        str,
        typer.Option(
            "--base-model-id",
            "--base_model_id",
            help="Base model: a local folder or a Hugging Face hub id (from the local cache "
            "when HF_HUB_OFFLINE=1).",
        ),
    ] = DEFAULT_BASE_MODEL,
    adapter_dir: AdapterDir = DEFAULTS["adapter_dir"],
    output_dir_base: MergedDir = DEFAULTS["merged_dir"],
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="Weight type of the merged model: auto (the base's own), bf16, f16 or f32.",
        ),
    ] = "auto",
    revision: Annotated[
        str | None,
        typer.Option("--revision", help="Branch, tag or commit of a hub base model."),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help="Where the LoRA products are computed: cpu, cuda, or auto (cuda if present).",
        ),
    ] = "auto",
    force: Force = False,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Accept a pickle adapter_model.bin (loaded with torch.load(weights_only=True)); "
            "only for adapters you trust.",
        ),
    ] = False,
) -> None:
    """Merge trained_adapters/<persona>_final_adapter/ into the base model, writing merged_models/<persona>/.

    Streams the base tensor by tensor (memory stays near one tensor, whatever the model size), gives the weights PEFT's merge_and_unload gives, copies config, generation config, tokenizer files and chat template as they are, and skips the work when the output is up to date. Prints the merged folder.
    """
    from persona_export.layout import Layout
    from persona_export.stages.merge import MergeConfig
    from persona_export.stages.merge import merge as run_merge

    layout = Layout(adapter_dir=adapter_dir, merged_base=output_dir_base)
    config = MergeConfig(
        persona=persona,
        layout=layout,
        base_model=base_model_id,
        dtype=dtype,
        revision=revision,
        device=device,
        force=force,
        allow_pickle=allow_pickle,
    )
    result = run_merge(config, progress=_progress())
    if result.skipped:
        console.info(f"{result.merged_dir} is up to date (use --force to merge again)")
    else:
        console.info(
            f"merged {result.merged_tensors} weights ({result.dtype}, {result.device}) into "
            f"{len(result.shard_files)} shard(s), {result.total_bytes / 1e9:.2f} GB, "
            f"tokenizer from the {result.tokenizer_source}, in {result.seconds:.1f} s"
        )
    console.out(str(result.merged_dir))
