"""The files Ollama reads from a Hugging Face GGUF repository (template, system, params) say
exactly what the Modelfile says, read back with the project's Modelfile type."""

from __future__ import annotations

import json
from pathlib import Path

from persona_export.ollama.hub_files import hub_files, read_hub_files
from persona_export.ollama.modelfile import Modelfile

TEMPLATE = (
    "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>\n{{ end }}<|assistant|>"
    '{{ if .System }} """{{ .System }}"""{{ end }}'
)


def write(folder: Path, modelfile: Modelfile) -> dict[str, bytes]:
    files = hub_files(modelfile)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_template_system_and_params_read_back_as_the_modelfile(tmp_path: Path) -> None:
    modelfile = Modelfile.build(
        "./cap-Q4_K_M.gguf",
        TEMPLATE,
        stops=("<|end|>", "<|user|>", 'say "arr"'),
        parameters={"temperature": 0.8, "num_ctx": 4096, "top_k": 40, "use_mmap": False},
        system='Ye be Cap\'n "Codebeard" ⚓.\nKeep code exact.',
        license="MIT License\n",
    )
    files = write(tmp_path, modelfile)
    assert sorted(files) == ["params", "system", "template"]
    assert files["template"] == TEMPLATE.encode()  # exact: no newline added
    assert json.loads(files["params"]) == {
        "stop": ["<|end|>", "<|user|>", 'say "arr"'],
        "temperature": 0.8,
        "num_ctx": 4096,
        "top_k": 40,
        "use_mmap": False,
    }
    back = read_hub_files(tmp_path, modelfile.from_)
    assert back == Modelfile(**{**vars(modelfile), "licenses": ()})
    # the Modelfile as written, parsed back, says the same
    assert Modelfile.parse(modelfile.render()).template == back.template


def test_what_the_modelfile_lacks_is_left_out(tmp_path: Path) -> None:
    files = write(tmp_path, Modelfile.build("./x.gguf", TEMPLATE))
    assert sorted(files) == ["template"]
    assert read_hub_files(tmp_path, "./x.gguf") == Modelfile.build("./x.gguf", TEMPLATE)
