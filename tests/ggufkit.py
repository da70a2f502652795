"""Helpers for the gguf and quantize tests: test project folders laid out like a real one."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from persona_export.layout import Layout

TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_gguf(
    path: Path,
    *,
    vocab: int = 300,
    embd_rows: int | None = None,
    blocks: int = 2,
    written_blocks: int | None = None,
    chat_template: str | None = TEMPLATE,
    file_type: int = 1,  # MOSTLY_F16
    name: str = "cap",
    arch: str = "llama",
    with_tokenizer: bool = True,
) -> Path:
    """A small GGUF shaped like the converter's output for a 2-block llama."""
    writer = GGUFWriter(path, arch)
    writer.add_name(name)
    writer.add_block_count(blocks)
    writer.add_file_type(file_type)
    writer.add_custom_alignment(64)
    if with_tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list([f"tok{i}" for i in range(vocab)])
        writer.add_token_types([1] * vocab)
        writer.add_token_merges([f"t o{i}" for i in range(vocab // 2)])
        writer.add_eos_token_id(vocab - 1)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.add_array("test.small_array", [1, 2, 3])
    rng = np.random.default_rng(0)
    writer.add_tensor(
        "token_embd.weight", rng.standard_normal((embd_rows or vocab, 16)).astype(np.float16)
    )
    for b in range(blocks if written_blocks is None else written_blocks):
        writer.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(16, dtype=np.float32))
        writer.add_tensor(
            f"blk.{b}.attn_q.weight", rng.standard_normal((16, 16)).astype(np.float16)
        )
    writer.add_tensor("output_norm.weight", np.ones(16, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def project_layout(root: Path) -> Layout:
    """The Layout of a test project folder (absolute paths, so the cwd does not matter)."""
    return Layout(
        adapter_dir=root / "trained_adapters",
        merged_base=root / "merged_models",
        gguf_base=root / "gguf_models",
    )


def dir_args(root: Path) -> list[str]:
    """The CLI options that point a command at ``root``'s folders."""
    return ["--merged-dir", str(root / "merged_models"), "--gguf-dir", str(root / "gguf_models")]


def copy_merged(model_dir: Path, root: Path, persona: str) -> Path:
    """Copy a model folder to ``root/merged_models/<persona>/`` (as the merge stage leaves
    it) and return that folder."""
    dest = root / "merged_models" / persona
    shutil.copytree(model_dir, dest)
    return dest


def copy_project(src_root: Path, dest_root: Path) -> Path:
    """Copy a whole test project (merged models and GGUFs, mtimes kept) and return it."""
    shutil.copytree(src_root, dest_root, dirs_exist_ok=True)
    return dest_root


def leftovers(folder: Path) -> list[str]:
    """Temporary files a stage may have left in ``folder`` (partials, shadow folders)."""
    return (
        sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        if folder.is_dir()
        else []
    )


def make_fake_merged(
    root: Path,
    persona: str = "cap",
    *,
    architecture: str = "LlamaForCausalLM",
    tokenizer_config: dict[str, object] | None = None,
    tokenizer_json: dict[str, object] | None = None,
    weights: str = "safetensors",
) -> Path:
    """A small merged folder that passes the gguf stage's input checks without being a
    loadable model: for tests that stop before the converter or use a fake one."""
    folder = root / "merged_models" / persona
    folder.mkdir(parents=True)
    config = {"architectures": [architecture], "model_type": "llama", "num_hidden_layers": 2}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if weights == "safetensors":
        from safetensors.numpy import save_file

        save_file(
            {"model.embed_tokens.weight": np.zeros((4, 4), np.float16)},
            str(folder / "model.safetensors"),
        )
    elif weights == "bin":
        (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": TEMPLATE}
    if tokenizer_config is not None:
        tok_config = tokenizer_config
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config), encoding="utf-8")
    tok_json = tokenizer_json or {
        "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
        "pre_tokenizer": {"type": "ByteLevel"},
        "decoder": {"type": "ByteLevel"},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tok_json), encoding="utf-8")
    return folder


def fake_converter(
    folder: Path, gguf_to_write: Path | None, *, exit_code: int = 0, lines: tuple[str, ...] = ()
) -> Path:
    """A stand-in for convert_hf_to_gguf.py: prints ``lines``, copies ``gguf_to_write`` to
    --outfile (unless None) and exits with ``exit_code``. It records what it was given in
    ``folder/seen.json``: argv, the input's tokenizer_config.json and which files are links."""
    script = folder / "fake_convert.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os, shutil, sys
            args = sys.argv[1:]
            src = args[0]
            with open(os.path.join(src, "tokenizer_config.json")) as fh:
                tok_config = json.load(fh)
            links = sorted(n for n in os.listdir(src) if os.path.islink(os.path.join(src, n)))
            seen = {{"argv": args, "tokenizer_config": tok_config, "symlinks": links}}
            with open({str(folder / "seen.json")!r}, "w") as fh:
                json.dump(seen, fh)
            for line in {list(lines)!r}:
                print(line, flush=True)
            source = {str(gguf_to_write) if gguf_to_write else None!r}
            if source:
                shutil.copyfile(source, args[args.index("--outfile") + 1])
            sys.exit({exit_code})
            """
        ),
        encoding="utf-8",
    )
    return script


def fake_quantize(
    folder: Path, real_tool: Path, *, exit_code: int = 0, lines: tuple[str, ...] = ()
) -> Path:
    """A stand-in for llama-quantize: ``--help`` runs the real one (so the type list is
    real); otherwise it prints ``lines``, copies the input to the output unchanged (a wrong
    file: still F16) unless it fails, and exits with ``exit_code``."""
    script = folder / "fake-llama-quantize"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import os, shutil, sys
            args = sys.argv[1:]
            if args[:1] == ["--help"]:
                os.execv({str(real_tool)!r}, [{str(real_tool)!r}, "--help"])
            with open({str(folder / "quantize-argv.txt")!r}, "w") as fh:
                fh.write("\\n".join(args))
            for line in {list(lines)!r}:
                print(line, flush=True)
            if {exit_code} == 0:
                shutil.copyfile(args[-4], args[-3])
            sys.exit({exit_code})
            """
        ),
        encoding="utf-8",
    )
    script.chmod(0o755)
    return script
