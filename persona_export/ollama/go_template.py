"""What Ollama reads off a Modelfile TEMPLATE without rendering it, in pure Python (Go is
optional for persona-export, and the template choice must be known without it).

Ollama parses the TEMPLATE with Go's text/template and then reads (Ollama's template/,
tools/ and thinking/ packages, late-2026 line):

* its **identifiers** (``Template.Vars``): every field and variable name used in an action or
  in the pipeline of an if/range/with/template, lower-cased: ``.Function.Name`` gives
  ``function`` and ``name``, ``$.Tools`` gives ``$`` and ``tools``. Names after a
  parenthesised pipeline (``(index .Messages 0).Role``) are not read, nor anything inside it.
  ``messages`` selects messages mode, ``tools`` makes the TEMPLATE tool-capable and
  ``suffix`` gives the ``insert`` capability;
* the **tool-call tag** its parser waits for: the first non-blank text of the first
  ``{{ if }}`` whose pipeline names ``.ToolCalls`` directly as a field (searched into nested
  blocks, but not past an action), cut at its first ``{`` and trimmed (``"{"`` when there is
  none: any JSON object);
* the **thinking tags**: around a ``.Thinking`` field used inside a range over
  ``.Messages``, the first and last texts of the enclosing list.

:func:`facts` parses the template the way Go's lexer does (``{{- `` and `` -}}`` trim markers,
comments, quoted strings) into a small tree of its own; the Go renderer reports the same
facts from Go's real parse tree, and the tests hold the two to each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SPACE = " \t\r\n"  # what Go's trim markers remove
_SPACES = tuple(_SPACE)
_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|`[^`]*`|'(?:\\.|[^'\\])*')
    |(?P<variable>\$[\w]*(?:\.[^\W\d][\w]*)*)
    |(?P<field>(?:\.[^\W\d][\w]*)+)
    |(?P<open>\()|(?P<close>\))
    |(?P<other>[^\s()"`'$.]+|\.)
    """,
    re.VERBOSE,
)
_BLOCKS = ("if", "range", "with", "define", "block")


class GoTemplateError(ValueError):
    """The text is not a template Go's parser would accept (as far as this reader sees)."""


@dataclass
class _Node:
    """A node of the template tree: ``text``, ``action`` (an action or the pipeline of a
    block) or a block (``if``, ``range``, ``with``, ``define``, ``block``) with its body and
    else branch."""

    kind: str
    text: str = ""
    tokens: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, text, depth)
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] | None = None


@dataclass(frozen=True)
class TemplateFacts:
    """What Ollama reads off a TEMPLATE: ``vars`` (lower-cased identifiers, sorted), the
    tool-call ``tool_tag``, and the thinking tags (empty strings when there are none)."""

    vars: tuple[str, ...]
    tool_tag: str
    thinking_open: str
    thinking_close: str

    @property
    def tools(self) -> bool:
        return "tools" in self.vars

    @property
    def thinking(self) -> bool:
        return bool(self.thinking_open and self.thinking_close)


_ACTION_SCAN = re.compile(r""""(?:\\.|[^"\\])*"|`[^`]*`|'(?:\\.|[^'\\])*'|}}|["`']""")


def _lex(text: str) -> list[tuple[str, str]]:
    """``[("text", ...), ("action", body)]`` with trim markers applied and comments dropped,
    as Go's lexer reads a template (``{{- `` trims the space before, `` -}}`` the space after)."""
    items: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    while True:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        if trim_next:
            chunk = chunk.lstrip(_SPACE)
        # "{{- " trims: the dash must be followed by a space, else it is a negative number
        left_trim = start >= 0 and text[start + 2 : start + 3] == "-"
        left_trim = left_trim and text[start + 3 : start + 4] in _SPACES
        if left_trim:
            chunk = chunk.rstrip(_SPACE)
        if chunk:
            items.append(("text", chunk))
        if start < 0:
            return items
        inner = start + (3 if left_trim else 2)
        if text.startswith("/*", inner + (1 if left_trim else 0)):
            close = text.find("*/", inner)
            if close < 0:
                raise GoTemplateError("unclosed comment")
            end = close + 2
            trim_next = text[end : end + 1] in _SPACES and text.startswith("-}}", end + 1)
            end += 2 if trim_next else 0
            if not text.startswith("}}", end):
                raise GoTemplateError("comment ends before closing delimiter")
            pos = end + 2
            continue
        end = _action_end(text, inner)
        body = text[inner:end]
        trim_next = len(body) >= 2 and body[-1] == "-" and body[-2] in _SPACES
        items.append(("action", (body[:-1] if trim_next else body).strip(_SPACE)))
        pos = end + 2


