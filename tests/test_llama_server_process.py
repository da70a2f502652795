"""llama-server never outlives persona-export: it runs in a process group of its own with a
parent-death signal, and the whole group is stopped and reaped on the way out. A stand-in
server (a few lines of Python that answer /health) makes the fast tests; the real server
on a tiny Llama GGUF makes the slow one."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from persona_export.llamacpp import server as server_module
from persona_export.llamacpp import vendor
from tests.prockit import gone, kill_leftover, killed_parent_leaves_no_child, wait_dead

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's"
)


def fake_server(folder: Path, *, ignore_sigterm: bool = False) -> Path:
    """A stand-in llama-server: answers 200 on every GET on --port until it is killed."""
    script = folder / "fake-llama-server"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import http.server, signal, sys
            if {ignore_sigterm!r}:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            args = sys.argv[1:]
            port = int(args[args.index("--port") + 1])

            class Health(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"{{}}")

                def log_message(self, *args):
                    pass

            http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
            """
        ),
        encoding="utf-8",
    )
    script.chmod(0o755)
    return script


class _Boom(Exception):
    pass


def test_server_is_stopped_and_reaped_when_the_block_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_server(tmp_path)
    monkeypatch.setattr(vendor, "tool", lambda name: fake)
    pid = None
    try:
        with (
            pytest.raises(_Boom),
            server_module.llama_server(tmp_path / "x.gguf", tmp_path / "logs") as server,
        ):
            pid = server.pid
            assert os.getpgid(pid) == pid  # a process group of its own
            raise _Boom
        assert gone(pid)
    finally:
        kill_leftover(pid)


def test_a_server_that_ignores_sigterm_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_server(tmp_path, ignore_sigterm=True)
    monkeypatch.setattr(vendor, "tool", lambda name: fake)
    monkeypatch.setattr(server_module, "STOP_TIMEOUT_S", 0.3)
    pid = None
    try:
        with server_module.llama_server(tmp_path / "x.gguf", tmp_path / "logs") as server:
            pid = server.pid
        assert gone(pid)
    finally:
        kill_leftover(pid)


def _parent_code(binary: Path | None, gguf: Path, log_dir: Path) -> str:
    """A parent that serves ``gguf``, prints the server's pid and waits to be killed."""
    stand_in = "" if binary is None else f"vendor.tool = lambda name: Path({str(binary)!r})\n"
    return (
        "import time\n"
        "from pathlib import Path\n"
        "from persona_export.llamacpp import server, vendor\n"
        f"{stand_in}"
        f"with server.llama_server(Path({str(gguf)!r}), Path({str(log_dir)!r}),\n"
        "        ctx_size=256, threads=1) as s:\n"
        "    print(s.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )


@linux_only
def test_server_dies_with_a_killed_parent(tmp_path: Path) -> None:
    killed_parent_leaves_no_child(
        _parent_code(fake_server(tmp_path), tmp_path / "x.gguf", tmp_path / "logs")
    )


@pytest.fixture(scope="module")
def tiny_gguf(llama_spm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama converted to F16 by the vendored converter (skips when it is not
    extracted)."""
    import subprocess

    from persona_export.errors import ToolMissingError

    try:
        script = vendor.converter_script()
    except ToolMissingError as exc:
        pytest.skip(f"{exc.message} ({exc.hint})")
    out = tmp_path_factory.mktemp("server-gguf") / "tiny-F16.gguf"
    subprocess.run(
        [sys.executable, str(script), str(llama_spm), "--outfile", str(out), "--outtype", "f16"],
        check=True,
        capture_output=True,
        env={**os.environ, **vendor.converter_env()},
        timeout=600,
    )
    return out


@linux_only
@pytest.mark.slow
@pytest.mark.llama
def test_real_llama_server_dies_with_a_killed_parent(tiny_gguf: Path, tmp_path: Path) -> None:
    from tests.llama_server import server_binary

    server_binary()  # skips when llama-server is not built
    killed_parent_leaves_no_child(_parent_code(None, tiny_gguf, tmp_path / "logs"))


def test_server_pid_is_reaped_after_a_normal_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_server(tmp_path)
    monkeypatch.setattr(vendor, "tool", lambda name: fake)
    with server_module.llama_server(tmp_path / "x.gguf", tmp_path / "logs") as server:
        pid = server.pid
    assert wait_dead(pid, 0.1) and gone(pid)


@pytest.mark.parametrize(("value", "shown"), [("0", False), ("off", False), ("1", True)])
def test_server_command_is_shown_only_when_debugging(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: str,
    shown: bool,
) -> None:
    fake = fake_server(tmp_path)
    monkeypatch.setattr(vendor, "tool", lambda name: fake)
    monkeypatch.setenv("PERSONA_EXPORT_DEBUG", value)
    with server_module.llama_server(tmp_path / "x.gguf", tmp_path / "logs"):
        pass
    err = capsys.readouterr().err
    assert (f"$ {fake} --model" in err) is shown, err
