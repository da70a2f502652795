"""The Modelfile writer: every value it writes reads back unchanged under Ollama's grammar
(tests/modelfile_parser.py, a strict parser written apart from the package's), and whatever
it cannot write is refused with the right error. Hypothesis fuzzes prompts and parameters."""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from persona_export.errors import UsageError
from persona_export.ollama.modelfile import Modelfile
from persona_export.ollama.modelfile_syntax import ModelfileSyntaxError, parse, quote
from persona_export.ollama.rules import (
    DEPRECATED_PARAMETERS,
    PARAMETER_TYPES,
    REMOVED_PARAMETERS,
    check_model_name,
    is_valid_model_name,
)
from tests.modelfile_parser import parse_modelfile

TEMPLATE = "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>"
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _droppable(char: str) -> bool:
    """Characters Ollama's parser silently drops (not printable per Go's strconv.IsPrint)."""
    return char not in " \t\n" and unicodedata.category(char)[0] not in "LMNPS"


def _expressible(text: str) -> bool:
    """Whether some Modelfile quoting carries ``text`` (derived from Ollama's grammar):
    bare or "..." for one line not starting with a quote, \"\"\"...\"\"\" for text without
    \"\"\", "..." for multi-line text when no line but the last ends (blanks aside) with a quote."""
    if "\r" in text or any(_droppable(c) for c in text):
        return False
    if '"""' not in text:
        return True
    if text.startswith('"'):
        return False
    return re.search(r'"[ \t\n]*\n', text) is None


def _write(**fields: Any) -> str:
    return Modelfile.build("./cap-Q4_K_M.gguf", TEMPLATE, **fields).render()


# --- examples --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("plain words", "plain words"),
        ("<|end|>", "<|end|>"),
        (" leading space", '" leading space"'),
        ("trailing tab\t", '"trailing tab\t"'),
        ("", '""'),
        ('"starts with a quote', '""""starts with a quote"""'),
        ("two\nlines", '"""two\nlines"""'),
        ('say """hi"""', 'say """hi"""'),
        (' say """hi"""', '" say """hi""""'),
        ('line one\nsay """hi""" twice', '"line one\nsay """hi""" twice"'),
        ("# not a comment", "# not a comment"),
        ("value # with hash", "value # with hash"),
        ('ends with "', 'ends with "'),
    ],
)
def test_quote_picks_a_representation_that_reads_back(text: str, written: str) -> None:
    assert quote(text) == written
    modelfile = f"FROM ./x.gguf\nSYSTEM {written}\n"
    assert parse_modelfile(modelfile).system == text
    assert [c.args for c in parse(modelfile) if c.name == "system"] == [text]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"""', 'value contains """ and cannot be written into a Modelfile'),
        ('line "quoted"\nsay """no"""', 'value contains """ and cannot be written'),
        ('"""\nstarts with triple', 'value contains """ and cannot be written'),
        ("a\r\nb", "value contains a carriage return (CR)"),
        ("bell\x07", "value contains U+0007 (control character), which Ollama's Modelfile"),
        ("zero\u200bwidth", "value contains U+200B (zero width space), which Ollama's"),
        ("no\u00a0break", "value contains U+00A0 (no-break space), which Ollama's"),
    ],
)
def test_quote_refuses_text_a_modelfile_cannot_hold(text: str, message: str) -> None:
    with pytest.raises(ModelfileSyntaxError) as info:
        quote(text)
    assert info.value.message.startswith(message)
    assert info.value.hint


def test_written_modelfile_is_lf_utf8_without_bom_and_parses_strictly() -> None:
    text = _write(
        stops=("<|end|>", "<|endoftext|>"),
        parameters={"temperature": 0.7, "num_ctx": 4096, "use_mmap": True},
        system='Ahoy! Ye be talkin\' to "Captain" Codebeard 🏴‍☠️'.replace("\u200d", ""),
        license="MIT License\n\nCopyright (c) Microsoft",
    )
    data = text.encode("utf-8")
    assert not data.startswith(b"\xef\xbb\xbf")
    assert b"\r" not in data
    assert text.endswith("\n")
    parsed = parse_modelfile(text)
    assert parsed.from_ == "./cap-Q4_K_M.gguf"
    assert parsed.template == TEMPLATE
    assert parsed.stops == ["<|end|>", "<|endoftext|>"]
    assert parsed.parameters == {
        "stop": ["<|end|>", "<|endoftext|>"],
        "temperature": 0.7,
        "num_ctx": 4096,
        "use_mmap": True,
    }
    assert parsed.licenses == ["MIT License\n\nCopyright (c) Microsoft"]


def test_comment_lines_are_not_values() -> None:
    text = _write(system="# looks like a comment\n# but is the prompt")
    assert parse_modelfile(text).system == "# looks like a comment\n# but is the prompt"
    assert text.startswith("# Modelfile for ")


def test_removed_parameter_is_an_error() -> None:
    with pytest.raises(UsageError) as info:
        _write(parameters={"tfs_z": 1.0})
    assert info.value.message == (
        "parameters: parameter 'tfs_z' was removed from Ollama (a Modelfile with it fails "
        "with \"unknown parameter 'tfs_z'\")"
    )


