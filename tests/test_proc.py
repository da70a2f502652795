"""proc.run and the debug switch: one meaning of PERSONA_EXPORT_DEBUG, children always
reaped, logs never written through links."""

from __future__ import annotations

import sys

import pytest

from persona_export import console
from persona_export.proc import run


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "FALSE", " No ", "Off"])
def test_debug_off_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PERSONA_EXPORT_DEBUG", value)
    assert console.debug_enabled() is False


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "2"])
def test_debug_on_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PERSONA_EXPORT_DEBUG", value)
    assert console.debug_enabled() is True


def test_debug_unset_is_off() -> None:  # the autouse fixture removes the variable
    assert console.debug_enabled() is False


@pytest.mark.parametrize(("value", "shown"), [("0", False), ("false", False), ("1", True)])
def test_run_prints_the_command_only_when_debugging(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str, shown: bool
) -> None:
    monkeypatch.setenv("PERSONA_EXPORT_DEBUG", value)
    run([sys.executable, "-c", "pass"], what="nothing")
    err = capsys.readouterr().err
    assert ("$ " in err and "-c pass" in err) is shown, err
