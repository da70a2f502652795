"""What the pinned converter needs from a merged Hugging Face folder, checked before it runs.

:func:`inspect_merged` checks the folder holds config.json, safetensors weights, a tokenizer
and a chat template, and says what to do when it does not. :func:`tokenizer_fix` decides
whether the pinned phi3 converter can read the folder's tokenizer as it is: folders whose
tokenizer was re-saved by transformers 5 (``tokenizer_class: TokenizersBackend``, no
``tokenizer.model``) make it look for a SentencePiece model; for a byte-level BPE tokenizer
:func:`converter_input` hands the converter a shadow folder of links whose
``tokenizer_config.json`` says ``GPT2Tokenizer`` (which makes the phi3 converter take its BPE
path), otherwise the stage stops before converting and says what to copy in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.artifacts import read_json, work_dir
from persona_export.errors import InputNotFoundError, InvalidInputError, UnsupportedError
from persona_export.merge.safetensors_io import read_header

# HF classes the pinned converter handles with conversion/phi.py's Phi3MiniModel.set_vocab,
# which only takes its BPE path when tokenizer_config.json says GPT2Tokenizer.
PHI3_VOCAB_CLASSES = frozenset({"Phi3ForCausalLM", "PhiMoEForCausalLM"})


@dataclass(frozen=True)
class MergedFolder:
    """What the stage needs to know about a merged HF folder before converting it."""

    path: Path
    architecture: str
    num_layers: int | None
    weight_files: tuple[Path, ...]
    tokenizer_class: str | None  # tokenizer_config.json's, None when absent
    has_tokenizer_config: bool
    has_sentencepiece: bool  # tokenizer.model
    has_tokenizer_json: bool
    chat_template: str | None  # the template the converter will embed, when a single string


def inspect_merged(merged_dir: Path, persona: str) -> MergedFolder:
    """Check ``merged_dir`` holds config.json, safetensors weights, a tokenizer and a chat
    template; raise with what to do when it does not."""
    if not merged_dir.is_dir():
        raise InputNotFoundError(
            f"no merged model for persona {persona!r} at {merged_dir}",
            f"run `persona-export merge --persona {persona}` first (or pass --merged-dir)",
        )
    config = read_json(merged_dir / "config.json")
    if config is None:
        raise InvalidInputError(
            f"{merged_dir}/config.json is missing or not valid JSON",
            f"the merged folder is incomplete: run `persona-export merge --persona {persona} "
            "--force`",
        )
    architectures = config.get("architectures") or []
    if not architectures or not isinstance(architectures[0], str):
        raise InvalidInputError(
            f"{merged_dir}/config.json has no 'architectures' entry",
            "the converter picks its model class from it; use a config.json saved by "
            "transformers (e.g. the base model's)",
        )
    weights = tuple(sorted(merged_dir.glob("*.safetensors")))
    if not weights:
        pickles = sorted(p.name for p in merged_dir.glob("*.bin"))
        if pickles:
            raise UnsupportedError(
                f"{merged_dir} holds only pickle weights ({', '.join(pickles[:3])})",
                "pickle files can run code when loaded, so they are not converted; re-save the "
                "model with save_pretrained(..., safe_serialization=True)",
            )
        raise InvalidInputError(
            f"{merged_dir} holds no *.safetensors weights",
            f"run `persona-export merge --persona {persona} --force`",
        )
    index = merged_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = (read_json(index) or {}).get("weight_map", {})
        missing = sorted({str(f) for f in weight_map.values()} - {p.name for p in weights})
        if missing:
            raise InvalidInputError(
                f"{merged_dir} is incomplete: the index names {', '.join(missing[:3])} which "
                "are not there",
                f"run `persona-export merge --persona {persona} --force`",
            )
    tok_config_file = merged_dir / "tokenizer_config.json"
    tok_config = read_json(tok_config_file) if tok_config_file.is_file() else None
    if tok_config_file.is_file() and tok_config is None:
        raise InvalidInputError(
            f"{tok_config_file} is not valid JSON", "copy it from the base model or adapter"
        )
    has_spm = (merged_dir / "tokenizer.model").is_file()
    has_json = (merged_dir / "tokenizer.json").is_file()
    if not (has_spm or has_json or (merged_dir / "vocab.json").is_file()):
        raise InvalidInputError(
            f"{merged_dir} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json)",
            "copy the tokenizer files of the base model (or the adapter's, if it added "
            "tokens) into the merged folder byte for byte",
        )
    template = _chat_template(merged_dir, tok_config or {})
    if template is None:
        raise InvalidInputError(
            f"{merged_dir} has no chat template (none in tokenizer_config.json, no "
            "chat_template.jinja or chat_template.json)",
            "a GGUF without a template makes Ollama fall back to a raw prompt; copy "
            "chat_template.jinja (or tokenizer_config.json) from the base model",
        )
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    tok_class = (tok_config or {}).get("tokenizer_class")
    return MergedFolder(
        path=merged_dir,
        architecture=architectures[0],
        num_layers=layers if isinstance(layers, int) else None,
        weight_files=weights,
        tokenizer_class=tok_class if isinstance(tok_class, str) else None,
        has_tokenizer_config=tok_config is not None,
        has_sentencepiece=has_spm,
        has_tokenizer_json=has_json,
        chat_template=template if isinstance(template, str) else None,
    )


def _chat_template(folder: Path, tok_config: dict[str, Any]) -> str | list[Any] | None:
    """The template gguf-py's SpecialVocab embeds: tokenizer_config.json's, else
    chat_template.jinja, else chat_template.json's."""
    inline = tok_config.get("chat_template")
    if isinstance(inline, (str, list)) and inline:
        return inline
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        text = jinja.read_text(encoding="utf-8")
        return text or None
    data = read_json(folder / "chat_template.json")
    value = (data or {}).get("chat_template")
    return value if isinstance(value, (str, list)) and value else None


