"""The one Modelfile type (persona_export/ollama/modelfile.py): read as Ollama reads it,
rendered so that it reads back, its GGUF path and its REST create request."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona_export.errors import InputNotFoundError, UnsupportedError, UsageError
from persona_export.ollama.modelfile import Header, Message, Modelfile
from persona_export.ollama.modelfile_syntax import Command, ModelfileSyntaxError
from tests.modelfile_parser import parse_modelfile

TEMPLATE = "{{ range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>"


def test_parse_keeps_the_last_value_and_accumulates_stops_and_licenses() -> None:
    text = (
        "FROM ./old.gguf\n"
        "from ./cap-Q4_K_M.gguf\n"
        'TEMPLATE "first"\n'
        f'TEMPLATE """{TEMPLATE}"""\n'
        "PARAMETER stop <|end|>\n"
        "PARAMETER temperature 0.2\n"
        "PARAMETER stop <|user|>\n"
        "PARAMETER temperature 0.7\n"
        "PARAMETER num_ctx 4096\n"
        "PARAMETER use_mmap F\n"
        "SYSTEM one\n"
        'SYSTEM """two\nlines"""\n'
        "LICENSE MIT\n"
        'LICENSE """Apache\n2.0"""\n'
        "MESSAGE user Ahoy?\n"
        'MESSAGE assistant """Arr:\nmatey"""\n'
    )
    modelfile = Modelfile.parse(text)
    assert modelfile == Modelfile(
        from_="./cap-Q4_K_M.gguf",
        template=TEMPLATE,
        system="two\nlines",
        parameters={"temperature": 0.7, "num_ctx": 4096, "use_mmap": False},
        stops=("<|end|>", "<|user|>"),
        licenses=("MIT", "Apache\n2.0"),
        messages=(Message("user", "Ahoy?"), Message("assistant", "Arr:\nmatey")),
    )
    assert isinstance(modelfile.parameters["num_ctx"], int)
    assert modelfile.all_parameters() == {
        "stop": ["<|end|>", "<|user|>"],
        "temperature": 0.7,
        "num_ctx": 4096,
        "use_mmap": False,
    }


def test_unmodelled_commands_and_deprecated_parameters_are_kept_as_parsed() -> None:
    modelfile = Modelfile.parse(
        "FROM ./x.gguf\nADAPTER ./lora.gguf\nREQUIRES 0.6.0\nPARAMETER mirostat 2\n"
    )
    assert modelfile.other == (
        Command("adapter", "./lora.gguf"),
        Command("requires", "0.6.0"),
        Command("mirostat", "2"),
    )
    assert modelfile.parameters == {}
    with pytest.raises(UsageError, match="does not write Modelfiles with ADAPTER, MIROSTAT"):
        modelfile.render()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("PARAMETER tfs_z 1.0", "Modelfile: unknown parameter 'tfs_z'"),
        ("PARAMETER temprature 0.7", "Modelfile: unknown parameter 'temprature'"),
        ("PARAMETER num_ctx 4096.5", "Modelfile: invalid value '4096.5' for parameter num_ctx"),
        ("PARAMETER use_mmap yes", "Modelfile: invalid value 'yes' for parameter use_mmap"),
        ("PARAMETER top_p 1e39", "Modelfile: invalid value '1e39' for parameter top_p"),
        (
            "PARAMETER seed 9223372036854775808",
            "Modelfile: invalid value '9223372036854775808' for",
        ),
    ],
)
def test_parameters_ollama_refuses_are_errors(line: str, message: str) -> None:
    with pytest.raises(ModelfileSyntaxError) as info:
        Modelfile.parse(f"FROM ./x.gguf\n{line}\n")
    assert info.value.message.startswith(message)
    assert info.value.hint


def test_read_names_the_file_and_resolves_from_relative_to_it(tmp_path: Path) -> None:
    folder = tmp_path / "gguf_models" / "cap"
    folder.mkdir(parents=True)
    path = folder / "Modelfile"
    with pytest.raises(InputNotFoundError, match=f"no Modelfile at {path}"):
        Modelfile.read(path)
    path.write_text("FROM ./cap-Q4_K_M.gguf\n", encoding="utf-8")
    modelfile = Modelfile.read(path)
    assert modelfile.path == path
    assert modelfile.gguf == folder / "cap-Q4_K_M.gguf"
    with pytest.raises(InputNotFoundError, match="FROM names ./cap-Q4_K_M.gguf, which does not"):
        modelfile.require_gguf()
    (folder / "cap-Q4_K_M.gguf").write_bytes(b"GGUF")
    assert modelfile.require_gguf() == folder / "cap-Q4_K_M.gguf"
    assert Modelfile.parse("FROM /abs/x.gguf\n", path=path).gguf == Path("/abs/x.gguf")
    assert Modelfile.parse("FROM ~/x.gguf\n").gguf == Path.home() / "x.gguf"
    path.write_text("FROM ./x.gguf\nPARAMETER bogus 1\n", encoding="utf-8")
    with pytest.raises(ModelfileSyntaxError, match=f"^{path}: Modelfile: unknown parameter"):
        Modelfile.read(path)


def test_render_reads_back_as_the_same_value_with_messages_and_licenses() -> None:
    modelfile = Modelfile(
        from_="./cap-Q8_0.gguf",
        template=TEMPLATE,
        system="Be a pirate.",
        parameters={"temperature": 0.5, "top_k": 40, "use_mmap": True},
        stops=("<|end|>", "###"),
        licenses=("MIT", "second\nlicense"),
        messages=(Message("user", "Hi"), Message("assistant", "Arr")),
    )
    text = modelfile.render(Header(persona="cap", quant="Q8_0"))
    assert Modelfile.parse(text) == modelfile
    independent = parse_modelfile(text)  # the tests' own strict parser agrees
    assert independent.licenses == ["MIT", "second\nlicense"]
    assert independent.messages == [("user", "Hi"), ("assistant", "Arr")]
    assert (
        text.splitlines()[3]
        == "# Regenerate it with: persona-export modelfile --persona cap --quant Q8_0"
    )


def test_render_without_template() -> None:
    text = Modelfile(from_="./x.gguf", stops=("a",)).render()
    assert "TEMPLATE" not in text
    assert Modelfile.parse(text) == Modelfile(from_="./x.gguf", stops=("a",))


def test_build_checks_parameters_and_puts_their_stops_last() -> None:
    built = Modelfile.build(
        "./x.gguf",
        TEMPLATE,
        stops=("<|end|>",),
        parameters={"stop": ["###", "<|end|>"], "temperature": 1, "mirostat": 2},
        license="MIT",
    )
    assert built.stops == ("<|end|>", "###")
    assert built.parameters == {"temperature": 1.0}
    assert isinstance(built.parameters["temperature"], float)
    assert built.licenses == ("MIT",)
    with pytest.raises(UsageError, match="persona.toml: unknown Ollama parameter 'temprature'"):
        Modelfile.build("./x.gguf", TEMPLATE, parameters={"temprature": 1}, where="persona.toml")


def test_create_request_is_ollamas_create_body() -> None:
    modelfile = Modelfile.parse(
        f'FROM ./cap.gguf\nTEMPLATE """{TEMPLATE}"""\nPARAMETER stop <|end|>\n'
        "PARAMETER num_ctx 2048\nPARAMETER mirostat 1\nSYSTEM Arr\nLICENSE MIT\nMESSAGE user Hi\n"
    )
    assert modelfile.create_request("cap:latest", {"cap.gguf": "sha256:ab"}) == {
        "model": "cap:latest",
        "files": {"cap.gguf": "sha256:ab"},
        "template": TEMPLATE,
        "system": "Arr",
        "parameters": {"stop": ["<|end|>"], "num_ctx": 2048},
        "license": ["MIT"],
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": False,
    }
    bare = Modelfile.parse("FROM ./cap.gguf\n").create_request("cap", {"cap.gguf": "sha256:ab"})
    assert bare == {"model": "cap", "files": {"cap.gguf": "sha256:ab"}, "stream": False}
    with pytest.raises(UnsupportedError, match="ADAPTER is not supported by the REST path"):
        Modelfile.parse("FROM ./cap.gguf\nADAPTER ./a.gguf\n").create_request("cap", {})