def test_unknown_and_mistyped_parameters_are_errors() -> None:
    with pytest.raises(UsageError, match="unknown Ollama parameter 'temprature'"):
        _write(parameters={"temprature": 0.7})
    with pytest.raises(UsageError, match="parameter 'num_ctx' must be an integer, not 4096.5"):
        _write(parameters={"num_ctx": 4096.5})
    with pytest.raises(UsageError, match="parameter 'temperature' must be a finite number"):
        _write(parameters={"temperature": math.inf})
    with pytest.raises(UsageError, match="parameter 'use_mmap' must be true or false, not 1"):
        _write(parameters={"use_mmap": 1})


def test_deprecated_parameter_is_left_out() -> None:
    parsed = parse_modelfile(_write(parameters={"mirostat": 1, "top_k": 40}))
    assert parsed.parameters == {"top_k": 40}
    assert parsed.deprecated == []


def test_stop_given_as_parameter_accumulates_after_stops() -> None:
    parsed = parse_modelfile(_write(stops=("<|end|>",), parameters={"stop": ["###", "<|end|>"]}))
    assert parsed.stops == ["<|end|>", "###"]


@pytest.mark.parametrize(
    "name", ["captain-codebeard", "zen_coder:latest", "me/pirate:v1.2", "a.b-c_d:7b"]
)
def test_valid_model_names(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("Captain-Codebeard", "Ollama names are lower case: use 'captain-codebeard'"),
        ("pirate:", "use lower-case letters"),
        ("pi rate", "use lower-case letters"),
        ("a:b:c", "use lower-case letters"),
        ("../x", "use lower-case letters"),
        ("x" * 129, "use lower-case letters"),
    ],
)
def test_invalid_model_names(name: str, hint: str) -> None:
    with pytest.raises(UsageError) as info:
        check_model_name(name)
    assert info.value.message == f"invalid Ollama model name {name!r}"
    assert info.value.hint.startswith(hint)
    assert info.value.exit_code == 2


# --- fuzz ------------------------------------------------------------------------------

# Any characters, with the ones that matter to the grammar (quotes, newlines, blanks, "#",
# CR, template braces) made frequent.
prompt_text = st.lists(
    st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from(['"', '"""', "\n", " ", "\t", "#", "\r", "{{", "}}", "a"]),
    ),
    max_size=40,
).map("".join)


@FUZZ
@given(prompt_text)
@example('"')
@example('""')
@example('a"\nb')
@example('x"""y\nz')
@example('x"""y"\nz')
@example("\n")
@example('"\n"')
def test_any_system_prompt_round_trips_or_is_refused(text: str) -> None:
    try:
        written = _write(system=text)
    except UsageError as exc:
        assert not _expressible(text), f"refused a writable text: {exc.message}"
        assert exc.message.startswith("the SYSTEM prompt contains ")
        return
    assert _expressible(text)
    parsed = parse_modelfile(written)
    assert parsed.system == text
    assert parsed.template == TEMPLATE
    assert [c.args for c in parse(written) if c.name == "system"] == [text]


@FUZZ
@given(prompt_text)
def test_any_single_value_quotes_consistently(text: str) -> None:
    try:
        value = quote(text)
    except ModelfileSyntaxError:
        assert not _expressible(text)
        return
    modelfile = f"FROM ./x.gguf\nPARAMETER stop {value}\n# end\n"
    assert parse_modelfile(modelfile).stops == [text]
    assert [c.args for c in parse(modelfile)] == ["./x.gguf", text]


int_values = st.integers(min_value=-(2**63), max_value=2**63 - 1)
float_values = st.floats(allow_nan=False, allow_infinity=False, width=32)
values = st.one_of(
    int_values, float_values, st.booleans(), st.text(max_size=8), st.none(), st.floats()
)
names = st.one_of(
    st.sampled_from(sorted(PARAMETER_TYPES)),
    st.sampled_from(sorted(REMOVED_PARAMETERS | DEPRECATED_PARAMETERS)),
    st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
)


def _acceptable(name: str, value: Any) -> bool:
    kind = PARAMETER_TYPES.get(name)
    if name in DEPRECATED_PARAMETERS:
        return True
    if kind is None:
        return False
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return (
            isinstance(value, (int, float)) and math.isfinite(value) and abs(value) <= FLOAT32_MAX
        )
    return isinstance(value, str) and value != "" and _expressible(value)


@FUZZ
@given(st.dictionaries(names, values, max_size=6))
def test_any_parameters_round_trip_or_are_refused(params: dict[str, Any]) -> None:
    acceptable = all(_acceptable(n, v) for n, v in params.items())
    try:
        written = _write(parameters=params)
    except UsageError as exc:
        assert not acceptable, f"refused acceptable parameters: {exc.message}"
        return
    assert acceptable
    parsed = parse_modelfile(written)
    expected: dict[str, Any] = {}
    for name, value in params.items():
        if name in DEPRECATED_PARAMETERS:
            continue
        if name == "stop":
            expected["stop"] = [value]
        elif PARAMETER_TYPES[name] is float:
            expected[name] = float(value)
        else:
            expected[name] = value
    assert parsed.parameters == expected


@given(st.text(max_size=40))
def test_model_name_check_agrees_with_the_rules(name: str) -> None:
    rule = re.fullmatch(
        r"(?:[a-z0-9][a-z0-9_-]*/)?[a-z0-9][a-z0-9_.-]*(?::[a-z0-9_][a-z0-9_.-]*)?", name
    )
    assert is_valid_model_name(name) == (bool(rule) and ".." not in name and len(name) <= 128)
