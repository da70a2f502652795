"""The command line: help, exit codes, and the one error handler."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.errors import (
    DiskSpaceError,
    InvalidInputError,
    Terminated,
    ToolMissingError,
    UsageError,
    VerificationError,
)

runner = CliRunner()


def test_help_lists_commands_in_pipeline_order() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "vendor" in result.output and "doctor" in result.output
    names = [cmd for cmd in app.registered_commands]
    assert names, "no command registered"


def test_every_command_has_help_and_an_example() -> None:
    for command in app.registered_commands:
        name = command.name or command.callback.__name__  # type: ignore[union-attr]
        assert command.callback is not None and command.callback.__doc__, name
        assert command.epilog and command.epilog.startswith("Example: "), name
        result = runner.invoke(app, [name.replace("_", "-"), "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Example:" in result.output


def test_unknown_command_is_a_usage_error() -> None:
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from persona_export.cli import app\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'gguf', 'numpy') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _app_raising(exc: BaseException) -> typer.Typer:
    from persona_export.cli._app import HandledGroup

    test_app = typer.Typer(cls=HandledGroup)

    @test_app.command()
    def boom() -> None:
        raise exc

    @test_app.command()
    def other() -> None:
        pass

    return test_app


def test_known_error_is_one_line_with_hint_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONA_EXPORT_DEBUG", raising=False)
    result = runner.invoke(
        _app_raising(InvalidInputError("adapter is corrupt", "re-save it")), ["boom"]
    )
    assert result.exit_code == 1
    assert result.output == "error: adapter is corrupt\nhint: re-save it\n"


def test_usage_error_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONA_EXPORT_DEBUG", raising=False)
    result = runner.invoke(_app_raising(UsageError("bad --type", "use Q4_K_M")), ["boom"])
    assert result.exit_code == 2
    assert result.output.splitlines()[0] == "error: bad --type"


def test_unexpected_error_is_one_line_without_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONA_EXPORT_DEBUG", raising=False)
    result = runner.invoke(_app_raising(KeyError("x")), ["boom"])
    assert result.exit_code == 1
    assert result.output.startswith("error: internal error: KeyError")
    assert "PERSONA_EXPORT_DEBUG=1" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("value", ["0", "off", "No"])
def test_debug_variable_off_values_hide_the_traceback(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PERSONA_EXPORT_DEBUG", value)
    result = runner.invoke(_app_raising(KeyError("x")), ["boom"])
    assert result.exit_code == 1
    assert result.output.startswith("error: internal error: KeyError")
    assert "Traceback" not in result.output


def test_ctrl_c_is_one_line_and_exit_130() -> None:
    result = runner.invoke(_app_raising(KeyboardInterrupt()), ["boom"])
    assert result.exit_code == 130
    assert result.output == "interrupted; outputs of the unfinished stage were discarded\n"


def test_sigterm_is_one_line_and_exit_143() -> None:
    result = runner.invoke(_app_raising(Terminated()), ["boom"])
    assert result.exit_code == 143
    assert result.output == "terminated; outputs of the unfinished stage were discarded\n"


def test_os_error_is_one_line_with_the_path_hint() -> None:
    exc = PermissionError(13, "Permission denied", "/out/cap-F16.gguf")
    result = runner.invoke(_app_raising(exc), ["boom"])
    assert result.exit_code == 1
    assert result.output == (
        "error: [Errno 13] Permission denied: '/out/cap-F16.gguf'\n"
        "hint: check the path, free disk space and permissions\n"
    )


def test_os_error_with_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_EXPORT_DEBUG", "1")
    result = runner.invoke(_app_raising(OSError(28, "No space left on device")), ["boom"])
    assert result.exit_code == 1
    assert "Traceback" in result.output
    assert result.output.endswith(
        "error: [Errno 28] No space left on device\n"
        "hint: check the path, free disk space and permissions\n"
    )


@pytest.mark.parametrize(
    "exc",
    [
        ToolMissingError("llama-quantize is not built", "run `persona-export vendor`"),
        DiskSpaceError("needs 8 GB, 2 GB free", "free some space"),
        VerificationError("logits differ", "see verify.json"),
    ],
)
def test_our_os_and_runtime_errors_keep_their_own_hint(exc: Exception) -> None:
    result = runner.invoke(_app_raising(exc), ["boom"])
    assert result.exit_code == 1
    assert result.output == f"error: {exc}\nhint: {exc.hint}\n"  # type: ignore[attr-defined]


@pytest.mark.parametrize("exc", [AssertionError("x == 1"), RuntimeError("oops")])
def test_a_bug_is_still_an_internal_error(exc: Exception) -> None:
    result = runner.invoke(_app_raising(exc), ["boom"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: internal error: {type(exc).__name__}: ")
    assert "this is a bug in persona-export" in result.output


def test_main_handles_sigterm_outside_a_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import signal

    from persona_export.cli import _app

    def terminated(**kwargs: object) -> None:
        raise Terminated

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(_app, "app", terminated)
    try:
        with pytest.raises(SystemExit) as ended:
            _app.main()
        assert signal.getsignal(signal.SIGTERM) is _app._raise_terminated
    finally:
        signal.signal(signal.SIGTERM, before)
    assert ended.value.code == 143
    assert capsys.readouterr().err == (
        "terminated; outputs of the unfinished stage were discarded\n"
    )


def test_a_second_sigterm_does_not_cut_the_cleanup_short() -> None:
    import signal

    from persona_export.cli import _app

    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _app._raise_terminated)
        with pytest.raises(Terminated):
            _app._raise_terminated(signal.SIGTERM, None)
        # the next SIGTERM finds a handler that returns: the cleanup goes on
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)


def test_debug_variable_shows_the_traceback() -> None:
    code = (
        "import typer\n"
        "from persona_export.cli._app import HandledGroup\n"
        "from persona_export.errors import InvalidInputError\n"
        "app = typer.Typer(cls=HandledGroup)\n"
        "@app.command()\n"
        "def boom():\n    raise InvalidInputError('broken', 'fix it')\n"
        "@app.command()\n"
        "def other():\n    pass\n"
        "app(['boom'])\n"
    )
    env = {"PERSONA_EXPORT_DEBUG": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "error: broken" in out.stderr


def test_console_script_exit_code_and_stderr() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "persona_export", "vendor", "--sdist", "/nonexistent.tar.gz"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("error: /nonexistent.tar.gz: no such file")
    assert out.stdout == ""


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", "", "-rf", "x\\y"])
def test_unsafe_persona_names_are_refused(name: str) -> None:
    from persona_export.layout import check_persona

    with pytest.raises(UsageError, match="invalid persona name"):
        check_persona(name)
