"""What is present and what is missing, each missing thing with the command that fixes it."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

REQUIRED_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "safetensors",
    "gguf",
    "typer",
    "jinja2",
    "sentencepiece",
    "protobuf",
    "huggingface_hub",
    "numpy",
)
OPTIONAL_PACKAGES: tuple[str, ...] = ()
MIN_FREE_DISK_GB = 20.0
MIN_RAM_GB = 4.0


@dataclass(frozen=True)
class Check:
    """One line of the report. ``required`` checks make ``doctor`` exit non-zero."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _package(name: str, required: bool) -> Check:
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return Check(
            name, False, "not installed", "make setup  (or: pip install -e '.[dev]')", required
        )
    return Check(name, True, version, required=required)


def _vendor_checks() -> list[Check]:
    from persona_export.errors import PersonaExportError
    from persona_export.llamacpp import vendor

    try:
        lock = vendor.load_lock()
    except PersonaExportError as exc:
        return [Check("llama.cpp-lock", False, exc.message, exc.hint)]
    checks = [
        Check("llama.cpp-lock", True, f"{lock.package}=={lock.version} ({lock.llama_cpp_commit})")
    ]
    src = vendor.vendor_dir()
    checks.append(
        Check("llama.cpp-sources", True, str(src))
        if vendor.sources_ready(lock, src)
        else Check("llama.cpp-sources", False, f"not extracted at {src}", "make vendor")
    )
    for tool in (*lock.targets, *vendor.NATIVE_TOOLS):
        path = vendor.bin_dir(lock) / tool
        checks.append(
            Check(tool, True, str(path))
            if path.is_file()
            else Check(tool, False, f"not built ({path})", "make vendor")
        )
    return checks


def _ollama_check() -> Check:
    exe = shutil.which("ollama")
    if exe:
        return Check("ollama-cli", True, exe, required=False)
    host = os.environ.get("OLLAMA_HOST")
    if host:
        return Check("ollama-cli", True, f"no CLI; REST API at OLLAMA_HOST={host}", required=False)
    return Check(
        "ollama-cli",
        False,
        "no `ollama` on PATH and OLLAMA_HOST unset",
        "install Ollama (https://ollama.com/download) or set OLLAMA_HOST; "
        "`persona-export ollama` then registers models",
        required=False,
    )


def _ollama_server_check() -> Check:
    """Whether an Ollama server answers where `ollama` would look for one (OLLAMA_HOST, else
    Ollama's default address), and its version."""
    from persona_export.errors import UsageError
    from persona_export.ollama import registry

    raw = os.environ.get(registry.HOST_VAR, "").strip()
    if raw:
        try:
            host = registry.parse_host(raw)
        except UsageError as exc:
            return Check("ollama-server", False, exc.message, exc.hint, required=False)
        where = f"{registry.HOST_VAR}={raw}"
    else:
        host = registry.DEFAULT_HOST
        where = f"{host} (Ollama's default address)"
    server = registry.probe(host)
    if server.answers:
        return Check(
            "ollama-server", True, f"Ollama {server.version} answers at {where}", required=False
        )
    return Check(
        "ollama-server",
        False,
        f"nothing answers at {where} ({server.error})",
        "start it with `ollama serve` (or set OLLAMA_HOST to where it runs); without a server "
        "or the CLI, `persona-export ollama` prints the command to run later",
        required=False,
    )


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        return None
    return None


def run_checks(workdir: Path = Path(".")) -> list[Check]:
    """Inspect this machine; returns one :class:`Check` per item, never raises."""
    checks = [_package(p, True) for p in REQUIRED_PACKAGES]
    checks += [_package(p, False) for p in OPTIONAL_PACKAGES]
    checks += _vendor_checks()
    for prog, fix in (("cmake", "apt-get install cmake"), ("c++", "apt-get install g++")):
        exe = shutil.which(prog)
        checks.append(Check(prog, bool(exe), exe or "not found", "" if exe else fix))
    go = shutil.which("go")
    checks.append(
        Check(
            "go",
            bool(go),
            go or "not found (Modelfile TEMPLATE checks are skipped)",
            "" if go else "apt-get install golang-go",
            required=False,
        )
    )
    checks.append(_ollama_check())
    checks.append(_ollama_server_check())
    free_gb = shutil.disk_usage(workdir.resolve()).free / 1024**3
    checks.append(
        Check(
            "disk",
            free_gb >= MIN_FREE_DISK_GB,
            f"{free_gb:.1f} GiB free in {workdir.resolve()}",
            ""
            if free_gb >= MIN_FREE_DISK_GB
            else f"free at least {MIN_FREE_DISK_GB:.0f} GiB (a Phi-4-mini export writes about 20 GB)",
            required=False,
        )
    )
    ram = _ram_gb()
    if ram is not None:
        checks.append(
            Check(
                "memory",
                ram >= MIN_RAM_GB,
                f"{ram:.1f} GiB available",
                "" if ram >= MIN_RAM_GB else "close other programs (the merge needs about 2 GiB)",
                required=False,
            )
        )
    return checks
