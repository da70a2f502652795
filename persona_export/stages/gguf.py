"""The gguf stage: merged HF folder -> ``gguf_models/<persona>/<persona>-F16.gguf``.

Runs the vendored ``convert_hf_to_gguf.py`` (this Python, the vendored gguf-py) on
``merged_models/<persona>/``, with the persona as ``general.name``. The converter writes a
temporary sibling that is read back and checked (architecture, file type, tokenizer, chat
template, vocabulary against the embedding, every block present) before it is renamed into
place; a manifest beside it records the input files' hashes, the llama.cpp commit, the
options and the output's hash. Inputs and output are hashed while the converter runs. The
converter runs through a launcher that replaces its single-core numpy float32 -> float16 cast
by torch's, bit for bit the same (llamacpp/convert_launcher.py; about 12 s of 41 s on a 3.8 B
model); PERSONA_EXPORT_PLAIN_CONVERTER=1 runs it as it is.

Folders whose tokenizer was re-saved by transformers 5 (``tokenizer_class:
TokenizersBackend``, no ``tokenizer.model``) make the pinned phi3 converter look for a
SentencePiece model. When the tokenizer is a byte-level BPE the stage converts through a
shadow folder of symlinks whose ``tokenizer_config.json`` says ``GPT2Tokenizer`` (what makes
the phi3 converter take its BPE path); otherwise it stops before converting and says what to
copy in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export import console
from persona_export.artifacts import (
    DIR_MANIFEST,
    FileRecord,
    Manifest,
    atomic_file,
    is_fresh,
    manifest_path_for,
    read_json,
    write_json_atomic,
)
from persona_export.artifacts.hashing import (
    BackgroundRecords,
    TailHasher,
    known_records,
    list_files,
    pid_alive,
    remove_stale_partials,
)
from persona_export.errors import (
    ExternalToolError,
    InputNotFoundError,
    InvalidInputError,
    UnsupportedError,
    UsageError,
)
from persona_export.layout import Layout, check_persona
from persona_export.llamacpp import vendor
from persona_export.llamacpp.convert_launcher import PLAIN_ENV
from persona_export.llamacpp.gguf_check import Expectation, check_gguf
from persona_export.llamacpp.gguf_file import FILE_TYPE_IDS
from persona_export.proc import run

OUTTYPES = ("f16", "bf16", "f32", "q8_0", "auto")
STAGE = "gguf"

# general.architecture the converter writes for common HF classes; others are not checked
# by name (the structural checks still run).
KNOWN_ARCHITECTURES = {
    "Phi3ForCausalLM": "phi3",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "GPT2LMHeadModel": "gpt2",
}
# HF classes the pinned converter handles with conversion/phi.py's Phi3MiniModel.set_vocab,
# which only takes its BPE path when tokenizer_config.json says GPT2Tokenizer.
PHI3_VOCAB_CLASSES = frozenset({"Phi3ForCausalLM", "PhiMoEForCausalLM"})
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


@dataclass(frozen=True)
class GgufConfig:
    """What to convert: ``persona``'s merged folder under ``layout`` to ``outtype``."""

    persona: str
    layout: Layout = Layout()
    outtype: str = "f16"  # f16 | bf16 | f32 | q8_0 | auto (the weights' 16-bit type)
    force: bool = False


@dataclass(frozen=True)
class GgufResult:
    """The GGUF written (or found up to date) and its figures."""

    persona: str
    gguf_path: Path
    manifest_path: Path
    file_type: str  # F16, BF16, F32 or Q8_0
    architecture: str
    size_bytes: int
    n_weights: int
    bits_per_weight: float
    tensor_count: int
    seconds: float
    skipped: bool
    warnings: tuple[str, ...] = ()
    tokenizer_fix: str | None = None  # what a shadow folder changed, when one was used