def resolve_auto_outtype(weight_files: tuple[Path, ...]) -> str:
    """What the converter's ``--outtype auto`` picks: the first 2-D+ bf16/f16 tensor's type
    (shards in name order), else f16. Read from the safetensors headers, no weights loaded."""
    for path in weight_files:
        infos, _ = read_header(path)
        for name in sorted(infos):
            info = infos[name]
            if len(info.shape) < 2:
                continue
            if info.dtype == "BF16":
                return "bf16"
            if info.dtype == "F16":
                return "f16"
    return "f16"


def _is_byte_level_bpe(tokenizer_json: Path) -> bool:
    data = read_json(tokenizer_json) or {}
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        return False
    parts = json.dumps([data.get("pre_tokenizer"), data.get("decoder")])
    return '"ByteLevel"' in parts


@dataclass(frozen=True)
class TokenizerFix:
    """The tokenizer_class a shadow folder declares so the pinned converter can read it."""

    tokenizer_class: str
    was: str | None  # the folder's own tokenizer_class (None: none)

    @property
    def note(self) -> str:
        """What changed, for the manifest and the result."""
        said = f"tokenizer_class {self.was!r}" if self.was else "no tokenizer_class"
        return f"tokenizer_config.json: {said} -> {self.tokenizer_class!r}"


def tokenizer_fix(source: MergedFolder) -> TokenizerFix | None:
    """What must change for the pinned converter to read ``source``'s tokenizer (None:
    nothing); raises, before anything is converted, when no change would do.

    Only the phi3 vocabulary path needs help: it reads ``tokenizer_config.json``'s
    ``tokenizer_class`` (a missing key is a KeyError) and, unless it is GPT2Tokenizer,
    requires a SentencePiece tokenizer.model.
    """
    cls = source.tokenizer_class
    if source.architecture not in PHI3_VOCAB_CLASSES or cls == "GPT2Tokenizer":
        return None
    said = f"tokenizer_class {cls!r}" if cls else "no tokenizer_class"
    if source.has_sentencepiece:
        if cls is None and source.has_tokenizer_config:
            return TokenizerFix("LlamaTokenizer", None)
        return None
    merged_dir = source.path
    if not (source.has_tokenizer_json and _is_byte_level_bpe(merged_dir / "tokenizer.json")):
        raise InvalidInputError(
            f"{merged_dir}/tokenizer_config.json says {said} and there is no tokenizer.model: "
            "the pinned llama.cpp phi3 converter needs either a SentencePiece tokenizer.model "
            "or a byte-level BPE tokenizer declared as GPT2Tokenizer",
            f"copy the base model's tokenizer files (tokenizer.model for Phi-3, or "
            f"tokenizer.json + tokenizer_config.json for Phi-4-mini) into {merged_dir} byte for "
            "byte, then run the gguf stage again",
        )
    return TokenizerFix("GPT2Tokenizer", cls)


@contextmanager
def converter_input(source: MergedFolder, fix: TokenizerFix | None, beside: Path) -> Iterator[Path]:
    """The folder to hand the converter: the merged folder itself, or with ``fix`` a shadow
    folder of links to it whose tokenizer_config.json declares ``fix.tokenizer_class``,
    made in a scratch folder beside ``beside`` (the output) and removed afterwards."""
    merged_dir = source.path
    if fix is None:
        yield merged_dir
        return
    with work_dir(beside) as scratch:
        # same folder name as the original: the converter derives general.* fields from it
        shadow = scratch / merged_dir.name
        shadow.mkdir()
        for item in merged_dir.iterdir():
            if item.name != "tokenizer_config.json":
                (shadow / item.name).symlink_to(item.resolve())
        tok_config = read_json(merged_dir / "tokenizer_config.json") or {}
        tok_config["tokenizer_class"] = fix.tokenizer_class
        (shadow / "tokenizer_config.json").write_text(
            json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        yield shadow
