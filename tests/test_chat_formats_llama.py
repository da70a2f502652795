"""Proof through llama.cpp: the chat template embedded in the GGUF, rendered by the vendored
llama-server's Jinja engine (POST /apply-template, what Ollama 0.30+ uses when the GGUF's
template mentions tools, as Phi-4-mini's does), gives the same prompt as the Modelfile's
TEMPLATE rendered by Go the way Ollama renders it.

The GGUFs are converted by the gguf stage (the pinned converter) from tiny models: Phi-4-mini
(o200k tokenizer), Llama with a SentencePiece tokenizer (Llama 2 chat format) and with a
cl100k BPE tokenizer (Llama 3 format), and the demo's SmolLM2-135M-Instruct (ChatML with a
default system prompt). For the families without a tiny convertible tokenizer here (Phi-3,
Gemma, Mistral) llama-server renders their real HF templates given with
--chat-template-file over the SentencePiece GGUF (same <s>/</s> tokens).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from persona_export.layout import Layout
from persona_export.stages.modelfile import ModelfileConfig
from persona_export.stages.modelfile import run as write_modelfile
from tests import hf_chat_templates as hf
from tests.ggufkit import project_layout
from tests.gotemplate_runner import GoTemplateRenderer
from tests.llama_server import LlamaServer, apply_template, llama_server
from tests.modelfile_kit import write_personas
from tests.modelfile_parser import ParsedModelfile, parse_modelfile
from tests.test_chat_formats import CONVERSATIONS, SYSTEM

pytestmark = [pytest.mark.llama, pytest.mark.slow, pytest.mark.go]


def _convert(root: Path, persona: str, make_model) -> Layout:  # type: ignore[no-untyped-def]
    from persona_export.stages.gguf import GgufConfig
    from persona_export.stages.gguf import run as run_gguf

    layout = project_layout(root)
    make_model(layout.merged(persona))
    run_gguf(GgufConfig(persona, layout=layout))
    return layout


@pytest.fixture(scope="module")
def llama_spm(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    from tests.modelkit import make_llama

    return _convert(tmp_path_factory.mktemp("spm"), "cap", lambda d: make_llama(d, tokenizer="spm"))


@pytest.fixture(scope="module")
def llama_bpe(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    from tests.modelkit import make_llama

    return _convert(tmp_path_factory.mktemp("bpe"), "cap", lambda d: make_llama(d, tokenizer="bpe"))


def _modelfile(layout: Layout, persona: str, system: str | None, tmp_path: Path) -> ParsedModelfile:
    body = f"system = {json.dumps(system, ensure_ascii=False)}\n" if system is not None else ""
    personas = write_personas(tmp_path / "personas.toml", f"[personas.{persona}]\n{body}")
    result = write_modelfile(
        ModelfileConfig(persona, quant="F16", layout=layout, personas_file=personas)
    )
    return parse_modelfile(result.modelfile.read_text(encoding="utf-8"))


def _compare(
    server: LlamaServer,
    parsed: ParsedModelfile,
    go_template: GoTemplateRenderer,
    *,
    also_bare: bool = False,
) -> None:
    assert parsed.template is not None
    for conversation in CONVERSATIONS:
        go = go_template.render(parsed.template, conversation, parsed.system or "")
        # Ollama prepends the Modelfile SYSTEM as a system message before rendering either way.
        sent = list(conversation)
        if parsed.system:
            sent.insert(0, {"role": "system", "content": parsed.system})
        assert apply_template(server, sent) == go
        if also_bare:  # the GGUF template on its own adds the same default system prompt
            assert apply_template(server, conversation) == go


@pytest.mark.parametrize("system", [SYSTEM, None], ids=["system", "no-system"])
def test_phi4mini_gguf_template_matches(
    tmp_path: Path, phi4mini_project: Path, go_template: GoTemplateRenderer, system: str | None
) -> None:
    from tests.ggufkit import copy_project

    root = copy_project(phi4mini_project, tmp_path / "project")
    layout = project_layout(root)
    parsed = _modelfile(layout, "cap", system, tmp_path)
    assert parsed.stops == ["<|end|>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"]
    with llama_server(layout.gguf("cap", "F16"), tmp_path) as server:
        _compare(server, parsed, go_template)


def test_llama2_spm_gguf_template_matches(
    tmp_path: Path, llama_spm: Layout, go_template: GoTemplateRenderer
) -> None:
    parsed = _modelfile(llama_spm, "cap", SYSTEM, tmp_path)
    assert not parsed.template or not parsed.template.startswith("<s>")  # llama.cpp adds BOS
    with llama_server(llama_spm.gguf("cap", "F16"), tmp_path) as server:
        _compare(server, parsed, go_template)


def test_llama3_bpe_gguf_template_matches(
    tmp_path: Path, llama_bpe: Layout, go_template: GoTemplateRenderer
) -> None:
    parsed = _modelfile(llama_bpe, "cap", SYSTEM, tmp_path)
    # This tokenizer does not add BOS itself, so the TEMPLATE writes it.
    assert parsed.template is not None and parsed.template.startswith("<|begin_of_text|>")
    with llama_server(llama_bpe.gguf("cap", "F16"), tmp_path) as server:
        _compare(server, parsed, go_template)


@pytest.mark.parametrize(
    ("name", "chat_template"),
    [
        ("phi3", hf.PHI3_MINI),
        ("gemma3", hf.GEMMA3),
        ("mistral-v0.3", hf.MISTRAL_V03),
        ("llama3", hf.LLAMA3),
        ("llama2", hf.LLAMA2),
    ],
)
def test_real_family_templates_render_alike_in_llama_cpp(
    tmp_path: Path,
    llama_spm: Layout,
    go_template: GoTemplateRenderer,
    name: str,
    chat_template: str,
) -> None:
    # The SentencePiece GGUF (bos <s>, eos </s>, add_bos) under another family's template:
    # the token texts that template uses besides BOS/EOS are plain text to llama.cpp here.
    root = tmp_path / "project"
    shutil.copytree(llama_spm.gguf_dir("cap"), project_layout(root).gguf_dir("cap"))
    layout = project_layout(root)
    (layout.merged("cap")).mkdir(parents=True)
    for item in llama_spm.merged("cap").iterdir():
        if item.is_file():
            shutil.copy2(item, layout.merged("cap") / item.name)
    config_path = layout.merged("cap") / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = chat_template
    config_path.write_text(json.dumps(config))
    template_file = tmp_path / f"{name}.jinja"
    template_file.write_text(chat_template, encoding="utf-8")
    parsed = _modelfile(layout, "cap", SYSTEM, tmp_path)
    assert parsed.system == SYSTEM
    with llama_server(
        layout.gguf("cap", "F16"), tmp_path, chat_template_file=template_file
    ) as server:
        _compare(server, parsed, go_template)


def test_smollm2_demo_base_default_system(tmp_path: Path, go_template: GoTemplateRenderer) -> None:
    from importlib import metadata

    from persona_export.demo.base_model import PACKAGE, build_demo_base

    try:
        metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:  # optional: only the demo needs it
        pytest.skip(f"the optional package {PACKAGE} (the demo's base model) is not installed")
    base = build_demo_base(tmp_path / "smollm2")  # any failure here is a failure
    layout = _convert(tmp_path / "project", "demo_pirate", lambda d: shutil.copytree(base, d))
    parsed = _modelfile(layout, "demo_pirate", None, tmp_path)
    assert parsed.system == hf.SMOLLM2_DEFAULT_SYSTEM
    assert parsed.stops == ["<|im_end|>", "<|im_start|>"]
    with llama_server(layout.gguf("demo_pirate", "F16"), tmp_path) as server:
        _compare(server, parsed, go_template, also_bare=True)
