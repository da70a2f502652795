"""`persona-export doctor`: report what is present and what is missing."""

from __future__ import annotations

import typer

from persona_export import console

EPILOG = "Example: persona-export doctor"


def doctor() -> None:
    """Check packages, vendored llama.cpp, Go, Ollama, disk and memory; say how to fix gaps."""
    from persona_export.doctor import run_checks

    checks = run_checks()
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "ok  " if c.ok else ("MISS" if c.required else "warn")
        line = f"{mark} {c.name:<{width}}  {c.detail}"
        if not c.ok and c.fix:
            line += f"  -> {c.fix}"
        console.out(line)
    missing = [c.name for c in checks if c.required and not c.ok]
    if missing:
        console.info(f"missing: {', '.join(missing)}")
        raise typer.Exit(1)
    console.info("everything required is present")
