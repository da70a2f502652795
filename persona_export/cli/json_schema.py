"""The keys of every ``--json`` document, as data: a JSON Schema per command. The tests
validate each command's document against it, and README's "JSON output" tables are these
rows (``python -m persona_export.cli.json_schema`` prints them; tests/test_json_output.py
checks that the README says the same).

Objects list every key they may have (``additionalProperties: false``): a key added to a
result without being documented here fails the tests. ``figures`` is the exception: each
stage's measurements, documented per stage, open to new ones.
"""

from __future__ import annotations

from typing import Any

STR: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer"}
NUM: dict[str, Any] = {"type": "number"}
BOOL: dict[str, Any] = {"type": "boolean"}


def _obj(properties: dict[str, tuple[dict[str, Any], str]], **extra: Any) -> dict[str, Any]:
    """A closed object: every key required, each with its schema and meaning."""
    return {
        "type": "object",
        "properties": {k: {**s, "description": d} for k, (s, d) in properties.items()},
        "required": list(properties),
        "additionalProperties": False,
        **extra,
    }


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


STATES = ["up to date", "stale", "unknown", "missing"]
STATUSES = ["done", "up to date", "skipped by request", "not run", "failed"]

DEFS: dict[str, dict[str, Any]] = {
    "error": _obj(
        {
            "message": (STR, "what is wrong (the `error:` line)"),
            "hint": (STR, "what to do (the `hint:` line; may be empty)"),
        }
    ),
    "stage_result": _obj(
        {
            "stage": (STR, "merge, gguf, quantize, modelfile, verify, card, ollama or push"),
            "persona": (STR, "the persona"),
            "status": ({"enum": STATUSES}, "how the stage ended"),
            "seconds": (NUM, "how long it took"),
            "outputs": (_array(STR), "the files or folders it wrote or found up to date"),
            "output_bytes": (
                {"type": "object", "additionalProperties": _nullable(INT)},
                "each output's size now (a folder: its files together; null: gone)",
            ),
            "figures": (
                {"type": "object"},
                "what it measured: merge `tensors`, `merged_tensors`, `bytes`; gguf "
                "`file_type`, `size_bytes`, `bits_per_weight`, `n_weights`, `tensor_count`; "
                "quantize `quants` (each `type`, `path`, `size_bytes`, `bits_per_weight`, "
                "`status`, `seconds`); modelfile `format`, `stops`; verify `passed`, `checks` "
                "(each `name`, `status`, `summary`, `figures`); ollama `model_name`, `method`, "
                "`host`",
            ),
            "warnings": (_array(STR), "warnings about the input, in the tool's words"),
            "notes": (_array(STR), "what the stage chose or fixed"),
            "detail": (STR, "the one-line summary the table shows"),
        }
    ),
    "persona_export": _obj(
        {
            "persona": (STR, "the persona"),
            "ok": (BOOL, "every stage ran without failing"),
            "seconds": (NUM, "the whole chain's time"),
            "error": (_nullable(_ref("error")), "the error that stopped the chain, or null"),
            "stages": (_array(_ref("stage_result")), "the stages that ran, in order"),
        }
    ),
    "status_stage": _obj(
        {
            "stage": (STR, "merge, gguf, quantize, modelfile, verify or card"),
            "state": (
                {"enum": STATES},
                "whether `export` would redo it (`unknown`: only "
                "hashing a big file could tell; `missing`: never made)",
            ),
            "reason": (STR, "why it is stale or unknown: what changed, or the stage before"),
            "changed": (_array(STR), "the recorded inputs and outputs that differ"),
            "outputs": (_array(STR), "the outputs its manifests vouch for"),
            "output_bytes": (
                {"type": "object", "additionalProperties": _nullable(INT)},
                "each output's size (null: gone)",
            ),
            "detail": (STR, "the one-line summary the table shows"),
            "figures": (
                {"type": "object"},
                "`recorded`: each output's figures and options, as its manifest has them",
            ),
        }
    ),
    "verify_verdict": _obj(
        {
            "passed": (BOOL, "the last verify passed"),
            "created": (_nullable(STR), "when it ran (UTC)"),
            "summary": (STR, "the failed checks, or the key figures"),
            "checks": (
                _array({"type": "object"}),
                "each check: `name`, `status` and its `nmse`, `kl_mean`, `top1_agreement` "
                "when it has them",
            ),
        }
    ),
    "status_persona": _obj(
        {
            "persona": (STR, "the persona"),
            "adapter": (_nullable(STR), "its adapter folder (null: none)"),
            "quant": (_nullable(STR), "the quantization the Modelfile uses"),
            "ollama_name": (_nullable(STR), "the Ollama model name the Modelfile was written for"),
            "registered": (
                _nullable(BOOL),
                "Ollama lists the model (null: Ollama not reachable or not asked)",
            ),
            "verify": (_nullable(_ref("verify_verdict")), "the last verify's verdict"),
            "stages": (
                _array(_ref("status_stage")),
                "merge, gguf, quantize, modelfile, verify, card",
            ),
        }
    ),
    "ollama_server": _obj(
        {
            "address": (STR, "where it was asked (OLLAMA_HOST, else the default address)"),
            "reachable": (BOOL, "a server answered"),
            "version": (_nullable(STR), "its version"),
            "error": (_nullable(STR), "why it did not answer"),
            "models": (_array(STR), "the models it lists (`GET /api/tags`)"),
        }
    ),
}

