"""`persona-export merge`: merge a persona's LoRA adapter into the base model."""

from __future__ import annotations

from typing import Annotated

import typer

from persona_export import console
from persona_export.cli._options import (
    ADAPTER_DIR,
    BASE_MODEL,
    MERGED_DIR,
    AdapterDir,
    BaseModel,
    Force,
    MergedDir,
    Persona,
    PersonasFile,
    layout,
)
from persona_export.cli._output import record

EPILOG = "Example: persona-export merge --persona captain_codebeard   (or: make persona=NAME merge)"


def merge(
    persona: Persona,
    base_model_id: BaseModel = BASE_MODEL,
    adapter_dir: AdapterDir = ADAPTER_DIR,
    output_dir_base: MergedDir = MERGED_DIR,
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
    personas_file: PersonasFile = None,
) -> None:
    """Merge trained_adapters/<persona>_final_adapter/ into the base model, writing merged_models/<persona>/.

    Streams the base tensor by tensor (memory stays near one tensor, whatever the model size), gives the weights PEFT's merge_and_unload gives, carries config, generation config, tokenizer files and chat template so that transformers 4.x and 5.x and llama.cpp's converter read the folder, writes a model card (README.md; the persona's display name and system prompt come from the personas files), and skips the work when the output is up to date. Prints the merged folder.
    """
    from persona_export.stages.merge import MergeConfig, run

    config = MergeConfig(
        persona,
        layout=layout(adapter_dir, output_dir_base),
        base_model=base_model_id,
        dtype=dtype,
        revision=revision,
        device=device,
        force=force,
        allow_pickle=allow_pickle,
        personas_file=personas_file,
    )
    result = run(config)
    record(result=result.to_json())
    if result.up_to_date:
        console.info(f"{result.merged_dir} is up to date (use --force to merge again)")
    else:
        console.info(
            f"merged {result.merged_tensors} weights ({result.dtype}, {result.device}) into "
            f"{len(result.shard_files)} shard(s), {result.total_bytes / 1e9:.2f} GB, "
            f"tokenizer from the {result.tokenizer_source}, in {result.seconds:.1f} s"
        )
    console.out(str(result.merged_dir))
