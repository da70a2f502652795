"""Helpers for the modelfile / ollama tests: tokenizer folders per chat format, small GGUFs
that carry only the metadata the modelfile stage reads, and project folders."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from persona_export.layout import Layout
from tests import hf_chat_templates as hf
from tests.ggufkit import project_layout
from tests.modelkit import PHI4MINI_ADDED_TOKENS, small_bpe_tokenizer_files


@dataclass(frozen=True)
class TokenizerKind:
    """A tokenizer family: its added tokens, special tokens and which of them end a turn."""

    added: tuple[tuple[str, bool], ...]
    special: dict[str, str]
    eos: tuple[str, ...]  # generation_config.json's eos_token_id, in order
    add_bos: bool
    tokenizer_class: str = "PreTrainedTokenizerFast"


PHI = TokenizerKind(
    added=tuple((c, s) for c, _, s in PHI4MINI_ADDED_TOKENS),
    special={k: "<|endoftext|>" for k in ("bos_token", "eos_token", "pad_token", "unk_token")},
    eos=("<|end|>", "<|endoftext|>"),
    add_bos=False,
    tokenizer_class="GPT2Tokenizer",
)
PHI3 = TokenizerKind(
    added=(
        ("<unk>", True),
        ("<s>", True),
        ("</s>", True),
        ("<|endoftext|>", True),
        ("<|assistant|>", True),
        ("<|end|>", True),
        ("<|user|>", True),
        ("<|system|>", True),
    ),
    special={"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"},
    eos=("<|endoftext|>", "<|end|>"),
    add_bos=False,
)
CHATML = TokenizerKind(
    added=(("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True)),
    special={"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"},
    eos=("<|im_end|>",),
    add_bos=False,
)
LLAMA3 = TokenizerKind(
    added=tuple(
        (t, True)
        for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>")
        + ("<|end_header_id|>", "<|eom_id|>", "<|eot_id|>")
    ),
    special={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
    add_bos=True,
)
GEMMA = TokenizerKind(
    added=(
        ("<pad>", True),
        ("<eos>", True),
        ("<bos>", True),
        ("<unk>", True),
        ("<start_of_turn>", True),
        ("<end_of_turn>", True),
    ),
    special={
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    },
    eos=("<eos>", "<end_of_turn>"),
    add_bos=True,
)
MISTRAL = TokenizerKind(
    added=(("<unk>", True), ("<s>", True), ("</s>", True), ("[INST]", True), ("[/INST]", True)),
    special={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    eos=("</s>",),
    add_bos=True,
)
LLAMA2 = TokenizerKind(
    added=(("<unk>", True), ("<s>", True), ("</s>", True)),
    special={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    eos=("</s>",),
    add_bos=True,
)

#: (case name, HF chat template, tokenizer kind, expected format) for every shipped format.
FORMAT_CASES: tuple[tuple[str, str, TokenizerKind, str], ...] = (
    ("phi4mini", hf.PHI4MINI, PHI, "phi4mini"),
    ("phi3-mini", hf.PHI3_MINI, PHI3, "phi3"),
    ("phi3.5-mini", hf.PHI35_MINI, PHI3, "phi3"),
    ("chatml", hf.CHATML, CHATML, "chatml"),
    ("smollm2", hf.SMOLLM2, CHATML, "chatml"),
    ("llama3", hf.LLAMA3, LLAMA3, "llama3"),
    ("gemma2", hf.GEMMA2, GEMMA, "gemma"),
    ("gemma3", hf.GEMMA3, GEMMA, "gemma"),
    ("mistral-v0.3", hf.MISTRAL_V03, MISTRAL, "mistral"),
    ("llama2", hf.LLAMA2, LLAMA2, "llama2"),
)


def tokenizer_folder(out_dir: Path, chat_template: str | None, kind: TokenizerKind) -> Path:
    """A tokenizer-only HF folder (small trained BPE + the kind's added tokens) with
    generation_config.json naming the kind's end-of-turn tokens."""
    small_bpe_tokenizer_files(
        out_dir,
        added_tokens=kind.added,
        special=kind.special,
        chat_template=chat_template or "",
        tokenizer_class=kind.tokenizer_class,
        add_bos_token=kind.add_bos,
    )
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if chat_template is None:
        config.pop("chat_template", None)
    config["add_bos_token"] = kind.add_bos
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    ids = {
        t["content"]: t["id"]
        for t in json.loads((out_dir / "tokenizer.json").read_text())["added_tokens"]
    }
    generation = {"eos_token_id": [ids[t] for t in kind.eos]}
    (out_dir / "generation_config.json").write_text(json.dumps(generation) + "\n")
    return out_dir


def write_stub_gguf(
    path: Path,
    *,
    add_bos: bool | None,
    chat_template: str | None = None,
    tokens: list[str] | None = None,
    bos: str | None = None,
    eos: str | None = None,
    control: tuple[str, ...] = (),
) -> Path:
    """A GGUF with tokenizer metadata only (no tensors): enough for the modelfile stage,
    which reads add_bos_token and, without a merged folder, the chat template and tokens
    (those in ``control`` typed CONTROL, the others NORMAL)."""
    from gguf import GGUFWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(path, "llama")
    writer.add_name(path.stem)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    if tokens is not None:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(tokens)
        writer.add_token_types([3 if t in control else 1 for t in tokens])
        if bos is not None:
            writer.add_bos_token_id(tokens.index(bos))
        if eos is not None:
            writer.add_eos_token_id(tokens.index(eos))
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def layout_args(layout: Layout) -> list[str]:
    """The CLI options that point a command at ``layout``."""
    return [
        "--adapter-dir",
        str(layout.adapter_dir),
        "--output-dir-base",
        str(layout.merged_base),
        "--gguf-dir",
        str(layout.gguf_base),
    ]


def make_persona_project(
    root: Path,
    persona: str,
    chat_template: str | None,
    kind: TokenizerKind,
    *,
    quant: str = "Q4_K_M",
    gguf_add_bos: bool | None = None,
) -> Layout:
    """merged_models/<persona>/ (tokenizer files) and gguf_models/<persona>/<persona>-<quant>
    .gguf (a stub whose add_bos_token follows the tokenizer unless ``gguf_add_bos`` says)."""
    layout = project_layout(root)
    tokenizer_folder(layout.merged(persona), chat_template, kind)
    write_stub_gguf(
        layout.gguf(persona, quant), add_bos=kind.add_bos if gguf_add_bos is None else gguf_add_bos
    )
    return layout


def write_personas(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