ENVELOPE: dict[str, tuple[dict[str, Any], str]] = {
    "schema_version": ({"const": 1}, "this layout's version (1)"),
    "persona_export_version": (STR, "the tool's version"),
    "command": (STR, "the command"),
    "ok": (BOOL, "the command succeeded (exit code 0)"),
    "exit_code": (INT, "the exit code: 0, 1 (failed), 2 (usage), 130 (Ctrl-C), 143 (SIGTERM)"),
    "seconds": (NUM, "how long the command took"),
    "error": (_nullable(_ref("error")), "the error, or null"),
}

STAGE_COMMAND: dict[str, tuple[dict[str, Any], str]] = {
    "result": (_ref("stage_result"), "the stage's result")
}

COMMANDS: dict[str, dict[str, tuple[dict[str, Any], str]]] = {
    "vendor": {
        "vendor": (
            _obj(
                {
                    "commit": (STR, "the pinned llama.cpp commit"),
                    "source_dir": (STR, "the extracted sources"),
                    "bin_dir": (STR, "the built tools"),
                    "downloaded": (BOOL, "the sdist was fetched and extracted now"),
                    "built": (BOOL, "the tools were built now"),
                }
            ),
            "the vendored llama.cpp",
        )
    },
    "doctor": {
        "checks": (
            _array(
                _obj(
                    {
                        "name": (STR, "what was checked"),
                        "ok": (BOOL, "present and usable"),
                        "required": (BOOL, "a missing one fails the command"),
                        "detail": (STR, "what was found"),
                        "fix": (STR, "the command that fixes it"),
                    }
                )
            ),
            "one per check",
        )
    },
    "merge": STAGE_COMMAND,
    "gguf": STAGE_COMMAND,
    "quantize": STAGE_COMMAND,
    "modelfile": STAGE_COMMAND,
    "ollama": STAGE_COMMAND,
    "verify": STAGE_COMMAND,
    "card": STAGE_COMMAND,
    "export": {
        "personas": (_array(_ref("persona_export")), "one per persona, in order"),
    },
    "push": {
        "result": (_ref("stage_result"), "the stage's result"),
        "dry_run": (BOOL, "nothing was uploaded (--dry-run)"),
        "repositories": (
            _array(
                _obj(
                    {
                        "repo": (STR, "OWNER/NAME"),
                        "kind": ({"enum": ["merged", "gguf"]}, "which folder it gets"),
                        "url": (STR, "the repository's URL"),
                        "commit_url": (
                            _nullable(STR),
                            "the commit made (null: dry run, or nothing changed)",
                        ),
                        "files": (
                            _array(
                                _obj(
                                    {
                                        "path": (STR, "path in the repository"),
                                        "bytes": (INT, "size"),
                                    }
                                )
                            ),
                            "what is (or would be) uploaded",
                        ),
                    }
                )
            ),
            "one per repository",
        ),
    },
    "status": {
        "personas": (_array(_ref("status_persona")), "one per persona found"),
        "ollama": (_nullable(_ref("ollama_server")), "what Ollama said (null: --no-ollama)"),
    },
    "demo": {
        "demo": (
            _obj(
                {
                    "base_dir": (STR, "the demo base model folder"),
                    "adapter_dir": (STR, "the trained adapter"),
                    "trained": (BOOL, "the adapter was trained now"),
                    "step_seconds": (
                        {"type": "object", "additionalProperties": NUM},
                        "seconds by step: base, train, export, ask",
                    ),
                    "answer": (
                        _nullable({"type": "object"}),
                        "the answer: `question`, `text`, `stop_type`, `stopping_word`, "
                        "`tokens`, `rendered_by` (null: the export failed)",
                    ),
                }
            ),
            "the demo's steps",
        ),
        "export": (_ref("persona_export"), "the export of demo_pirate"),
    },
}


