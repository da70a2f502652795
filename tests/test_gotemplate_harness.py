"""The Go renderer (persona_export/gotemplate/) reproduces Ollama's own template tests, in
both of Ollama's modes: messages mode (.Messages, rendered once) and legacy mode (.System,
.Prompt, .Response per turn, everything after .Response cut on the last turn).

The cases are Ollama's (MIT licensed), from ollama/ollama template/template_test.go
(TestExecuteWithMessages) and template/testdata/<template>/<case> with the current
chatml.gotmpl, phi-3.gotmpl and gemma-instruct.gotmpl.
"""

from __future__ import annotations

import pytest

from tests.gotemplate_runner import GoTemplateRenderer

pytestmark = pytest.mark.go

HELLO = [
    {"role": "user", "content": "Hello friend!"},
    {"role": "assistant", "content": "Hello human!"},
    {"role": "user", "content": "What is your name?"},
]
MISTRAL_NO_RESPONSE = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] "
MISTRAL_RESPONSE = MISTRAL_NO_RESPONSE + "{{ .Response }}"
MISTRAL_MESSAGES = (
    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n"
    '{{- if eq .Role "user" }}{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}'
    "{{ .Content }}[INST] {{ end }}\n{{- end }}"
)


@pytest.mark.parametrize("template", [MISTRAL_NO_RESPONSE, MISTRAL_RESPONSE, MISTRAL_MESSAGES])
@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (HELLO, "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "),
        (
            [{"role": "system", "content": "You are a helpful assistant!"}, *HELLO],
            "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] "
            "What is your name?[/INST] ",
        ),
    ],
)
def test_ollama_execute_with_messages_cases(
    go_template: GoTemplateRenderer, template: str, messages: list[dict[str, str]], expected: str
) -> None:
    assert go_template.render(template, messages) == expected


def test_ollama_assistant_prefill_case(go_template: GoTemplateRenderer) -> None:
    messages = [*HELLO, {"role": "assistant", "content": "My name is Ollama and I"}]
    expected = "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is Ollama and I"
    for template in (
        "[INST] {{ .Prompt }}[/INST] ",
        "[INST] {{ .Prompt }}[/INST] {{ .Response }}",
        '\n{{- range $i, $m := .Messages }}\n{{- if eq .Role "user" }}[INST] {{ .Content }}[/INST] '
        '{{ else if eq .Role "assistant" }}{{ .Content }}{{ end }}\n{{- end }}',
    ):
        assert go_template.render(template, messages) == expected


CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
PHI3 = "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"
GEMMA = (
    '{{- $system := "" }}\n{{- range .Messages }}\n{{- if eq .Role "system" }}\n'
    "{{- if not $system }}{{ $system = .Content }}\n"
    '{{- else }}{{ $system = printf "%s\\n\\n%s" $system .Content }}\n{{- end }}\n'
    '{{- continue }}\n{{- else if eq .Role "user" }}<start_of_turn>user\n{{- if $system }}\n'
    '{{ $system }}\n{{- $system = "" }}\n{{- end }}\n{{- else if eq .Role "assistant" }}'
    "<start_of_turn>model\n{{- end }}\n{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n"
)
SYSTEM_CASE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello, how are you?"},
    {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
    {"role": "user", "content": "I'd like to show off how chat templating works!"},
]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            CHATML,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello, "
            "how are you?<|im_end|>\n<|im_start|>assistant\nI'm doing great. How can I help you "
            "today?<|im_end|>\n<|im_start|>user\nI'd like to show off how chat templating works!"
            "<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            PHI3,
            "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHello, how are you?<|end|>"
            "\n<|assistant|>\nI'm doing great. How can I help you today?<|end|>\n<|user|>\nI'd "
            "like to show off how chat templating works!<|end|>\n<|assistant|>\n",
        ),
        (
            GEMMA,
            "<start_of_turn>user\nYou are a helpful assistant.\nHello, how are you?<end_of_turn>\n"
            "<start_of_turn>model\nI'm doing great. How can I help you today?<end_of_turn>\n"
            "<start_of_turn>user\nI'd like to show off how chat templating works!<end_of_turn>\n"
            "<start_of_turn>model\n",
        ),
    ],
    ids=["chatml", "phi-3", "gemma-instruct"],
)
def test_ollama_testdata_system_user_assistant_user(
    go_template: GoTemplateRenderer, template: str, expected: str
) -> None:
    assert go_template.render(template, SYSTEM_CASE) == expected
    # The Modelfile SYSTEM is prepended as a system message when the request has none.
    assert go_template.render(template, SYSTEM_CASE[1:], SYSTEM_CASE[0]["content"]) == expected


def test_consecutive_messages_of_a_role_are_merged(go_template: GoTemplateRenderer) -> None:
    messages = [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    assert go_template.render(CHATML, messages) == (
        "<|im_start|>user\none\n\ntwo<|im_end|>\n<|im_start|>assistant\n"
    )


def test_missing_keys_and_ollama_functions(go_template: GoTemplateRenderer) -> None:
    # missingkey=zero on Ollama's map[string]any data gives a nil interface, which Go prints
    # as "<no value>": a TEMPLATE must not use fields Ollama does not pass.
    template = (
        "{{ .Nothing }}|{{ json .System }}|{{ len currentDate }}|{{ range .Messages }}{{ end }}"
    )
    assert go_template.render(template, HELLO, "S") == '<no value>|"S"|10|'