def run_gguf(config: GgufConfig) -> GgufResult:
    """Convert the merged model of ``config.persona`` to GGUF (or skip it when up to date).

    Raises InputNotFoundError (no merged model), InvalidInputError/UnsupportedError (a folder
    the pinned converter cannot take, said before converting when possible),
    ToolMissingError (no vendored llama.cpp), ExternalToolError (the converter failed) or
    VerificationError (its output failed the checks; nothing is left in place).
    """
    started = time.monotonic()
    persona = check_persona(config.persona)
    outtype = config.outtype.lower()
    if outtype not in OUTTYPES:
        raise UsageError(
            f"unknown --outtype {config.outtype!r}", f"use one of: {', '.join(OUTTYPES)}"
        )
    merged_dir = config.layout.merged(persona)
    source = inspect_merged(merged_dir, persona)
    if outtype == "auto":
        outtype = resolve_auto_outtype(source.weight_files)
    file_type = outtype.upper()
    final = config.layout.gguf(persona, file_type)
    manifest_file = manifest_path_for(final)
    inputs = list_files(merged_dir)
    options = {"outtype": outtype, "model_name": persona, "llama_cpp_commit": vendor.commit()}
    if not config.force and is_fresh(
        manifest_file, options=options, inputs=inputs, outputs={"gguf": final}
    ):
        return _result_from_manifest(persona, final, manifest_file, started)

    script = vendor.converter_script()
    launcher = use_launcher()
    fix = tokenizer_fix(source)
    remove_stale_partials(final.parent, final.name)
    log_file = final.with_name(final.name + ".log")
    known = {
        **known_records(merged_dir / DIR_MANIFEST, "outputs", merged_dir),
        **known_records(manifest_file, "inputs"),
    }
    warnings: list[str] = []
    console.info(
        f"converting {merged_dir} to {file_type} GGUF with llama.cpp {vendor.commit()} "
        f"(log: {log_file})"
    )
    with _converter_input(source, fix, final.parent) as convert_dir:
        hashing = BackgroundRecords(inputs, known)
        try:
            with atomic_file(final) as tmp:
                output_record = _convert(
                    script,
                    launcher,
                    convert_dir,
                    tmp,
                    outtype,
                    persona,
                    log_file,
                    warnings,
                    merged_dir,
                )
                summary = check_gguf(
                    tmp,
                    Expectation(
                        architecture=KNOWN_ARCHITECTURES.get(source.architecture),
                        file_type=FILE_TYPE_IDS[file_type],
                        name=persona,
                        chat_template=source.chat_template,
                        block_count=source.num_layers
                        if source.architecture in KNOWN_ARCHITECTURES
                        else None,
                    ),
                    what=f"the converter's output for {merged_dir}",
                )
        except BaseException:
            hashing.cancel()
            raise
        input_records = hashing.result()
    output_record = FileRecord(output_record.sha256, output_record.size, final.stat().st_mtime_ns)
    seconds = time.monotonic() - started
    extra = {
        "persona": persona,
        "llama_cpp_commit": vendor.commit(),
        "source_dir": str(merged_dir),
        "architecture": summary.architecture,
        "file_type": file_type,
        "tensor_count": summary.tensor_count,
        "n_weights": summary.n_weights,
        "bits_per_weight": round(summary.bits_per_weight, 4),
        "tokenizer_fix": fix.note if fix else None,
        "converter_launcher": launcher,
        "warnings": warnings,
    }
    manifest = Manifest(STAGE, options, input_records, {"gguf": output_record}, seconds, extra)
    write_json_atomic(manifest_file, manifest.to_json())
    console.info(f"wrote {final} in {seconds:.1f} s")
    return GgufResult(
        persona=persona,
        gguf_path=final,
        manifest_path=manifest_file,
        file_type=file_type,
        architecture=summary.architecture or "",
        size_bytes=output_record.size,
        n_weights=summary.n_weights,
        bits_per_weight=summary.bits_per_weight,
        tensor_count=summary.tensor_count,
        seconds=seconds,
        skipped=False,
        warnings=tuple(warnings),
        tokenizer_fix=fix.note if fix else None,
    )


def use_launcher() -> bool:
    """Whether the converter runs through the launcher that gives it a faster,
    byte-identical F16 cast (llamacpp/convert_launcher.py): unless
    PERSONA_EXPORT_PLAIN_CONVERTER is set."""
    return os.environ.get(PLAIN_ENV, "") in ("", "0")


def converter_env() -> dict[str, str]:
    """The vendored gguf-py first on the path, and torch's allocator on transparent huge
    pages (THP_MEM_ALLOC_ENABLE, unless the caller set it): the converter allocates every
    tensor afresh in float32, and 4 KiB pages cost 3.7 M page faults and about 10 s of
    system time on the 3.8 B model (0.3 M with huge pages; the file is the same)."""
    env = vendor.converter_env()
    if "THP_MEM_ALLOC_ENABLE" not in os.environ:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    return env