def schema(command: str) -> dict[str, Any]:
    """The JSON Schema of ``command``'s document. Its own keys are required when it
    succeeded; a command that failed before it had results has only the envelope."""
    own = COMMANDS[command]
    document = _obj({**ENVELOPE, **own})
    document["required"] = list(ENVELOPE)
    document["if"] = {"properties": {"ok": {"const": True}}}
    document["then"] = {"required": list(own)}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": DEFS, **document}


# --------------------------------------------------------------------------------------
# The README's tables
# --------------------------------------------------------------------------------------


def _type(s: dict[str, Any]) -> str:
    if "$ref" in s:
        return s["$ref"].rsplit("/", 1)[1].replace("_", " ")
    if "anyOf" in s:
        return " or ".join(_type(x) for x in s["anyOf"])
    if "enum" in s:
        return "one of " + ", ".join(f"`{v}`" for v in s["enum"])
    if "const" in s:
        return "integer" if isinstance(s["const"], int) else "string"
    if s.get("type") == "array":
        return f"array of {_type(s['items'])}"
    return str(s.get("type", "any"))


def rows(properties: dict[str, Any], prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, type, meaning) for each key, nested closed objects as ``a.b`` and their items as
    ``a[].b``; a ``$ref`` is named, not expanded."""
    out = []
    for key, s in properties.items():
        name = f"{prefix}{key}"
        out.append((name, _type(s), s.get("description", "")))
        if s.get("additionalProperties") is False:
            out += rows(s["properties"], f"{name}.")
        items = s.get("items", {})
        if s.get("type") == "array" and items.get("additionalProperties") is False:
            out += rows(items["properties"], f"{name}[].")
    return out


def tables() -> dict[str, list[tuple[str, str, str]]]:
    """Every README table: the envelope, each command's own keys, each shared object."""
    found = {"every document": rows(_obj(ENVELOPE)["properties"])}
    for command, own in COMMANDS.items():
        if own is not STAGE_COMMAND or command == "merge":
            title = (
                "merge, gguf, quantize, modelfile, ollama, verify"
                if own is STAGE_COMMAND
                else command
            )
            found[title] = rows(_obj(own)["properties"])
    for name, definition in DEFS.items():
        found[name.replace("_", " ")] = rows(definition["properties"])
    return found


def markdown() -> str:
    """The tables as README markdown."""
    parts = []
    for title, table in tables().items():
        parts.append(f"**{title}**\n\n| key | type | meaning |\n| --- | --- | --- |")
        parts += [f"| `{k}` | {t} | {m} |" for k, t, m in table]
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown())
