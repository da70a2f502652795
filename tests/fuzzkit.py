"""Helpers for the fuzz tests (tests/test_fuzz.py): a workspace whose every file outside the
output folders is snapshotted around each command, and the checks every malformed input must
pass (the strategies that make the inputs are in tests/fuzz_strategies.py).

The budget: ``FUZZ_EXAMPLES`` examples per target (default :data:`CI_EXAMPLES`, what
``make test`` runs in well under a minute on 2 cores); ``make fuzz`` raises it. With the CI
budget the examples are derandomized (the same ones every run, so CI is reproducible); with
a budget of one's own they are random, and hypothesis prints the failing example.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 12
_SMALL_FILE = 1 << 20  # files up to this size are snapshotted by content, larger by stat


def fuzz_settings() -> settings:
    """Hypothesis settings for one fuzz target (see the module docstring)."""
    budget = os.environ.get("FUZZ_EXAMPLES", "").strip()
    return settings(
        max_examples=int(budget) if budget else CI_EXAMPLES,
        derandomize=not budget,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
            HealthCheck.filter_too_much,
        ],
    )


# --------------------------------------------------------------------------------------------
# The workspace and the checks
# --------------------------------------------------------------------------------------------

OUTPUT_DIRS = ("merged_models", "gguf_models")
_TEMPORARY = re.compile(r"^\..+\.(partial|old|work)-\d+-\d+$")


def _identity(path: Path) -> tuple[Any, ...]:
    st_ = path.lstat()
    if path.is_symlink():
        return ("link", os.readlink(path))
    if path.is_dir():
        return ("dir", st_.st_mode)
    if st_.st_size <= _SMALL_FILE:
        return ("file", st_.st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
    return ("file", st_.st_mode, st_.st_size, st_.st_mtime_ns, st_.st_ino)


@dataclass
class Workspace:
    """``scope``: everything a command might touch by mistake (the inputs, a sentinel folder
    beside them); ``project``: the working directory, whose ``merged_models/`` and
    ``gguf_models/`` are the only places the command may write."""

    scope: Path
    project: Path

    @property
    def outputs(self) -> tuple[Path, ...]:
        return tuple(self.project / name for name in OUTPUT_DIRS)

    def snapshot(self) -> dict[str, tuple[Any, ...]]:
        """Every path under ``scope`` outside the output folders, with its identity."""
        skip = {p.resolve() for p in self.outputs}
        found: dict[str, tuple[Any, ...]] = {}

        def walk(folder: Path) -> None:
            for path in sorted(folder.iterdir()):
                if path.resolve() in skip and not path.is_symlink():
                    continue
                found[path.relative_to(self.scope).as_posix()] = _identity(path)
                if path.is_dir() and not path.is_symlink():
                    walk(path)

        walk(self.scope)
        return found

    def manifests(self) -> dict[str, tuple[Any, ...]]:
        """Our manifests under the output folders (what makes an output look complete)."""
        found = {}
        for out in self.outputs:
            if out.is_dir():
                for path in out.rglob("*"):
                    name = path.name
                    if path.is_file() and (
                        name == "persona_export_manifest.json"
                        or name.endswith(".manifest.json")
                        or name == "verify.json"
                    ):
                        found[path.relative_to(self.project).as_posix()] = _identity(path)
        return found

    def temporaries(self) -> list[str]:
        return sorted(
            p.relative_to(self.project).as_posix()
            for out in self.outputs
            if out.is_dir()
            for p in out.rglob("*")
            if _TEMPORARY.match(p.name)
        )

    @contextlib.contextmanager
    def watch(self) -> Iterator[dict[str, Any]]:
        """Run a command inside: afterwards, nothing outside the output folders changed and
        the command left no temporaries. The yielded dict gets the manifests before/after."""
        before = self.snapshot()
        manifests_before = self.manifests()
        seen: dict[str, Any] = {}
        cwd = Path.cwd()
        os.chdir(self.project)  # as users run it: default folders are the project's
        try:
            yield seen
        finally:
            os.chdir(cwd)
        after = self.snapshot()
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"the command touched paths outside its output folders: {changed}"
        assert not self.temporaries(), f"temporaries left behind: {self.temporaries()}"
        seen["manifests_before"] = manifests_before
        seen["manifests_after"] = self.manifests()


def check_outcome(result: Any, seen: dict[str, Any], *, may_succeed: bool = True) -> None:
    """What every command must do with any input: exit 0 having written a complete output,
    or exit non-zero with exactly one ``error:`` line (not an internal error), no traceback
    and no output that looks complete but was not made by a successful run."""
    output = result.output
    assert "Traceback" not in output, output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {output}")
    if result.exit_code == 0:
        assert may_succeed, f"accepted an input it must refuse: {output}"
        return
    lines = result.stderr.splitlines()
    if result.exit_code == 2 and lines and lines[0].startswith("Usage: "):
        return  # the command line itself was refused by Click (its usage message, exit 2)
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "internal error" not in errors[0], errors[0]
    after = lines[lines.index(errors[0]) + 1 :]  # the message is one line, then its hint
    assert all(line.startswith("hint: ") for line in after) and len(after) <= 1, result.stderr
    assert seen["manifests_after"] == seen["manifests_before"], (
        "a failed run left an output that looks complete: "
        f"{sorted(set(seen['manifests_after']) - set(seen['manifests_before']))}"
    )


def reset_outputs(ws: Workspace) -> None:
    for out in ws.outputs:
        shutil.rmtree(out, ignore_errors=True)
