"""Exports whose chat template Ollama >= 0.30 renders through llama-server, end to end on tiny
models (tests/verifykit.py: a tiny Llama on the cl100k vocabulary with another family's
tokens and chat template, steered to end its answers): merge, the pinned converter, the
modelfile stage and every verify check.

* Two real-world chat templates no shipped format recognises (tests/hf_chat_templates.py):
  DeepSeek-R1-Distill (its own turn markers, <think> opened by the generation prompt) and
  Llama 3.2 (tools; today's date, which no Go TEMPLATE can write). The Modelfile has no
  TEMPLATE and stops derived from the tokenizer; verify's llama-server checks prove the GGUF's
  template renders like HF and the model stops.
* Qwen3: a recognised format (ChatML, with tools) whose own template also has thinking, so
  Ollama prefers it over the TEMPLATE; the TEMPLATE still renders like HF (older Ollama,
  OLLAMA_GO_TEMPLATE=1) and tool conversations are checked through llama-server.
"""

from __future__ import annotations

import pytest

from persona_export.ollama.modelfile import Modelfile
from persona_export.stages.verify import FAILED, PASSED, SKIPPED, VerifyConfig
from persona_export.stages.verify import run as run_verify
from tests import hf_chat_templates as hf
from tests.modelkit import LLAMA3_SPECIAL_TOKENS
from tests.verifykit import PERSONA, Project, export_f16, make_llama_project

pytestmark = [pytest.mark.llama, pytest.mark.slow, pytest.mark.go]

DEEPSEEK_TOKENS = (
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
    "<｜tool▁sep｜>",
)
QWEN_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
CASES = {
    "deepseek-r1-distill": dict(
        chat_template=hf.DEEPSEEK_R1_DISTILL,
        added_tokens=DEEPSEEK_TOKENS,
        special={"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
        eos_tokens=("<｜end▁of▁sentence｜>",),
        steer_to="<｜end▁of▁sentence｜>",
    ),
    "llama3.2": dict(
        chat_template=hf.LLAMA32,
        added_tokens=LLAMA3_SPECIAL_TOKENS,
        special={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        eos_tokens=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        steer_to="<|eot_id|>",
    ),
    "qwen3": dict(
        chat_template=hf.QWEN3,
        added_tokens=QWEN_TOKENS,
        special={"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"},
        eos_tokens=("<|im_end|>", "<|endoftext|>"),
        steer_to="<|im_end|>",
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Project]:
    root = tmp_path_factory.mktemp(request.param) / "p"
    project = make_llama_project(root, **CASES[request.param])  # type: ignore[arg-type]
    return request.param, export_f16(project)


def test_modelfile_and_every_verify_check(exported: tuple[str, Project]) -> None:
    case, exported_project = exported
    layout = exported_project.layout
    modelfile = Modelfile.read(layout.modelfile(PERSONA))
    text = layout.modelfile(PERSONA).read_text(encoding="utf-8")
    result = run_verify(VerifyConfig(PERSONA, layout=layout, max_tokens=48))
    statuses = {c.name: c.status for c in result.checks}
    figures = {c.name: c.figures for c in result.checks}
    summaries = {c.name: c.summary for c in result.checks}
    assert result.passed, [c.summary for c in result.checks if c.status == FAILED]
    assert figures["ollama-template"]["path"] == "gguf"
    assert statuses["template-gguf"] == PASSED  # llama-server renders the GGUF's like HF
    assert statuses["tokens"] == PASSED and statuses["generation"] == PASSED
    assert {a["stop_type"] for a in figures["generation"]["answers"]} <= {"eos", "word"}
    if case == "qwen3":
        # recognised (ChatML with tools), but its template also has thinking: Ollama prefers it
        assert modelfile.template is not None and ".ToolCalls" in modelfile.template
        assert statuses["template-modelfile"] == PASSED
        assert figures["ollama-template"]["capabilities"] == ["tools", "thinking", "completion"]
        assert statuses["template-tools"] == PASSED
        assert (
            "the GGUF's template (llama-server) renders 2 tool conversation(s)"
            in (summaries["template-tools"])
        )
        assert modelfile.stops == ("<|im_end|>", "<|endoftext|>", "<|im_start|>")
        return
    assert modelfile.template is None
    assert "# Chat format: the GGUF's own chat template" in text
    assert statuses["template-modelfile"] == SKIPPED
    if case == "deepseek-r1-distill":
        # eos, then the markers its template writes between an answer and the next question
        assert modelfile.stops == ("<｜end▁of▁sentence｜>", "<｜User｜>")
        assert figures["ollama-template"]["capabilities"] == ["tools", "thinking", "completion"]
        # it mentions tool calls (so Ollama lists tools) but renders no tool definitions
        assert statuses["template-tools"] == SKIPPED
    else:
        assert modelfile.stops == (
            "<|end_of_text|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
        )
        assert figures["ollama-template"]["capabilities"] == ["tools", "completion"]
        assert statuses["template-tools"] == PASSED
