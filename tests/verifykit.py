"""Projects for the verify and export tests: a tiny Phi-4-mini-shaped model that behaves
enough like a trained one for every check to mean something, an adapter, and its export.

Random weights give near-uniform next-token distributions (every KL is tiny whatever the
error) and never stop generating. :func:`steer` edits a model folder so that:

* its logits are peaked (the final norm scaled up), like a trained model's;
* one token (``<|end|>`` by default) gets a constant boost, so that greedy generation ends on
  it after a few tokens. The boost goes through a constant component added to every
  embedding row: with tied embeddings that component shifts every logit equally (softmax
  ignores it) except the steered token's, whose row gets extra weight on it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from persona_export.layout import Layout
from tests.ggufkit import project_layout

SYSTEM = "You are Captain Codebeard, a pirate who explains code."
PERSONA = "cap"


def steer(
    model_dir: Path, token: str = "<|end|>", *, sharpen: float = 6.0, boost: float = 2.0
) -> None:
    """Make the model in ``model_dir`` (tied embeddings) peaked and ending on ``token``."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    token_id = AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids(token)
    path = model_dir / "model.safetensors"
    weights = load_file(str(path))
    emb = weights["model.embed_tokens.weight"]
    dtype = emb.dtype
    emb = emb.float()
    emb[:, 0] += 3 * float(emb.std())  # the constant component, on hidden dimension 0
    emb[token_id, 0] += boost
    weights["model.embed_tokens.weight"] = emb.to(dtype)
    norm = weights["model.norm.weight"]
    weights["model.norm.weight"] = (norm.float() * sharpen).to(norm.dtype)
    del emb, norm
    save_file(weights, str(path), metadata={"format": "pt"})


@dataclass(frozen=True)
class Project:
    """A project folder: the base model, the persona file and the stage folders."""

    root: Path
    base: Path
    personas_file: Path

    @property
    def layout(self) -> Layout:
        return project_layout(self.root)


def write_personas(path: Path, persona: str = PERSONA, system: str = SYSTEM) -> Path:
    path.write_text(f'[personas.{persona}]\nsystem = "{system}"\n', encoding="utf-8")
    return path


def make_project(root: Path, *, steer_to: str = "<|end|>", seed: int = 0) -> Project:
    """Base (tiny Phi-4-mini, o200k tokenizer, steered), the adapter of persona ``cap``, and
    a personas file; nothing exported yet."""
    from tests import modelkit as mk

    root.mkdir(parents=True, exist_ok=True)
    base = mk.make_phi4mini(root / "base", seed=seed)
    steer(base, steer_to)
    layout = project_layout(root)
    mk.make_adapter(base, layout.adapter(PERSONA), seed=seed)
    personas = write_personas(root / "personas.toml")
    return Project(root, base, personas)


def export_project(project: Project, persona: str = PERSONA) -> Project:
    """Run merge, gguf, quantize (Q4_K_M, Q8_0) and modelfile (FROM the Q4_K_M) with the
    stages' own entry points (the persona's file gives the merged card its system prompt)."""
    from persona_export.stages.gguf import GgufConfig
    from persona_export.stages.gguf import run as run_gguf
    from persona_export.stages.merge import MergeConfig
    from persona_export.stages.merge import run as merge
    from persona_export.stages.modelfile import ModelfileConfig
    from persona_export.stages.modelfile import run as write_modelfile
    from persona_export.stages.quantize import QuantizeConfig
    from persona_export.stages.quantize import run as run_quantize

    layout = project.layout
    merge(
        MergeConfig(
            persona,
            layout=layout,
            base_model=str(project.base),
            personas_file=project.personas_file,
        )
    )
    run_gguf(GgufConfig(persona, layout=layout))
    run_quantize(QuantizeConfig(persona, layout=layout, quant_types=("Q4_K_M", "Q8_0")))
    write_modelfile(
        ModelfileConfig(persona, quant="Q4_K_M", layout=layout, personas_file=project.personas_file)
    )
    return project


def copy_project(project: Project, root: Path) -> Project:
    """A private copy (real copies, not links: tests rewrite files in place)."""
    shutil.copytree(project.root, root)
    return Project(root, root / "base", root / "personas.toml")


def make_llama_project(
    root: Path,
    *,
    chat_template: str,
    added_tokens: tuple[str, ...],
    special: dict[str, str],
    eos_tokens: tuple[str, ...],
    steer_to: str,
    seed: int = 0,
) -> Project:
    """Base (tiny Llama on the cl100k vocabulary, tied embeddings, steered to end on
    ``steer_to``) carrying another model family's chat template and added tokens, the adapter
    of persona ``cap``, and a personas file; nothing exported yet."""
    from tests import modelkit as mk

    root.mkdir(parents=True, exist_ok=True)
    base = mk.make_llama(
        root / "base",
        tokenizer="bpe",
        tie_word_embeddings=True,
        seed=seed,
        chat_template=chat_template,
        added_tokens=added_tokens,
        special=special,
        eos_tokens=eos_tokens,
    )
    steer(base, steer_to)
    mk.make_adapter(base, project_layout(root).adapter(PERSONA), seed=seed)
    return Project(root, base, write_personas(root / "personas.toml"))


def export_f16(project: Project, persona: str = PERSONA) -> Project:
    """Merge, gguf and a Modelfile FROM the F16 GGUF (no quantization: verify then compares
    PEFT, the merged model and the F16 GGUF, and runs every template and server check)."""
    from persona_export.stages.gguf import GgufConfig
    from persona_export.stages.gguf import run as run_gguf
    from persona_export.stages.merge import MergeConfig
    from persona_export.stages.merge import run as merge
    from persona_export.stages.modelfile import ModelfileConfig
    from persona_export.stages.modelfile import run as write_modelfile

    layout = project.layout
    merge(MergeConfig(persona, layout=layout, base_model=str(project.base)))
    run_gguf(GgufConfig(persona, layout=layout))
    write_modelfile(
        ModelfileConfig(persona, quant="F16", layout=layout, personas_file=project.personas_file)
    )
    return project
