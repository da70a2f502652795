"""The pinned llama.cpp: lock parsing, hash verification, extraction, the CLI's refusals."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.errors import IntegrityError, InvalidInputError
from persona_export.llamacpp import vendor

runner = CliRunner()


def _tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _lock_file(tmp: Path, sdist: Path, sha256: str | None = None) -> Path:
    sha = sha256 or hashlib.sha256(sdist.read_bytes()).hexdigest()
    text = f"""
[source]
package = "fake-llama"
version = "1.0"
filename = "{sdist.name}"
sha256 = "{sha}"
subdir = "fake-1.0/vendor/llama.cpp"
llama_cpp_commit = "abc1234"
[extract]
paths = ["convert_hf_to_gguf.py", "gguf-py"]
[build]
targets = ["llama-quantize"]
cmake_args = []
"""
    lock = tmp / "lock.toml"
    lock.write_text(text)
    return lock


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PERSONA_EXPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PERSONA_EXPORT_VENDOR_DIR", str(tmp_path / "vendor" / "llama.cpp"))
    return tmp_path


def test_project_lock_pins_the_sdist() -> None:
    lock = vendor.load_lock()
    assert lock.package == "llama-cpp-python"
    assert lock.version == "0.3.36"
    assert len(lock.sha256) == 64 and lock.key.startswith(lock.sha256[:16] + "-")
    assert lock.subdir.endswith("vendor/llama.cpp")
    assert lock.llama_cpp_commit == "0c1e57098"
    assert {"convert_hf_to_gguf.py", "gguf-py", "conversion"} <= set(lock.extract_paths)
    assert {"llama-quantize", "llama-server"} <= set(lock.targets)


def test_build_settings_are_part_of_the_cache_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build made with other targets or cmake arguments is never taken for this one."""
    import dataclasses

    lock = vendor.load_lock()
    other = dataclasses.replace(lock, cmake_args=(*lock.cmake_args, "-DGGML_NATIVE=OFF"))
    assert other.key != lock.key and other.key[:16] == lock.key[:16]
    assert dataclasses.replace(lock, targets=lock.targets[:1]).key != lock.key
    monkeypatch.setattr(vendor.platform, "machine", lambda: "x86_64")
    assert vendor.machine_cmake_args() == (
        "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16",
        "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16",
    )
    monkeypatch.setattr(vendor.platform, "machine", lambda: "aarch64")
    assert vendor.machine_cmake_args() == ()


def test_corrupted_sdist_is_refused_and_nothing_extracted(isolated: Path) -> None:
    real = vendor.load_lock()
    fake = _tarball(isolated / real.filename, {"x/README": b"not llama.cpp"})
    with pytest.raises(IntegrityError, match="does not match the lock"):
        vendor.ensure(sdist=fake, build_tools=False)
    assert not vendor.vendor_dir().exists()


def test_swapped_download_in_cache_is_refused_and_deleted(isolated: Path) -> None:
    lock = vendor.load_lock()
    cached = isolated / "cache" / "downloads" / lock.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"a different file with the same name")
    with pytest.raises(IntegrityError):
        vendor.fetch(lock)
    assert not cached.exists(), "a mismatching download must not stay in the cache"


def test_extract_takes_only_the_locked_paths(isolated: Path) -> None:
    sdist = _tarball(
        isolated / "fake-1.0.tar.gz",
        {
            "fake-1.0/vendor/llama.cpp/convert_hf_to_gguf.py": b"print('convert')\n",
            "fake-1.0/vendor/llama.cpp/gguf-py/gguf/__init__.py": b"",
            "fake-1.0/vendor/llama.cpp/docs/huge.md": b"not needed",
            "fake-1.0/setup.py": b"not needed",
        },
    )
    lock = vendor.load_lock(_lock_file(isolated, sdist))
    dest = isolated / "out"
    vendor.extract(lock, vendor.fetch(lock, sdist), dest)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == [vendor.MARKER, "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert vendor.sources_ready(lock, dest)


def test_extract_refuses_path_traversal(isolated: Path) -> None:
    sdist = _tarball(
        isolated / "fake-1.0.tar.gz",
        {"fake-1.0/vendor/llama.cpp/gguf-py/../../../../escape.txt": b"x"},
    )
    lock = vendor.load_lock(_lock_file(isolated, sdist))
    dest = isolated / "out"
    with pytest.raises(Exception):  # noqa: B017 - tarfile's data filter raises its own error
        vendor.extract(lock, sdist, dest)
    assert not (isolated / "escape.txt").exists()
    assert not dest.exists()


def test_bad_lock_file_is_a_clear_error(tmp_path: Path) -> None:
    lock = tmp_path / "lock.toml"
    lock.write_text('[source]\npackage = "x"\n')
    with pytest.raises(InvalidInputError, match="unreadable lock file"):
        vendor.load_lock(lock)


def test_cli_refuses_a_corrupted_sdist_with_one_line(isolated: Path) -> None:
    fake = _tarball(isolated / "llama_cpp_python-0.3.36.tar.gz", {"a": b"b"})
    result = runner.invoke(app, ["vendor", "--sdist", str(fake), "--no-build"])
    assert result.exit_code == 1
    assert "error: llama_cpp_python-0.3.36.tar.gz: sha256" in result.output
    assert "hint:" in result.output
    assert "Traceback" not in result.output


def test_missing_tool_names_the_fix(isolated: Path) -> None:
    with pytest.raises(Exception, match="llama-quantize is not built") as info:
        vendor.tool("llama-quantize")
    assert "persona-export vendor" in info.value.hint  # type: ignore[attr-defined]


@pytest.mark.llama
def test_built_tools_run() -> None:
    quantize = vendor.tool("llama-quantize")
    out = subprocess.run([quantize, "--help"], capture_output=True, text=True, check=False)
    assert "Q4_K_M" in out.stdout + out.stderr
    server = vendor.tool("llama-server")
    out = subprocess.run([server, "--version"], capture_output=True, text=True, check=False)
    assert out.returncode == 0
    assert vendor.converter_script().name == "convert_hf_to_gguf.py"
    assert (vendor.vendor_dir() / "gguf-py" / "gguf").is_dir()
