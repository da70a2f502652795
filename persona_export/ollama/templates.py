"""Which Ollama TEMPLATE (and stop strings) a model gets: the Go template of its chat format,
detected from the tokenizer's own chat template (the merged folder's, else the GGUF's
``tokenizer.chat_template``) by rendering a placeholder conversation; a shipped format named
with ``--template``; or a custom Go template file.

A detected or named format gives its tool-capable TEMPLATE when it has one and the model's
own chat template renders tools (decided per model, :func:`~persona_export.hf.chat_formats.
tools_via`), else its plain one. A chat template no shipped format recognises gives no
TEMPLATE at all: Ollama ≥ 0.30 then renders the GGUF's own chat template through
llama-server (see :mod:`persona_export.ollama.template_choice`), and the stops come from the
tokenizer (its end-of-sequence tokens, then the turn markers the template writes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from persona_export.errors import InputNotFoundError, UnsupportedError, UsageError
from persona_export.hf.chat_formats import TEMPLATE_HINT, ChatFormat, detect_format, turn_markers
from persona_export.hf.chat_tools import tool_form_difference, tools_via
from persona_export.hf.tokenizer import TokenizerInfo, from_gguf, from_hf_folder, gguf_adds_bos
from persona_export.layout import Layout

#: format_name of the choice that writes no TEMPLATE (the GGUF's own chat template is used).
GGUF_FORMAT = "gguf"

# Tokenizer files whose content decides the TEMPLATE and stops (recorded in the manifest).
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
    "generation_config.json",
    "config.json",
)


@dataclass(frozen=True)
class ChosenTemplate:
    """The TEMPLATE (None: none, the GGUF's chat template is used), the format it comes from,
    its stops, and whether it renders tools."""

    text: str | None
    format_name: str
    title: str
    stops: tuple[str, ...]
    source: str
    default_system: str | None
    notes: tuple[str, ...]
    warnings: tuple[str, ...]
    inputs: dict[str, Path]
    tools: bool = False


def tokenizer_facts(
    layout: Layout, persona: str, gguf: Path
) -> tuple[TokenizerInfo, dict[str, Path]]:
    """The tokenizer facts (merged folder first, else the GGUF) and the files they came from."""
    merged = layout.merged(persona)
    if (merged / "tokenizer_config.json").is_file():
        inputs = {f"merged/{n}": merged / n for n in TOKENIZER_FILES if (merged / n).is_file()}
        return from_hf_folder(merged), inputs
    return from_gguf(gguf), {}


def custom_template(path: Path) -> ChosenTemplate:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputNotFoundError(f"cannot read template file {path}: {exc}") from exc
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise UsageError(f"template file {path} is empty", TEMPLATE_HINT)
    warnings: tuple[str, ...] = ()
    if ".Messages" not in text and ".Prompt" not in text:
        warnings = (f"{path} uses neither .Messages nor .Prompt: Ollama will not insert the chat",)
    return ChosenTemplate(
        text=text,
        format_name="custom",
        title=f"custom template {path.name}",
        stops=(),
        source=str(path),
        default_system=None,
        notes=(),
        warnings=warnings,
        inputs={"template": path},
    )


def detected_template(
    info: TokenizerInfo, gguf: Path, formats: list[ChatFormat], forced: ChatFormat | None
) -> ChosenTemplate:
    if forced is not None:
        fmt, default_system, emits_bos = forced, None, False
        notes = [f"chat format {fmt.name} chosen with --template (not detected)"]
    else:
        if not info.chat_template:
            raise UnsupportedError(
                f"{info.template_source} has no chat template, so the chat format cannot be "
                "detected",
                TEMPLATE_HINT
                + "; or --template FORMAT with one of: "
                + ", ".join(f.name for f in formats),
            )
        try:
            found = detect_format(
                info.chat_template,
                special_tokens=info.special_tokens,
                formats=formats,
                source=info.template_source,
            )
        except UnsupportedError as exc:
            return gguf_template(info, gguf, exc.message.split(";")[0])
        fmt, default_system, emits_bos = found.format, found.default_system, found.emits_bos
        notes = [f"chat format: {fmt.title} (detected from {info.template_source})"]
        if found.system_refused:
            notes.append("the model's own template refuses system messages")
    warnings: list[str] = []
    text, tools = _format_template(fmt, info, notes, warnings)
    bos = info.special_tokens.get("bos_token", "")
    runtime_adds_bos = gguf_adds_bos(gguf)
    if emits_bos and runtime_adds_bos is False:
        # llama.cpp will not add BOS, so the TEMPLATE writes it (with special-token parsing
        # llama.cpp reads the token's text back as the BOS token).
        text = bos + text
        notes.append(f"the TEMPLATE starts with {bos} (the GGUF does not add BOS itself)")
    elif emits_bos and runtime_adds_bos is None:
        warnings.append(
            f"the chat template starts with {bos} but {gguf.name} does not say whether "
            "llama.cpp adds BOS; assuming it does"
        )
    elif not emits_bos and runtime_adds_bos and forced is None:
        warnings.append(
            f"llama.cpp adds {bos or 'BOS'} for {gguf.name} but the model's chat template does "
            "not start with it: Ollama's prompts will begin with a token the chat template has not"
        )
    if fmt.system_note:
        notes.append(fmt.system_note)
    return ChosenTemplate(
        text=text,
        format_name=fmt.name,
        title=fmt.title,
        stops=fmt.stop,
        source=info.template_source,
        default_system=default_system,
        notes=tuple(notes),
        warnings=tuple(warnings),
        inputs={"format": fmt.source},
        tools=tools,
    )


def _format_template(
    fmt: ChatFormat, info: TokenizerInfo, notes: list[str], warnings: list[str]
) -> tuple[str, bool]:
    """``fmt``'s tool-capable TEMPLATE when the model's own chat template renders tools the
    way the format's family does (:mod:`persona_export.hf.chat_tools`), else its plain one."""
    own = info.chat_template
    via = tools_via(own, special_tokens=info.special_tokens) if own else None
    if via is None or not own:
        if fmt.tool_template is not None:
            notes.append("the model's chat template renders no tools: the TEMPLATE declares none")
        return fmt.template, False
    tool_template = fmt.tool_template
    if tool_template is None or via != fmt.tools_via:
        difference: str | None = f"the {fmt.title} TEMPLATE has no tool support in that form"
    else:
        difference = tool_form_difference(fmt, own, special_tokens=info.special_tokens)
    if tool_template is None or difference is not None:
        warnings.append(
            f"the model's chat template renders tools, but not as the {fmt.title} tool TEMPLATE "
            f"does ({difference}): the TEMPLATE declares no tools, and Ollama >= 0.30 will "
            "prefer the GGUF's chat template (rendered by llama-server)"
        )
        return fmt.template, False
    notes.append(
        f"the model's chat template renders tools: the TEMPLATE renders them too (tool calls "
        f"after {fmt.tool_call_tag!r})"
    )
    return tool_template, True


def gguf_template(info: TokenizerInfo, gguf: Path, why: str) -> ChosenTemplate:
    """No TEMPLATE: the GGUF's own chat template, rendered by llama-server in Ollama ≥ 0.30.
    Stops: the tokenizer's end-of-sequence tokens, then the turn markers the template writes.
    Raises :class:`UnsupportedError` when the GGUF carries no chat template."""
    from persona_export.llamacpp.gguf_file import read_gguf_metadata

    embedded = read_gguf_metadata(gguf).get("tokenizer.chat_template")
    if not isinstance(embedded, str) or not embedded:
        raise UnsupportedError(
            f"{why}, and {gguf.name} carries no chat template for Ollama to use instead",
            TEMPLATE_HINT,
        )
    markers = turn_markers(
        embedded, special_tokens=info.special_tokens, added_tokens=info.added_tokens
    )
    return ChosenTemplate(
        text=None,
        format_name=GGUF_FORMAT,
        title="the GGUF's own chat template",
        stops=markers,
        source=f"{gguf.name} (tokenizer.chat_template)",
        default_system=None,
        notes=(
            f"{why}: the Modelfile has no TEMPLATE, so Ollama >= 0.30 renders the GGUF's own "
            "chat template through llama-server",
        ),
        warnings=(
            "Ollama older than 0.30 would render this model's prompts as {{ .Prompt }} (no "
            "chat format) unless one of its built-in templates matches; give --template FILE "
            "for those",
        ),
        inputs={},
        tools="tools" in embedded or "tool_call" in embedded,
    )


def choose_template(
    template: str | None, info: TokenizerInfo, gguf: Path, formats: list[ChatFormat]
) -> ChosenTemplate:
    """The TEMPLATE for ``template`` (None: detect the format; a file; a format's name)."""
    if template is None:
        return detected_template(info, gguf, formats, None)
    by_name = {f.name: f for f in formats}
    path = Path(template)
    if path.is_file():
        return custom_template(path)
    if template in by_name:
        return detected_template(info, gguf, formats, by_name[template])
    raise InputNotFoundError(
        f"--template {template}: no such file, and not a known chat format",
        "pass a Go template file, or one of: " + ", ".join(sorted(by_name)),
    )
