"""``quantize --imatrix auto``: an importance matrix made from the persona, no data set needed.

1. The calibration text (:mod:`persona_export.verify.calibration`): the persona's SYSTEM
   prompt and each calibration prompt in its chat format, with the F16's own greedy answer;
   or, with ``--calibration FILE``, the user's text as it is. Written to
   ``gguf_models/<persona>/imatrix/persona-calibration.txt`` with a manifest (F16 and
   tokenizer hashes, the prompts, the system prompt), so it is made once.
2. The matrix: ``llama-imatrix`` on the F16 over that text, written to
   ``gguf_models/<persona>/imatrix/imatrix-<sha256 of the text, 16 digits>.gguf`` with a
   manifest (the F16's and the text's hashes): one matrix per text, kept while the F16 is
   unchanged, and recorded as an input in the manifest of every GGUF quantized with it.

The prompts that judge the quants (the verify prompts, the persona's own and the shipped
held-back list) are never part of the calibration.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from persona_export import console
from persona_export.artifacts import Artifact, record_file, sha256_bytes, sha256_file, work_dir
from persona_export.errors import InputNotFoundError
from persona_export.llamacpp import vendor
from persona_export.stages.quantize import QuantizeConfig

CALIBRATION_STAGE = "imatrix-calibration"
IMATRIX_STAGE = "imatrix"
FORMAT = 1
ANSWER_TOKENS = 96  # per calibration answer: the persona's voice shows in the first sentences
PARALLEL = 4  # answers decoded in one batch (throughput on CPU, where decoding is memory-bound)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def make_imatrix(config: QuantizeConfig, source: Path) -> Path:
    """The importance matrix for ``config`` (see the module docstring), made or found up to
    date; returns its path."""
    text = config.calibration or _persona_calibration(config, source)
    digest = sha256_file(text)[:16]
    path = config.layout.imatrix_dir(config.persona) / f"imatrix-{digest}.gguf"
    artifact = Artifact(
        stage=IMATRIX_STAGE,
        path=path,
        output_name="imatrix",
        options={"format": FORMAT, "llama_cpp_commit": vendor.commit()},
        inputs={"source": source, "calibration": text},
        protected=(config.layout.merged(config.persona),),
    )
    if artifact.fresh(force=config.force):
        console.info(f"importance matrix {path} is up to date")
        return path
    started = time.monotonic()
    log_file = path.with_name(path.name + ".log")
    console.info(f"computing an importance matrix over {text} (log: {log_file})")
    with artifact.write() as writing:
        from persona_export.llamacpp.imatrix import run_imatrix_tool

        ctx = run_imatrix_tool(source, text, writing.tmp, threads=config.threads, log_file=log_file)
        writing.record(
            {k: record_file(v) for k, v in artifact.inputs.items()},
            extra={"persona": config.persona, "ctx": ctx, "calibration_file": str(text)},
        )
    console.info(f"wrote {path} in {time.monotonic() - started:.1f} s")
    return path


def _persona_calibration(config: QuantizeConfig, source: Path) -> Path:
    """The persona's calibration text (made, or found up to date)."""
    from persona_export.personas import find_persona
    from persona_export.verify.calibration import calibration_path, calibration_questions
    from persona_export.verify.data import verify_conversations

    persona, layout = config.persona, config.layout
    merged_dir = layout.merged(persona)
    if not (merged_dir / "config.json").is_file():
        raise InputNotFoundError(
            f"--imatrix auto writes the calibration in the persona's chat format, from the "
            f"merged model's tokenizer, and there is no merged model for {persona} at "
            f"{merged_dir}",
            f"merge first (persona-export merge --persona {persona}), or give your own text "
            "with --calibration FILE",
        )
    measured = [
        turn["content"]
        for conversation in verify_conversations(persona, config.prompts_file, config.personas_file)
        for turn in conversation
    ]
    questions = calibration_questions(measured, limit=config.calibration_limit)
    system = find_persona(persona, user_file=config.personas_file).system
    path = layout.imatrix_dir(persona) / "persona-calibration.txt"
    inputs = {"source": source, "prompts": calibration_path()}
    inputs.update(
        {f"merged/{n}": merged_dir / n for n in _TOKENIZER_FILES if (merged_dir / n).is_file()}
    )
    artifact = Artifact(
        stage=CALIBRATION_STAGE,
        path=path,
        output_name="text",
        options={
            "format": FORMAT,
            "system": system,
            "questions_sha256": sha256_bytes(json.dumps(questions).encode("utf-8")),
            "answer_tokens": ANSWER_TOKENS,
            "llama_cpp_commit": vendor.commit(),
        },
        inputs=inputs,
        protected=(merged_dir,),
    )
    if artifact.fresh(force=config.force):
        return path
    started = time.monotonic()
    console.info(
        f"calibration text: {len(questions)} prompts answered by {source.name} in the "
        f"persona's chat format (at most {ANSWER_TOKENS} tokens each)"
    )
    with artifact.write() as writing, work_dir(path) as scratch:
        from persona_export.verify.calibration import persona_calibration_text

        text = persona_calibration_text(
            merged_dir,
            system,
            questions,
            source,
            answer_tokens=ANSWER_TOKENS,
            log_dir=scratch,
            threads=config.threads,
            parallel=PARALLEL,
        )
        writing.tmp.write_text(text, encoding="utf-8")
        writing.record(
            {k: record_file(v) for k, v in artifact.inputs.items()},
            extra={"persona": persona, "questions": list(questions)},
        )
    console.info(f"wrote {path} in {time.monotonic() - started:.1f} s")
    return path
