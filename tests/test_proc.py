"""proc.run and the debug switch: one meaning of PERSONA_EXPORT_DEBUG, children always
reaped, logs never written through links."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persona_export import console, proc
from persona_export.errors import ExternalToolError, ToolMissingError
from persona_export.proc import run
from tests.prockit import (
    SLEEPER,
    dead,
    gone,
    kill_leftover,
    killed_parent_leaves_no_child,
    wait_dead,
)


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


# --------------------------------------------------------------------------------------
# The child is always stopped and reaped
# --------------------------------------------------------------------------------------

# Prints its pid, then a line every 50 ms for a minute (unless stopped).
TALKER = (
    "import os, sys, time\n"
    "print(os.getpid(), flush=True)\n"
    "for _ in range(1200):\n"
    "    print('tick', flush=True); time.sleep(0.05)\n"
)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("exc_type", [_Stop, KeyboardInterrupt])
def test_child_is_stopped_and_reaped_when_the_callback_raises(
    exc_type: type[BaseException],
) -> None:
    pids: list[int] = []

    def on_line(line: str) -> None:
        if not pids:
            pids.append(int(line))
        elif line == "tick":
            raise exc_type("stop reading")

    try:
        with pytest.raises(exc_type):
            run([sys.executable, "-c", TALKER], what="talker", on_line=on_line)
        assert pids and gone(pids[0])
    finally:
        kill_leftover(pids[0] if pids else None)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proc, "STOP_GRACE_S", 0.3)
    stubborn = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + TALKER
    pids: list[int] = []

    def on_line(line: str) -> None:
        if not pids:
            pids.append(int(line))
        elif line == "tick":
            raise _Stop

    try:
        started = time.monotonic()
        with pytest.raises(_Stop):
            run([sys.executable, "-c", stubborn], what="stubborn", on_line=on_line)
        assert pids and gone(pids[0])
        assert time.monotonic() - started < 10
    finally:
        kill_leftover(pids[0] if pids else None)


# --------------------------------------------------------------------------------------
# Logs: never through a link, complete when the command ends
# --------------------------------------------------------------------------------------


def test_log_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n", encoding="utf-8")
    folder = tmp_path / "out"
    folder.mkdir()
    log_path = folder / "cap-F16.gguf.log"
    log_path.symlink_to(outside)
    run([sys.executable, "-c", "print('converted')"], what="converter", log_path=log_path)
    assert outside.read_text(encoding="utf-8") == "precious\n"
    assert not log_path.is_symlink() and log_path.is_file()
    assert log_path.read_text(encoding="utf-8") == "converted\n"
    assert sorted(p.name for p in folder.iterdir()) == ["cap-F16.gguf.log"]


def test_log_is_not_world_writable(tmp_path: Path) -> None:
    log_path = tmp_path / "tool.log"
    run([sys.executable, "-c", "print('x')"], what="tool", log_path=log_path)
    assert stat.S_IMODE(log_path.stat().st_mode) & 0o022 == 0


def test_log_named_in_the_error_exists_when_the_command_fails(tmp_path: Path) -> None:
    log_path = tmp_path / "tool.log"
    code = "import sys; print('bad things'); sys.exit(3)"
    with pytest.raises(ExternalToolError, match=r"exit code 3 \(full log: .*tool\.log\)"):
        run([sys.executable, "-c", code], what="tool", log_path=log_path)
    assert log_path.read_text(encoding="utf-8") == "bad things\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tool.log"]


def test_log_is_kept_when_the_run_is_interrupted(tmp_path: Path) -> None:
    log_path = tmp_path / "tool.log"
    pids: list[int] = []

    def on_line(line: str) -> None:
        if not pids:
            pids.append(int(line))
        else:
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            run([sys.executable, "-c", TALKER], what="talker", log_path=log_path, on_line=on_line)
    finally:
        kill_leftover(pids[0] if pids else None)
    assert log_path.read_text(encoding="utf-8").splitlines()[1] == "tick"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tool.log"]


def test_missing_program_is_tool_missing(tmp_path: Path) -> None:
    with pytest.raises(ToolMissingError, match="program not found"):
        run([str(tmp_path / "nope")], what="nope", log_path=tmp_path / "nope.log")


# --------------------------------------------------------------------------------------
# Children die with the parent
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_run_child_dies_with_its_parent() -> None:
    killed_parent_leaves_no_child(
        "import sys\n"
        "from persona_export.proc import run\n"
        f"run([sys.executable, '-c', {SLEEPER!r}], what='sleeper',\n"
        "    on_line=lambda line: print(line, flush=True))\n"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_started_group_leader_dies_with_its_parent() -> None:
    killed_parent_leaves_no_child(
        "import subprocess, sys, time\n"
        "from persona_export.proc import start\n"
        f"child = start([sys.executable, '-c', {SLEEPER!r}], what='sleeper', new_group=True,\n"
        "    stdout=subprocess.PIPE, text=True)\n"
        "print(child.stdout.readline().strip(), flush=True)\n"
        "time.sleep(60)\n"
    )


def test_stop_ends_the_whole_group_and_reaps_the_leader() -> None:
    # the leader starts a grandchild in its group and prints the grandchild's pid
    leader_code = (
        "import subprocess, sys, time\n"
        f"g = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}], stdout=subprocess.PIPE,\n"
        "    text=True)\n"
        "print(g.stdout.readline().strip(), flush=True)\n"
        "time.sleep(60)\n"
    )
    leader = proc.start(
        [sys.executable, "-c", leader_code],
        what="leader",
        new_group=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert leader.stdout is not None
    grandchild = int(leader.stdout.readline())
    try:
        assert os.getpgid(grandchild) == leader.pid
        proc.stop(leader, group=True, grace_s=5)
        assert leader.returncode is not None and gone(leader.pid)
        assert wait_dead(grandchild, 2.0)
    finally:
        leader.stdout.close()
        if not dead(grandchild):
            os.kill(grandchild, signal.SIGKILL)
