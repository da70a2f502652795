"""What Ollama reads off a TEMPLATE (identifiers, tool-call tag, thinking tags): the pure-Python
reader (persona_export.ollama.go_template) against Ollama's own cases, and against Go's real
parse tree (the Go renderer reports the same facts) for every shipped TEMPLATE and for
templates written to hit the reader's corners.

The tag cases are Ollama's (MIT licensed), from ollama/ollama tools/template_test.go
(TestParseTag).
"""

from __future__ import annotations

import pytest

from persona_export.hf.chat_formats import load_formats
from persona_export.ollama.go_template import GoTemplateError, facts
from tests.gotemplate_runner import GoTemplateRenderer

OLLAMA_TAG_CASES = [
    ("", "{"),
    ("{{if .ToolCalls}}{{end}}", "{"),
    ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}{{end}}", "{"),
    ("{{if .ToolCalls}}```json\n{{end}}", "```json"),
    ("{{if .ToolCalls}}[{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "["),
    ("{{if .ToolCalls}}\n [ {{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "["),
    ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "{"),
    ("{{if .ToolCalls}} {{range .ToolCalls}}{{ . }}{{end}}{{end}}", "{"),
    ("{{if .ToolCalls}}{{range .ToolCalls}}\n{{ . }}\n{{end}}{{end}}", "{"),
    (
        '{{if .ToolCalls}}{{range .ToolCalls}}{"name": "{{ .Function.Name }}", "arguments": '
        "{{ .Function.Arguments }}}{{end}}{{end}}",
        "{",
    ),
    (
        '{{if .ToolCalls}}{{range .ToolCalls}}\r\n{"name": "{{ .Function.Name }}", '
        '"arguments": {{ .Function.Arguments }}}{{end}}{{end}}',
        "{",
    ),
    (
        "{{if .ToolCalls}}<|tool▁calls▁begin|>{{range .ToolCalls}}<|tool▁call▁begin|>function"
        'get_current_weather\n```json\n{"location": "Tokyo"}\n```<|tool▁call▁end|>\n{{end}}'
        "<|tool▁calls▁end|>{{end}}",
        "<|tool▁calls▁begin|>",
    ),
    (
        '{{if .ToolCalls}}{{range .ToolCalls}}<tool_call>{"name": "{{ .Function.Name }}", '
        '"arguments": {{ .Function.Arguments }}}</tool_call>{{end}}{{end}}',
        "<tool_call>",
    ),
    (
        '{{if .ToolCalls}}\n{{range .ToolCalls}}<tool_call>{"name": "{{ .Function.Name }}", '
        '"arguments": {{ .Function.Arguments }}}</tool_call>{{end}}{{end}}',
        "<tool_call>",
    ),
    ("{{if .ToolCalls}}First text{{if .Something}}inner{{end}}Second text{{end}}", "First text"),
    ("{{if .ToolCalls}}Action: ```json{{end}}", "Action: ```json"),
    ("{{if .ToolCalls}}functools[{{end}}", "functools["),
    ("{{if .ToolCalls}}[TOOL_CALL] [{{end}}", "[TOOL_CALL] ["),
    ("{{if .ToolCalls}}[TOOL_CALL][{{end}}", "[TOOL_CALL]["),
]

# Templates for the reader's corners: trim markers, comments, quoted delimiters, else-if
# chains, .ToolCalls behind a variable or inside parentheses (Ollama does not see those),
# chains after a parenthesised pipeline, declarations, define/template, break.
CORNERS = [
    '{{ if eq "}}" .X }}a{{ else if .ToolCalls }} tag {"x"{{ else }}b{{ end }}',
    "{{ range $m := .Messages }}{{ if $m.ToolCalls }}no{{ end }}{{ if (.ToolCalls) }}no"
    "{{ end }}{{ if and .Content .ToolCalls }}<call>{{ end }}{{ end }}",
    "{{ if (index .Messages 0).ToolCalls }}x{{ end }}{{- /* a comment */ -}} {{ $x := .Suffix }}",
    "{{- range $i, $_ := .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}"
    '{{ if eq $i 0 }}{{ break }}{{ end }}{{ end }}{{ template "t" .Prompt }}'
    '{{ define "t" }}{{ .Inner.Deep }}{{ end }}',
    "{{ range .Messages }}{{ .Thinking }}{{ end }}",
    "{{ range $.Messages }}<t>{{ .Thinking }}</t>{{ end }}",
    "{{- with .Tools }}{{ range . }}{{ json .Function }}{{ end }}{{ else }}s"
    "{{ end -}}\n  {{ 1.5 }}{{ `raw }} text` }}{{ '}' }}",
]


@pytest.mark.parametrize(("template", "tag"), OLLAMA_TAG_CASES)
def test_tool_tag_follows_ollamas_cases(template: str, tag: str) -> None:
    assert facts(template).tool_tag == tag


def _shipped() -> list[str]:
    formats = load_formats()
    return [f.template for f in formats] + [f.tool_template for f in formats if f.tool_template]


@pytest.mark.go
def test_python_reader_matches_gos_parse_tree(go_template: GoTemplateRenderer) -> None:
    templates = _shipped() + CORNERS + [t for t, _ in OLLAMA_TAG_CASES if t]
    results = go_template.render_many(
        [(t, [{"role": "user", "content": "u"}], "") for t in templates]
    )
    for template, result in zip(templates, results, strict=True):
        found = facts(template)
        assert result.vars, f"Go could not parse {template!r}: {result.error}"
        assert found.vars == result.vars, template
        assert found.tool_tag == result.tool_tag, template
        assert (found.thinking_open, found.thinking_close) == result.thinking_tags, template


def test_corner_facts() -> None:
    first = facts(CORNERS[0])
    assert first.tool_tag == "tag"
    assert facts(CORNERS[1]).tool_tag == "<call>"  # $m.ToolCalls and (.ToolCalls) do not count
    chained = facts(CORNERS[2])
    assert "messages" not in chained.vars and "toolcalls" not in chained.vars
    assert "suffix" in chained.vars and "$x" not in chained.vars
    thinking = facts(CORNERS[3])
    assert (thinking.thinking_open, thinking.thinking_close) == ("<think>", "</think>")
    assert {"inner", "deep", "prompt"} <= set(thinking.vars)  # defined templates count
    assert not facts(CORNERS[5]).thinking  # $.Messages is a variable, not a .Messages field


@pytest.mark.parametrize(
    "broken",
    ["{{ if .X }}no end", "{{ .X ", "{{ end }}", "{{ else }}", "{{/* open comment", '{{ "}} }}'],
)
def test_templates_go_would_refuse_are_refused(broken: str) -> None:
    with pytest.raises(GoTemplateError):
        facts(broken)