def _action_end(text: str, pos: int) -> int:
    """Where the ``}}`` that closes the action starting at ``pos`` is (quoted text skipped)."""
    while True:
        match = _ACTION_SCAN.search(text, pos)
        if match is None or match.group() in ('"', "`", "'"):
            raise GoTemplateError("unclosed action")
        if match.group() == "}}":
            return match.start()
        pos = match.end()


def _tokens(body: str) -> list[tuple[str, str, int]]:
    """The tokens of a pipeline with their parenthesis depth; a field right after ``)`` is a
    chain on that group (kind ``chain``)."""
    out: list[tuple[str, str, int]] = []
    depth = 0
    for match in _TOKEN.finditer(body):
        kind = match.lastgroup or "other"
        value = match.group()
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth -= 1
        elif kind == "field" and match.start() > 0 and body[match.start() - 1] == ")":
            kind = "chain"
        out.append((kind, value, depth))
    return out


def _parse(items: list[tuple[str, str]]) -> list[_Node]:
    """The tree of ``items``: blocks hold their body and else branch; ``{{ else if }}`` and
    ``{{ else with }}`` become a block inside the else branch that the one ``{{ end }}``
    closes, as in Go's parse tree."""
    root: list[_Node] = []
    stack: list[tuple[_Node | None, list[_Node]]] = [(None, root)]
    for kind, value in items:
        current = stack[-1][1]
        if kind == "text":
            current.append(_Node("text", text=value))
            continue
        word = value.split(None, 1)[0] if value else ""
        rest = value[len(word) :].strip(_SPACE)
        if word in _BLOCKS:
            node = _Node(word, tokens=_tokens(rest))
            current.append(node)
            stack.append((node, node.body))
        elif word == "else":
            block = stack.pop()[0] if len(stack) > 1 else None
            if block is None:
                raise GoTemplateError("unexpected {{else}}")
            block.orelse = []
            sub = rest.split(None, 1)[0] if rest else ""
            if sub in ("if", "with"):
                inner = _Node(sub, tokens=_tokens(rest[len(sub) :]))
                block.orelse.append(inner)
                stack.append((inner, inner.body))
            else:
                stack.append((block, block.orelse))
        elif word in ("break", "continue"):
            current.append(_Node("control"))
        elif word == "end":
            if len(stack) == 1:
                raise GoTemplateError("unexpected {{end}}")
            stack.pop()
        else:
            current.append(_Node("action", tokens=_tokens(value)))
    if len(stack) != 1:
        raise GoTemplateError("unexpected EOF: a block lacks its {{end}}")
    return root


def _pipeline_fields(tokens: list[tuple[str, str, int]]) -> list[tuple[str, list[str]]]:
    """The identifiers Go's parse tree holds as field and variable nodes of a pipeline (what
    Ollama's Identifiers reads): not declared variables, not inside a parenthesised group
    that a field chain follows."""
    skip: set[int] = set()
    opened: list[int] = []
    for i, (kind, _, _) in enumerate(tokens):
        if kind == "open":
            opened.append(i)
        elif kind == "close" and opened:
            start = opened.pop()
            if i + 1 < len(tokens) and tokens[i + 1][0] == "chain":
                skip.update(range(start, i + 2))
    declared = 0
    for i, (_, value, _) in enumerate(tokens):
        if value in (":=", "="):
            declared = i if all(t[0] == "variable" or t[1] == "," for t in tokens[:i]) else 0
            break
    names = []
    for i, (kind, value, _) in enumerate(tokens):
        if i < declared or i in skip:
            continue
        if kind == "field":
            names.append((kind, value.split(".")[1:]))
        elif kind == "variable":
            names.append((kind, value.split(".")))
    return names


