"""SIGTERM (what `timeout`, CI cancellation and systemd send) is handled like Ctrl-C: the
unfinished stage's temporaries are removed, its child is stopped, one line is printed and
the command exits 143 (Ctrl-C: 130).

The real command runs as a subprocess on a small F16 GGUF, with a stand-in llama-quantize
(found through PERSONA_EXPORT_CACHE) that writes part of its output and then waits."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from persona_export.llamacpp import vendor
from tests.ggufkit import dir_args, leftovers, write_gguf
from tests.prockit import kill_leftover, python_env, wait_dead

USAGE = "  15  or  Q4_K_M  :  4.58G, +0.1754 ppl @ Llama-3-8B\n"


def slow_quantize(cache: Path, marker: Path) -> Path:
    """A stand-in llama-quantize in the layout of ``cache``: ``--help`` lists Q4_K_M;
    otherwise it writes half a file to its output, records its pid in ``marker`` and
    sleeps a minute."""
    tool = cache / "llama.cpp" / vendor.load_lock().key / "build" / "bin" / "llama-quantize"
    tool.parent.mkdir(parents=True)
    tool.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import os, sys, time
            args = sys.argv[1:]
            if args[:1] == ["--help"]:
                print({USAGE!r})
                sys.exit(1)
            with open(args[-3], "wb") as fh:
                fh.write(b"GGUF" + bytes(4096))
            print("[   1/  10] quantizing", flush=True)
            with open({str(marker)!r}, "w") as fh:
                fh.write(str(os.getpid()))
            time.sleep(60)
            """
        ),
        encoding="utf-8",
    )
    tool.chmod(0o755)
    return tool


def _wait_for(path: Path, proc: subprocess.Popen[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not (path.is_file() and path.read_text()):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended early ({proc.returncode}):\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {seconds} s")
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("sig", "code", "line"),
    [
        (signal.SIGTERM, 143, "terminated; outputs of the unfinished stage were discarded"),
        (signal.SIGINT, 130, "interrupted; outputs of the unfinished stage were discarded"),
    ],
)
def test_signal_cleans_up_and_exits(tmp_path: Path, sig: int, code: int, line: str) -> None:
    out_dir = tmp_path / "gguf_models" / "cap"
    out_dir.mkdir(parents=True)
    write_gguf(out_dir / "cap-F16.gguf")
    cache, marker = tmp_path / "cache", tmp_path / "quantize.pid"
    slow_quantize(cache, marker)
    command = [sys.executable, "-m", "persona_export", "quantize", "--persona", "cap"]
    cli = subprocess.Popen(
        [*command, *dir_args(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(PERSONA_EXPORT_CACHE=str(cache)),
    )
    tool_pid = None
    try:
        _wait_for(marker, cli, 120)
        tool_pid = int(marker.read_text())
        assert any(p.name.startswith(".cap-Q4_K_M.gguf.partial-") for p in out_dir.iterdir())
        cli.send_signal(sig)
        stdout, stderr = cli.communicate(timeout=60)
    finally:
        cli.kill()
        cli.wait()
        kill_leftover(tool_pid)
    assert cli.returncode == code, stderr
    assert stderr.splitlines()[-1] == line, stderr
    assert stderr.count(line) == 1 and "Traceback" not in stderr
    assert stdout == ""
    assert leftovers(out_dir) == []
    assert sorted(p.name for p in out_dir.iterdir()) == ["cap-F16.gguf", "cap-Q4_K_M.gguf.log"]
    assert "quantizing" in (out_dir / "cap-Q4_K_M.gguf.log").read_text(encoding="utf-8")
    assert tool_pid is not None and wait_dead(tool_pid, 2.0)