def _convert(
    script: Path,
    launcher: bool,
    convert_dir: Path,
    tmp: Path,
    outtype: str,
    persona: str,
    log_file: Path,
    warnings: list[str],
    merged_dir: Path,
) -> FileRecord:
    """Run the converter into ``tmp``, hashing the output as it is written."""
    tail = TailHasher(tmp)
    try:
        argv: list[str | Path] = [sys.executable]
        if launcher:
            argv += ["-m", "persona_export.llamacpp.convert_launcher"]
        argv += [script, convert_dir]
        argv += ["--outfile", tmp, "--outtype", outtype, "--model-name", persona]
        done = run(
            argv,
            what="convert_hf_to_gguf.py",
            env=converter_env(),
            log_path=log_file,
            on_line=_converter_lines(warnings),
            check=False,
        )
        if done.returncode != 0:
            raise explain_failure(done.output, done.returncode, merged_dir, log_file)
        if not tmp.is_file():
            raise ExternalToolError(
                f"convert_hf_to_gguf.py exited 0 but wrote no {tmp.name} (log: {log_file})",
                "rerun with PERSONA_EXPORT_DEBUG=1 and report the log",
            )
    except BaseException:
        tail.stop()
        raise
    return tail.finish()


def _result_from_manifest(
    persona: str, final: Path, manifest_file: Path, started: float
) -> GgufResult:
    data = read_json(manifest_file) or {}
    return GgufResult(
        persona=persona,
        gguf_path=final,
        manifest_path=manifest_file,
        file_type=str(data.get("file_type", "")),
        architecture=str(data.get("architecture", "")),
        size_bytes=int(data["outputs"]["gguf"]["size"]),
        n_weights=int(data.get("n_weights", 0)),
        bits_per_weight=float(data.get("bits_per_weight", 0.0)),
        tensor_count=int(data.get("tensor_count", 0)),
        seconds=time.monotonic() - started,
        skipped=True,
        tokenizer_fix=data.get("tokenizer_fix"),
    )


# --------------------------------------------------------------------------------------
# The input folder
# --------------------------------------------------------------------------------------


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
        header = _safetensors_header(path)
        for name in sorted(header):
            entry = header[name]
            if name == "__metadata__" or not isinstance(entry, dict):
                continue
            if len(entry.get("shape", [])) < 2:
                continue
            if entry.get("dtype") == "BF16":
                return "bf16"
            if entry.get("dtype") == "F16":
                return "f16"
    return "f16"


def _safetensors_header(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100_000_000:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(fh.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise InvalidInputError(
            f"{path} is not a readable safetensors file ({exc})",
            "the merged folder is damaged: run the merge stage again with --force",
        ) from exc
    if not isinstance(header, dict):
        raise InvalidInputError(f"{path}: bad safetensors header", "run the merge again")
    return header


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
            return TokenizerFix(
                "LlamaTokenizer", f"tokenizer_config.json: {said} -> 'LlamaTokenizer'"
            )
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
def _converter_input(
    source: MergedFolder, fix: TokenizerFix | None, scratch_parent: Path
) -> Iterator[Path]:
    """The folder to hand the converter: the merged folder itself, or with ``fix`` a shadow
    folder of symlinks to it whose tokenizer_config.json declares ``fix.tokenizer_class``."""
    merged_dir = source.path
    if fix is None:
        yield merged_dir
        return
    console.info(
        f"{merged_dir}/tokenizer_config.json says tokenizer_class {fix.was!r} (e.g. a "
        f"transformers 5 re-save); converting through a shadow folder that declares "
        f"{fix.tokenizer_class}, which the pinned phi3 converter needs to read this tokenizer"
    )
    scratch_parent.mkdir(parents=True, exist_ok=True)
    remove_stale_shadows(scratch_parent)
    scratch = Path(tempfile.mkdtemp(prefix=f".tokfix-{os.getpid()}-", dir=scratch_parent))
    # same folder name as the original: the converter derives general.* fields from it
    shadow = scratch / merged_dir.name
    try:
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
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def remove_stale_shadows(folder: Path) -> None:
    """Remove shadow folders (symlinks only) left by runs that are no longer alive."""
    for leftover in folder.glob(".tokfix-*"):
        pid = leftover.name.split("-")[1]
        in_use = pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid))
        if leftover.is_dir() and not in_use:
            shutil.rmtree(leftover, ignore_errors=True)


# --------------------------------------------------------------------------------------
# The converter's output
# --------------------------------------------------------------------------------------

