"""The files Ollama reads from a Hugging Face GGUF repository in place of a Modelfile.

``ollama run hf.co/{user}/{repo}:{quant}`` pulls a GGUF repository from the Hugging Face
Hub: the GGUF whose name carries ``{quant}`` (Q4_K_M by default when the repository has
one). Optional files at the repository's root are applied as a Modelfile would apply them:

* ``template``: a Go template, as TEMPLATE;
* ``system``: the system prompt, as SYSTEM;
* ``params``: a JSON object of parameters, as the PARAMETER lines, e.g.
  ``{"stop": ["<|end|>"], "temperature": 0.7}`` (``stop`` a list of strings).

They are written from the :class:`~persona_export.ollama.modelfile.Modelfile` itself, so
they say what it says: the text of TEMPLATE and SYSTEM exactly (no newline added), and the
parameters as Ollama's create request carries them (:meth:`Modelfile.all_parameters`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from persona_export.errors import InvalidInputError
from persona_export.ollama.modelfile import Modelfile

HUB_FILES = ("template", "system", "params")


def hub_files(modelfile: Modelfile) -> dict[str, bytes]:
    """name -> content of the files a GGUF repository needs to run as ``modelfile`` says
    (a file is left out when the Modelfile has nothing for it)."""
    files: dict[str, bytes] = {}
    if modelfile.template is not None:
        files["template"] = modelfile.template.encode("utf-8")
    if modelfile.system is not None:
        files["system"] = modelfile.system.encode("utf-8")
    params = modelfile.all_parameters()
    if params:
        files["params"] = (json.dumps(params, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return files


def read_hub_files(folder: Path, from_: str) -> Modelfile:
    """The Modelfile that ``folder``'s template, system and params files amount to (FROM
    ``from_``), read as Ollama reads them; parameters are checked as a Modelfile's are."""
    template = _text(folder / "template")
    system = _text(folder / "system")
    params: dict[str, Any] = {}
    path = folder / "params"
    if path.is_file():
        try:
            params = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(params, dict):
            raise InvalidInputError(f"{path} is not a JSON object")
    stops = params.pop("stop", [])
    if isinstance(stops, str):
        stops = [stops]
    return Modelfile.build(
        from_, template, stops=tuple(stops), parameters=params, system=system, where=str(path)
    )


def _text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None