def _walk(nodes: list[_Node], *, into_defines: bool) -> list[_Node]:
    """Every node of ``nodes`` and below, in document order (define/block bodies only when
    ``into_defines``: they are templates of their own, outside the main tree)."""
    out: list[_Node] = []
    for node in nodes:
        out.append(node)
        if node.kind in ("define", "block") and not into_defines:
            continue
        out += _walk(node.body, into_defines=into_defines)
        if node.orelse is not None:
            out += _walk(node.orelse, into_defines=into_defines)
    return out


def _names_tool_calls(node: _Node) -> bool:
    return any(
        kind == "field" and depth == 0 and "ToolCalls" in value.split(".")
        for kind, value, depth in node.tokens
    )


def _find_tool_calls_if(nodes: list[_Node]) -> _Node | None:
    for node in nodes:
        if node.kind == "if" and _names_tool_calls(node):
            return node
        if node.kind in ("if", "range", "with"):
            for branch in (node.body, node.orelse or []):
                found = _find_tool_calls_if(branch)
                if found is not None:
                    return found
    return None


def _first_text(nodes: list[_Node]) -> _Node | None:
    for node in nodes:
        if node.kind == "text" and node.text.strip():  # blank text is skipped
            return node
        if node.kind == "action":
            return None
        if node.kind in ("if", "range", "with"):
            found = _first_text(node.body)
            if found is None and node.orelse is not None:
                found = _first_text(node.orelse)
            return found
    return None


def _tool_tag(root: list[_Node]) -> str:
    node = _find_tool_calls_if(root)
    text = _first_text(node.body) if node is not None else None
    if text is None:
        return "{"
    tag = text.text.replace("\r\n", "\n").split("{", 1)[0].strip()
    return tag or "{"


def _thinking_tags(root: list[_Node]) -> tuple[str, str]:
    """Ollama's heuristic: for each ``.Thinking`` field inside a range over ``.Messages``,
    the first and last nodes of the nearest enclosing list, when they are texts."""
    tags = ["", ""]

    def uses_messages(node: _Node) -> bool:
        return any(n[0] == "Messages" for n in _fields_deep(node.tokens))

    def visit(nodes: list[_Node], ranges: list[_Node]) -> None:
        for node in nodes:
            if node.kind in ("define", "block", "text", "control"):
                continue
            for name in _fields_deep(node.tokens):
                if name[0] == "Thinking" and ranges and uses_messages(ranges[-1]):
                    if nodes[0].kind == "text":
                        tags[0] = nodes[0].text.strip(_SPACE)
                    if nodes[-1].kind == "text":
                        tags[1] = nodes[-1].text.strip(_SPACE)
            if node.kind != "action":
                inner = [*ranges, node] if node.kind == "range" else ranges
                visit(node.body, inner)
                if node.orelse is not None:
                    visit(node.orelse, inner)

    visit(root, [])
    return tags[0], tags[1]


def _fields_deep(tokens: list[tuple[str, str, int]]) -> list[list[str]]:
    """Field nodes of a pipeline, nested groups included, chains excluded (what Ollama's
    thinking heuristic visits)."""
    return [ident for kind, ident in _pipeline_fields(tokens) if kind == "field"]


def facts(text: str) -> TemplateFacts:
    """What Ollama reads off the TEMPLATE ``text`` (see the module docstring). Raises
    :class:`GoTemplateError` for text Go's parser would refuse in ways this reader sees
    (unclosed actions, comments or blocks; a stray else or end)."""
    root = _parse(_lex(text))
    names: set[str] = set()
    for node in _walk(root, into_defines=True):
        for _, ident in _pipeline_fields(node.tokens):
            names.update(part.lower() for part in ident)
    opening, closing = _thinking_tags(root)
    return TemplateFacts(tuple(sorted(names)), _tool_tag(root), opening, closing)
