"""`persona-export doctor`: report what is present and what is missing."""

from __future__ import annotations

from persona_export import console
from persona_export.cli._output import record

EPILOG = "Example: persona-export doctor"


def doctor() -> None:
    """Check packages, vendored llama.cpp, Go, Ollama, disk and memory; say how to fix gaps."""
    from persona_export.doctor import run_checks
    from persona_export.errors import ToolMissingError

    checks = run_checks()
    record(
        checks=[
            {"name": c.name, "ok": c.ok, "required": c.required, "detail": c.detail, "fix": c.fix}
            for c in checks
        ]
    )
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "ok  " if c.ok else ("MISS" if c.required else "warn")
        line = f"{mark} {c.name:<{width}}  {c.detail}"
        if not c.ok and c.fix:
            line += f"  -> {c.fix}"
        console.out(line)
    missing = [c.name for c in checks if c.required and not c.ok]
    if missing:
        raise ToolMissingError(
            f"missing: {', '.join(missing)}", "run the fix shown after each MISS line above"
        )
    console.info("everything required is present")