_WARNING_RE = re.compile(r"^WARNING:[\w.-]+:(.*)$")
_PROGRESS_RE = re.compile(r"^Writing:\s+(\d+)%")


def _converter_lines(warnings: list[str]) -> Callable[[str], None]:
    """Turn the converter's stream into warnings and 10 % progress steps."""
    state = {"decile": -1}

    def on_line(line: str) -> None:
        if m := _PROGRESS_RE.match(line):
            decile = int(m.group(1)) // 10
            if decile > state["decile"]:
                state["decile"] = decile
                console.info(f"  writing {decile * 10}%")
            return
        if m := _WARNING_RE.match(line):
            text = m.group(1).strip()
            # the banner of an unrecognised pre-tokenizer is explained by the error instead
            if text and not text.startswith("**"):
                warnings.append(text)
                console.warn(f"converter: {text}")

    return on_line


def _relevant_tail(output: str, lines: int = 15) -> str:
    kept = [
        line
        for line in output.splitlines()
        if line.strip() and not _PROGRESS_RE.match(line) and "**" not in line
    ]
    return "\n".join(kept[-lines:])


def explain_failure(
    output: str, returncode: int, merged_dir: Path, log_file: Path
) -> ExternalToolError | InvalidInputError:
    """The error for a failed conversion: known causes explained, others with the log's
    relevant lines."""
    tail = _relevant_tail(output)
    if "BPE pre-tokenizer was not recognized" in output:
        m = re.search(r"chkhsh:\s+([0-9a-f]{64})", output)
        chkhsh = m.group(1) if m else "unknown"
        return UnsupportedError(
            f"the pinned llama.cpp converter does not recognise the BPE pre-tokenizer of "
            f"{merged_dir}/tokenizer.json ({describe_tokenizer(merged_dir)}; chkhsh {chkhsh})",
            "use the base model's tokenizer files unchanged (a tokenizer the pinned converter "
            "knows, e.g. Phi-4-mini's gpt-4o), or pin a newer llama.cpp in "
            "vendor/llama.cpp.lock.toml whose convert_hf_to_gguf.py lists this chkhsh",
        )
    if m := re.search(r"Model (\S+) is not supported", output):
        return UnsupportedError(
            f"the pinned llama.cpp converter does not support the architecture {m.group(1)}",
            "list what it supports with `python vendor/llama.cpp/convert_hf_to_gguf.py "
            "--print-supported-models`, or pin a newer llama.cpp",
        )
    if m := re.search(r"Can not map tensor '([^']+)'", output):
        lora = "lora_" in m.group(1)
        return InvalidInputError(
            f"{merged_dir} holds a tensor the converter cannot map: {m.group(1)}",
            "the adapter was not merged into the weights: run the merge stage again with --force"
            if lora
            else "the checkpoint has tensors this architecture does not have; check config.json",
        )
    if "rope long and short factors must be" in output:
        return InvalidInputError(
            f"{merged_dir}/config.json: the LongRoPE factor lists do not match the rotary "
            "dimensions (partial_rotary_factor x hidden_size / heads / 2)",
            "use the base model's config.json unchanged",
        )
    if returncode in (-9, 137):
        return ExternalToolError(
            f"convert_hf_to_gguf.py was killed (out of memory?) (log: {log_file})",
            "free memory or close other programs and run again",
        )
    return ExternalToolError(
        f"convert_hf_to_gguf.py failed with exit code {returncode} (log: {log_file}):\n{tail}",
        "see the log; if the folder converts by hand with the same converter, report a bug",
    )


def describe_tokenizer(folder: Path) -> str:
    """One phrase naming a tokenizer folder's type: class, model, size, pre-tokenizer."""
    tok_config = read_json(folder / "tokenizer_config.json") or {}
    data = read_json(folder / "tokenizer.json") or {}
    model = data.get("model") or {}
    pre = data.get("pre_tokenizer") or {}
    kinds = [p.get("type") for p in pre.get("pretokenizers", [pre]) if isinstance(p, dict)]
    vocab = model.get("vocab")
    size = len(vocab) if isinstance(vocab, dict) else "?"
    return (
        f"{tok_config.get('tokenizer_class', 'no tokenizer_class')}, {model.get('type', '?')} "
        f"with {size} tokens, pre-tokenizer {'+'.join(str(k) for k in kinds) or 'none'}"
    )
