"""Where each stage reads and writes, and the checks on persona names.

trained_adapters/<persona>_final_adapter/      input (PEFT adapter)
merged_models/<persona>/                       merge output (HF model + manifest)
gguf_models/<persona>/<persona>-F16.gguf       gguf output (+ .manifest.json)
gguf_models/<persona>/<persona>-Q4_K_M.gguf    quantize output (+ .manifest.json)
gguf_models/<persona>/Modelfile                modelfile output (FROM ./<persona>-Q4_K_M.gguf)
gguf_models/<persona>/verify.json              verify report
gguf_models/<persona>/verify.llama-server.log  verify's llama-server log
gguf_models/<persona>/quant-auto.json          quantize --type auto: the ladder, its figures
gguf_models/<persona>/imatrix/                 importance matrices (+ calibration text)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from persona_export.errors import UsageError

DEFAULT_BASE_MODEL = "microsoft/Phi-4-mini-instruct"
DEFAULT_ADAPTER_DIR = Path("trained_adapters")
DEFAULT_MERGED_DIR = Path("merged_models")
DEFAULT_GGUF_DIR = Path("gguf_models")
ADAPTER_SUFFIX = "_final_adapter"
#: The quantization type a Modelfile uses unless told otherwise (every command, Make's QUANT).
DEFAULT_QUANT = "Q4_K_M"

_PERSONA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_persona(name: str) -> str:
    """Return ``name`` if it is a safe persona name (a plain folder name), else raise."""
    if not name or "/" in name or "\\" in name or ".." in name or not _PERSONA_RE.fullmatch(name):
        raise UsageError(
            f"invalid persona name {name!r}",
            "use letters, digits, '_', '-' or '.', starting with a letter or digit "
            "(no '/', no '..'), e.g. --persona captain_codebeard",
        )
    return name


@dataclass(frozen=True)
class Layout:
    """The folders of one project; every stage path is derived from these three."""

    adapter_dir: Path = DEFAULT_ADAPTER_DIR
    merged_base: Path = DEFAULT_MERGED_DIR
    gguf_base: Path = DEFAULT_GGUF_DIR

    def adapter(self, persona: str) -> Path:
        return self.adapter_dir / f"{check_persona(persona)}{ADAPTER_SUFFIX}"

    def merged(self, persona: str) -> Path:
        return self.merged_base / check_persona(persona)

    def gguf_dir(self, persona: str) -> Path:
        return self.gguf_base / check_persona(persona)

    def gguf(self, persona: str, file_type: str) -> Path:
        """The GGUF of ``persona`` for ``file_type`` (F16, BF16, F32, Q8_0, Q4_K_M, ...)."""
        return self.gguf_dir(persona) / f"{persona}-{file_type.upper()}.gguf"

    def modelfile(self, persona: str) -> Path:
        return self.gguf_dir(persona) / "Modelfile"

    def verify_report(self, persona: str) -> Path:
        return self.gguf_dir(persona) / "verify.json"

    def check_apart(self, persona: str) -> None:
        """Raise :class:`UsageError` when ``persona``'s merged model folder and GGUF folder
        are the same or one sits inside the other: the gguf stage would write into the merge's
        output, which the merge then no longer recognises as its own (``--gguf-dir`` equal to
        ``--output-dir-base`` never converged). Checked when a stage's options are, before
        anything is written. (Outputs against the base and adapter folders are checked by
        each stage's Artifact.)"""
        merged, gguf = self.merged(persona), self.gguf_dir(persona)
        a, b = Path(os.path.realpath(merged)), Path(os.path.realpath(gguf))
        if a == b:
            problem = f"give {persona} the same folder, {merged}"
        elif b.is_relative_to(a):
            problem = f"put {persona}'s GGUF folder {gguf} inside its merged model {merged}"
        elif a.is_relative_to(b):
            problem = f"put {persona}'s merged model {merged} inside its GGUF folder {gguf}"
        else:
            return
        raise UsageError(
            f"--output-dir-base and --gguf-dir {problem}; each would write into the other, so "
            "nothing was written",
            "keep them apart, e.g. --output-dir-base merged_models --gguf-dir gguf_models",
        )

    def verify_server_log(self, persona: str) -> Path:
        """The log of the llama-server verify runs, kept beside the report."""
        return self.gguf_dir(persona) / "verify.llama-server.log"

    def quant_auto_record(self, persona: str) -> Path:
        """What ``quantize --type auto`` measured and chose (a report and a cache)."""
        return self.gguf_dir(persona) / "quant-auto.json"

    def imatrix_dir(self, persona: str) -> Path:
        """Importance matrices and their calibration text (named by content hash)."""
        return self.gguf_dir(persona) / "imatrix"

    def lock_file(self, persona: str) -> Path:
        """The lock every stage writing ``persona`` holds (artifacts/lock.py)."""
        return self.gguf_base / f".{check_persona(persona)}.lock"

    def personas_with_adapters(self) -> list[str]:
        """Personas that have an adapter folder, sorted."""
        if not self.adapter_dir.is_dir():
            return []
        return sorted(
            p.name[: -len(ADAPTER_SUFFIX)]
            for p in self.adapter_dir.iterdir()
            if p.is_dir() and p.name.endswith(ADAPTER_SUFFIX)
        )
