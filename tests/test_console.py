"""persona_export.console: output modes, progress bars (plain lines, the live display,
nothing), and the libraries kept quiet for the length of a command."""

from __future__ import annotations

import io
import logging
import os
import re
import warnings

import pytest

from persona_export import console, progress
from persona_export.console import Mode


@pytest.fixture
def every_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain bars print every tenth of the way, however fast the updates come."""
    monkeypatch.setattr(progress, "PLAIN_MIN_INTERVAL_S", 0.0)


def test_plain_bar_prints_tenths_with_rate_and_time_left(
    capsys: pytest.CaptureFixture[str], every_line: None
) -> None:
    with console.progress("quantizing Q4_K_M", unit="tensors") as bar:
        for i in range(1, 273):
            bar.update(i, total=272)
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    # 10 % ... 90 %, then the closing line
    assert [re.search(r"(\d+)%", line).group(1) for line in lines[:-1]] == [  # type: ignore[union-attr]
        str(10 * n) for n in range(1, 10)
    ]
    assert re.fullmatch(
        r"  quantizing Q4_K_M:  10%  28/272 tensors  [\d.,]+ tensors/s  about .+ left", lines[0]
    ), lines[0]
    assert re.fullmatch(
        r"  quantizing Q4_K_M: done in .+  272 tensors  [\d.,]+ tensors/s", lines[-1]
    )


def test_plain_bar_is_modest_with_fast_updates(capsys: pytest.CaptureFixture[str]) -> None:
    """At most one line a second: a step that ends within a second prints only its end."""
    with console.progress("merging", total=1e9, unit="B") as bar:
        for i in range(1, 101):
            bar.update(i * 1e7)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("  merging: done in ")
    assert "1.0 GB" in lines[0] and "B/s" in lines[0]


def test_a_failed_step_leaves_no_closing_line(
    capsys: pytest.CaptureFixture[str], every_line: None
) -> None:
    with pytest.raises(RuntimeError), console.progress("converting", total=100, unit="%") as bar:
        bar.update(55)
        raise RuntimeError("boom")
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("  converting:  55%  about ")
    assert not any("done in" in line for line in lines)


def test_a_step_that_ends_short_says_where_it_stopped(
    capsys: pytest.CaptureFixture[str], every_line: None
) -> None:
    with console.progress("verifying", total=11, unit="steps") as bar:
        bar.update(8)  # a failed engine: the rest of the steps were not run
    last = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(r"  verifying: ended at 73% \(8/11 steps\) after .+", last), last
    terminal, buffer = _terminal()
    with progress.live_bar("verifying", 11, "steps", terminal) as live:
        live.update(8)
    final = [line for line in buffer.getvalue().splitlines() if "8/11 steps" in line][-1]
    assert " 73% " in final and "stopped after " in final, final


def test_note_says_what_runs_now(capsys: pytest.CaptureFixture[str], every_line: None) -> None:
    with console.progress("verifying", total=2, unit="steps") as bar:
        bar.update(advance=1, note="F16 through llama.cpp")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("  verifying (F16 through llama.cpp):  50%  1/2 steps")


def test_quiet_shows_warnings_and_results_only(capsys: pytest.CaptureFixture[str]) -> None:
    with console.output_mode(Mode(quiet=True)):
        console.info("progress")
        with console.progress("merging", total=10, unit="B") as bar:
            bar.update(10)
        console.warn("careful")
        console.out("result")
    captured = capsys.readouterr()
    assert captured.out == "result\n"
    assert captured.err == "warning: careful\n"


def test_json_mode_keeps_stdout_for_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    with console.output_mode(Mode(json=True)):
        console.out("a result line")
        console.document({"ok": True})
    captured = capsys.readouterr()
    assert captured.out == '{\n  "ok": true\n}\n'
    assert captured.err == "a result line\n"


def test_verbose_shows_external_commands(capsys: pytest.CaptureFixture[str]) -> None:
    console.command(["llama-quantize", "a b.gguf"])
    assert capsys.readouterr().err == ""
    with console.output_mode(Mode(verbose=True)):
        console.command(["llama-quantize", "a b.gguf"])
    assert capsys.readouterr().err == "$ llama-quantize 'a b.gguf'\n"


def _terminal() -> tuple[object, io.StringIO]:
    from rich.console import Console

    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=120, color_system=None), buffer


def test_live_bar_draws_in_place_and_keeps_the_finished_bar() -> None:
    terminal, buffer = _terminal()
    with progress.live_bar("quantizing Q4_K_M", None, "tensors", terminal) as bar:
        for i in range(1, 273):
            bar.update(i, total=272)
        assert progress.print_above("warning: careful")  # above the bars, not through them
    assert not progress.print_above("after")  # the display is gone
    screen = buffer.getvalue()
    assert "\x1b[" in screen  # cursor movements: redrawn in place, not new lines
    final = [line for line in screen.splitlines() if "272/272 tensors" in line][-1]
    assert "100%" in final and re.search(r"tensors/s in [\d.]+ s", final), final
    assert "warning: careful" in screen


def test_a_long_note_gives_way_on_a_narrow_terminal() -> None:
    from rich.console import Console

    buffer = io.StringIO()
    terminal = Console(file=buffer, force_terminal=True, width=100, color_system=None)
    with progress.live_bar("verifying", 11, "steps", terminal) as bar:
        bar.update(11, note="greedy answer 4/4, at most 384 tokens, " * 3)
    final = [line for line in buffer.getvalue().splitlines() if "11/11 steps" in line][-1]
    assert re.search(r"11/11 steps .* in [\d.]+ s", final), final  # time not cut or wrapped
    assert len(final.split("\r")[-1].split("\x1b[2K")[-1].rstrip()) <= 100


def test_nested_live_bars_share_one_display() -> None:
    terminal, buffer = _terminal()
    with progress.live_bar("verifying", 3, "steps", terminal) as outer:
        with progress.live_bar("converting", 100, "%", terminal) as inner:
            inner.update(100)
        outer.update(3)
    screen = buffer.getvalue()
    assert "verifying" in screen and "converting" in screen


def test_quiet_libraries_silences_and_restores() -> None:
    from persona_export.quiet_libraries import LIBRARY_LOGGERS, QUIET_ENV

    library = logging.getLogger("transformers.models.phi3")
    env_before = {name: os.environ.get(name) for name in QUIET_ENV}
    levels_before = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with console.output_mode(Mode()):
            warnings.warn("is_gradient_checkpointing is deprecated", FutureWarning, stacklevel=1)
            assert not library.isEnabledFor(logging.WARNING)
            assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        assert seen == []
        # put back: the same warning is shown again, the loggers and environment as they were
        warnings.warn("is_gradient_checkpointing is deprecated", FutureWarning, stacklevel=1)
        assert len(seen) == 1
        with console.output_mode(Mode(verbose=True)):
            warnings.warn("shown with --verbose", FutureWarning, stacklevel=1)
            assert library.isEnabledFor(logging.WARNING)
        assert len(seen) == 2
    assert {name: os.environ.get(name) for name in QUIET_ENV} == env_before
    assert {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS} == levels_before


def test_child_programs_get_the_environment_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """The converter's own tqdm bar is how its progress is read: the quiet settings of this
    process must not reach the programs it starts."""
    import sys

    from persona_export import proc

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")  # the user's own value
    show = "import os; print(os.environ.get('TQDM_DISABLE'), os.environ['TRANSFORMERS_VERBOSITY'])"
    with console.output_mode(Mode()):
        assert os.environ["TQDM_DISABLE"] == "1"
        plain = proc.run([sys.executable, "-c", show], what="child").output
        given = proc.run([sys.executable, "-c", show], what="child", env={"X": "1"}).output
    assert plain == given == "None info\n"
