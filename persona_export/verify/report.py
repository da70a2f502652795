"""Reading a verify report after the fact: did it pass, and does it vouch for these files as
they are now?

The report (``gguf_models/<persona>/verify.json``, written by :mod:`persona_export.stages.
verify`) records the content hash of every input it read under a name: ``merged/<file>``
for the merged folder, ``gguf/<file>`` for each GGUF, ``modelfile`` for the Modelfile. A file
is certified when the report passed and its hash there is the file's hash now (hashes are
reused while size and mtime are unchanged, so a multi-GB GGUF costs a ``stat``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export.artifacts import read_json, record_file


@dataclass(frozen=True)
class Certificate:
    """What a report says about some files: ``passed`` (None: no readable report), the
    report's checks, and ``problems`` (why it does not vouch for each file that fails)."""

    report: Path
    passed: bool | None
    checks: tuple[Mapping[str, Any], ...] = ()
    problems: tuple[str, ...] = ()
    llama_cpp_commit: str | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.passed is True and not self.problems


def certify(report: Path, files: Mapping[str, Path]) -> Certificate:
    """Whether ``report`` passed and vouches for ``files`` (report input name -> path)."""
    data = read_json(report)
    if data is None or data.get("stage") != "verify":
        return Certificate(report, None, problems=(f"there is no verify report ({report})",))
    passed = data.get("passed") is True
    recorded_inputs = data.get("inputs")
    inputs: dict[str, Any] = recorded_inputs if isinstance(recorded_inputs, dict) else {}
    problems = [] if passed else [f"verify failed ({report})"]
    for name, path in files.items():
        recorded = inputs.get(name)
        if not isinstance(recorded, dict):
            problems.append(f"verify did not check {path.name}")
        elif not path.is_file() or record_file(path, recorded).sha256 != recorded.get("sha256"):
            problems.append(f"{path.name} changed after verify checked it")
    checks = tuple(c for c in data.get("checks") or [] if isinstance(c, dict))
    commit = data.get("llama_cpp_commit")
    return Certificate(
        report,
        passed,
        checks,
        tuple(problems),
        commit if isinstance(commit, str) else None,
    )
