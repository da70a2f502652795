"""SIGTERM (what `timeout`, CI cancellation and systemd send) is handled like Ctrl-C: the
unfinished stage's temporaries are removed, its child is stopped, one line is printed and
the command exits 143 (Ctrl-C: 130).

The real command runs as a subprocess, with a stand-in external program (found through
PERSONA_EXPORT_CACHE or PERSONA_EXPORT_VENDOR_DIR) that writes part of its output, says so
and then waits to be stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from persona_export.llamacpp import vendor
from tests.ggufkit import dir_args, leftovers, make_fake_merged, write_gguf
from tests.prockit import kill_leftover, python_env, wait_dead

USAGE = "  15  or  Q4_K_M  :  4.58G, +0.1754 ppl @ Llama-3-8B\n"
TERMINATED = "terminated; outputs of the unfinished stage were discarded"
INTERRUPTED = "interrupted; outputs of the unfinished stage were discarded"


def _slow_program(path: Path, marker: Path, output_arg: str) -> Path:
    """A stand-in program at ``path``: ``--help`` lists Q4_K_M; otherwise it writes half a
    file to its output (``output_arg``, a Python expression over ``args``), prints a
    progress line, records its pid in ``marker`` and sleeps a minute."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import os, sys, time
            args = sys.argv[1:]
            if args[:1] == ["--help"]:
                print({USAGE!r})
                sys.exit(1)
            with open({output_arg}, "wb") as fh:
                fh.write(b"GGUF" + bytes(4096))
            print("[   1/  10] working", flush=True)
            with open({str(marker)!r}, "w") as fh:
                fh.write(str(os.getpid()))
            time.sleep(60)
            """
        ),
        encoding="utf-8",
    )
    path.chmod(0o755)
    return path


@dataclass(frozen=True)
class Ended:
    returncode: int
    stdout: str
    stderr: str
    program_pid: int


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signalled(root: Path, args: list[str], env: dict[str, str], sig: int) -> Ended:
    """Run ``persona-export ARGS`` in ``root``, send ``sig`` once the stand-in program runs
    (it writes ``root/program.pid``), and return how the command ended."""
    marker = root / "program.pid"
    cli = subprocess.Popen(
        [sys.executable, "-m", "persona_export", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(**env),
        # Ctrl-C as a terminal delivers it, whatever this run inherited: a shell ignores
        # SIGINT for background jobs (`make test &`), and a child started that way (Python
        # included) ignores Ctrl-C, rightly, so the test would measure the launcher instead
        preexec_fn=_default_sigint,
    )
    pid = None
    try:
        deadline = time.monotonic() + 120
        while not (marker.is_file() and marker.read_text()):
            if cli.poll() is not None:
                out, err = cli.communicate()
                pytest.fail(f"the command ended early ({cli.returncode}):\n{out}\n{err}")
            if time.monotonic() > deadline:
                pytest.fail("the stand-in program did not start within 120 s")
            time.sleep(0.05)
        pid = int(marker.read_text())
        cli.send_signal(sig)
        stdout, stderr = cli.communicate(timeout=60)
    finally:
        cli.kill()
        cli.wait()
        kill_leftover(pid)
    return Ended(cli.returncode, stdout, stderr, pid)


def _assert_ended_cleanly(ended: Ended, code: int, line: str) -> None:
    assert ended.returncode == code, ended.stderr
    assert ended.stderr.splitlines()[-1] == line, ended.stderr
    assert ended.stderr.count(line) == 1 and "Traceback" not in ended.stderr
    assert ended.stdout == ""
    assert wait_dead(ended.program_pid, 2.0), "the external program outlived the command"


@pytest.mark.parametrize(
    ("sig", "code", "line"), [(signal.SIGTERM, 143, TERMINATED), (signal.SIGINT, 130, INTERRUPTED)]
)
def test_quantize_signalled_mid_run(tmp_path: Path, sig: int, code: int, line: str) -> None:
    out_dir = tmp_path / "gguf_models" / "cap"
    out_dir.mkdir(parents=True)
    write_gguf(out_dir / "cap-F16.gguf")
    cache = tmp_path / "cache"
    tool = cache / "llama.cpp" / vendor.load_lock().key / "build" / "bin" / "llama-quantize"
    _slow_program(tool, tmp_path / "program.pid", "args[-3]")
    args = ["quantize", "--persona", "cap", *dir_args(tmp_path)]
    ended = _signalled(tmp_path, args, {"PERSONA_EXPORT_CACHE": str(cache)}, sig)
    _assert_ended_cleanly(ended, code, line)
    assert leftovers(out_dir) == []  # no .cap-Q4_K_M.gguf.partial-*
    assert sorted(p.name for p in out_dir.iterdir()) == ["cap-F16.gguf", "cap-Q4_K_M.gguf.log"]
    assert "working" in (out_dir / "cap-Q4_K_M.gguf.log").read_text(encoding="utf-8")


def test_gguf_signalled_mid_conversion_leaves_no_shadow_folder_or_partial_gguf(
    tmp_path: Path,
) -> None:
    # a transformers-5 tokenizer: the stage converts through a temporary shadow folder
    tok_config = {"tokenizer_class": "TokenizersBackend", "chat_template": "x"}
    make_fake_merged(tmp_path, architecture="Phi3ForCausalLM", tokenizer_config=tok_config)
    vendor_dir = tmp_path / "vendor"
    _slow_program(
        vendor_dir / "convert_hf_to_gguf.py",
        tmp_path / "program.pid",
        'args[args.index("--outfile") + 1]',
    )
    lock = vendor.load_lock()
    (vendor_dir / vendor.MARKER).write_text(json.dumps({"sha256": lock.sha256}))
    env = {"PERSONA_EXPORT_VENDOR_DIR": str(vendor_dir), "PERSONA_EXPORT_PLAIN_CONVERTER": "1"}
    args = ["gguf", "--persona", "cap", *dir_args(tmp_path)]
    ended = _signalled(tmp_path, args, env, signal.SIGTERM)
    _assert_ended_cleanly(ended, 143, TERMINATED)
    assert "converting through a shadow folder" in ended.stderr
    out_dir = tmp_path / "gguf_models" / "cap"
    assert leftovers(out_dir) == []  # no .tokfix-* folder, no .cap-F16.gguf.partial-*
    assert sorted(p.name for p in out_dir.iterdir()) == ["cap-F16.gguf.log"]
