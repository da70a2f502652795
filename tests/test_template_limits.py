"""Bounds on untrusted templates (issue 11, "No bounds on untrusted inputs"): a nested-loop
chat template rendered for over 60 s and a 200 MB --template file took 2.6 GB. Templates are
at most 1 MiB (refused before they are read), rendering stops at a deadline, and operations
that build a huge value in one C call are refused by the sandbox."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.hf import template_limits
from persona_export.hf.chat_formats import render_chat_template
from persona_export.hf.template_limits import MAX_TEMPLATE_BYTES, TemplateLimitError
from tests import hf_chat_templates as hf
from tests.modelfile_kit import PHI, layout_args, make_persona_project, write_stub_gguf

runner = CliRunner()
# 10^8 loop iterations: about 45 s on this machine without a deadline.
NESTED_LOOPS = "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}"
TOO_BIG = MAX_TEMPLATE_BYTES + 1


def modelfile_cli(layout, *extra: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["modelfile", "--persona", "cap", *layout_args(layout), *extra])


def error_line(result) -> str:  # type: ignore[no-untyped-def]
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in errors[0]
    return errors[0].removeprefix("error: ")


def test_a_nested_loop_chat_template_is_stopped_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(template_limits, "RENDER_SECONDS", 1.0)
    layout = make_persona_project(tmp_path, "cap", NESTED_LOOPS, PHI)
    started = time.monotonic()
    result = modelfile_cli(layout)
    elapsed = time.monotonic() - started
    assert result.exit_code == 1
    template = layout.merged("cap") / "tokenizer_config.json"  # the template is inline there
    assert error_line(result) == f"{template}: the chat template took longer than 1 s to render"
    assert elapsed < 10, elapsed
    assert not layout.modelfile("cap").exists()


def test_the_default_deadline_is_a_few_seconds() -> None:
    started = time.monotonic()
    with pytest.raises(TemplateLimitError, match="took longer than 5 s"):
        render_chat_template(NESTED_LOOPS, [], special_tokens={})
    assert 5 <= time.monotonic() - started < 8


def test_the_deadline_leaves_the_tracer_as_it_was() -> None:
    import sys

    before = sys.gettrace()
    with pytest.raises(TemplateLimitError):
        render_chat_template(NESTED_LOOPS, [], special_tokens={}, seconds=0.2)
    assert sys.gettrace() is before
    assert render_chat_template("{{ 'ok' }}", [], special_tokens={}) == "ok"


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{{ 'a' * 1000000000 }}", "'*' would make more than 1048576 items"),
        ("{{ [1] * 1000000000 }}", "'*' would make more than 1048576 items"),
        ("{{ 7 ** 100000000 }}", "'**' would make a number over 65536 bits"),
        ("{{ 'x'.ljust(1000000000) }}", "a call with an argument over 1048576"),
        ("{{ '{:>999999999}'.format(1) }}", "a format width or precision over 999999"),
        ("{{ '{:>{w}}'.format(1, w=999999999) }}", "a call with an argument over 1048576"),
        ("{{ '%999999999d' % 1 }}", "a format width or precision over 999999"),
        ("{{ '%.9999999f'|format(1) }}", "a format width or precision over 999999"),
        ("{{ 'x'|center(999999999) }}", "a call with an argument over 1048576"),
        ("{{ 'x'|indent(999999999, true) }}", "a call with an argument over 1048576"),
    ],
)
def test_one_step_allocations_are_refused(template: str, why: str) -> None:
    """Each of these used to build a 1 GB value (or a number of 10^8 bits) in one C call,
    which no deadline can interrupt."""
    with pytest.raises(TemplateLimitError) as refused:
        render_chat_template(template, [], special_tokens={})
    assert str(refused.value) == why


def test_ordinary_uses_of_those_operations_still_render() -> None:
    text = "{{ 2 ** 10 }} {{ 'ab' * 3 }} {{ '%5d' % 3 }} {{ '{:>5}'.format(1) }} {{ '%s-%s'|format(1, 2) }}"
    rendered = render_chat_template(text, [], special_tokens={})
    assert rendered == "1024 ababab     3     1 1-2"
    phi = render_chat_template(hf.PHI4MINI, [{"role": "user", "content": "hi"}], special_tokens={})
    assert phi == "<|user|>hi<|end|><|assistant|>"


def test_a_chat_template_file_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    layout = make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)
    template = layout.merged("cap") / "chat_template.jinja"
    template.write_text("x" * TOO_BIG)
    result = modelfile_cli(layout)
    assert result.exit_code == 1
    assert error_line(result) == (
        f"the chat template {template} is 1.0 MB; templates are at most 1024 KiB (real chat "
        "templates are a few kB)"
    )


def test_an_inline_chat_template_over_the_limit_is_refused(tmp_path: Path) -> None:
    layout = make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)
    config_path = layout.merged("cap") / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = "x" * TOO_BIG
    config_path.write_text(json.dumps(config))
    result = modelfile_cli(layout)
    assert result.exit_code == 1
    assert error_line(result) == (
        f"{config_path}: the template is 1.0 MB; templates are at most 1024 KiB (real chat "
        "templates are a few kB)"
    )


def test_a_gguf_chat_template_over_the_limit_is_refused(tmp_path: Path) -> None:
    """Without a merged folder the template comes from the GGUF's metadata."""
    from tests.ggufkit import project_layout

    layout = project_layout(tmp_path)
    gguf = write_stub_gguf(
        layout.gguf("cap", "Q4_K_M"),
        add_bos=False,
        chat_template="x" * TOO_BIG,
        tokens=["<|endoftext|>", "a"],
        eos="<|endoftext|>",
    )
    result = modelfile_cli(layout)
    assert result.exit_code == 1
    assert error_line(result).startswith(
        f"{gguf} (tokenizer.chat_template): the template is 1.0 MB"
    )


@pytest.mark.parametrize("command", ["modelfile", "export"])
def test_a_template_file_over_the_limit_is_refused_before_any_stage(
    tmp_path: Path, command: str
) -> None:
    """The 200 MB --template file took 2.6 GB; it is now refused by its size on disk when
    the options are checked (export: before the merge runs)."""
    layout = make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)
    big = tmp_path / "big.tmpl"
    with open(big, "wb") as fh:
        fh.truncate(200_000_000)  # sparse: 200 MB on paper, nothing on disk
    args = [command, "--persona", "cap", *layout_args(layout), "--template", str(big)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert error_line(result) == (
        f"--template {big} is 200.0 MB; templates are at most 1024 KiB (real chat templates "
        "are a few kB)"
    )
    assert not layout.modelfile("cap").exists()
    assert not (layout.merged_base / ".cap.partial").exists()


def test_verify_renders_the_chat_template_within_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify renders the merged model's template through transformers, under the same
    deadline."""
    from persona_export.errors import InvalidInputError
    from persona_export.verify.prompts import build_prompts
    from tests.modelfile_kit import tokenizer_folder

    monkeypatch.setattr(template_limits, "RENDER_SECONDS", 0.5)
    folder = tokenizer_folder(tmp_path / "tok", NESTED_LOOPS, PHI)
    with pytest.raises(InvalidInputError, match=r"took longer than 1 s to render"):
        build_prompts(folder, None, [[{"role": "user", "content": "hi"}]])
