"""Model cards: the ``README.md`` of a merged folder and of a GGUF folder.

A card is built from *facts* (a JSON-able dict the writing stage records in its manifest:
what the persona is, the base, its licence, the adapter, and for GGUF folders the files and
the verify figures) and rendered with ``templates/model_card.md.j2`` (Jinja, StrictUndefined:
a missing fact is an error, never an empty line). The YAML front matter comes from
huggingface_hub's ``ModelCardData`` and the text is read back with ``ModelCard``, so the hub
gets metadata its own library writes. huggingface_hub's ``ModelCard.from_template`` is not
used because it renders with a plain ``jinja2.Template`` (undefined values become empty).

The same facts are rendered twice: into the local folder without a repository id (usage
lines say ``<user>/<repo>``), and by ``push`` for the repository it uploads to. llama.cpp's
converter reads the merged card's front matter into the GGUF's ``general.*`` metadata
(licence, tags, base model), so that metadata travels with the weights.

Where the facts come from:

* base id (:func:`base_hub_id`): the hub id given as ``--base-model-id``; for a local folder,
  the id of a hub-cache snapshot (``models--org--name``), else the model the folder's own
  card says it is a quantized copy of; else none (a local path is never written);
* licence (:func:`base_license`): the base's ``README.md`` front matter (``license``,
  ``license_name``, ``license_link``), else ``config.json``'s ``license``, else a
  ``LICENSE`` file recognised as MIT or Apache-2.0 by its title, else ``other`` pointing at
  the ``LICENSE`` file carried along; none found is said, not guessed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export.errors import InvalidInputError
from persona_export.units import human_size

CARD_NAME = "README.md"
PLACEHOLDER_REPO = "<user>/<repo>"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_ADAPTER_FIELDS = (
    "peft_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "use_rslora",
    "use_dora",
    "target_modules",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "task_type",
)
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE")


def is_repo_id(value: str) -> bool:
    """Whether ``value`` has the shape of a hub repository id, ``owner/name``."""
    return bool(_REPO_ID.fullmatch(value)) and ".." not in value and not value.endswith(".")


def _front_matter(readme: Path) -> dict[str, Any]:
    if not readme.is_file():
        return {}
    from huggingface_hub import metadata_load

    try:
        data = metadata_load(readme)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(
            f"{readme} has unreadable front matter ({exc.__class__.__name__})",
            "fix its YAML header (between the --- lines) or remove the file",
        ) from exc
    return data or {}


def base_hub_id(base_model: str, base_dir: Path) -> tuple[str | None, str]:
    """The hub id to name as ``base_model`` and how it was found (module docstring)."""
    if not Path(base_model).expanduser().exists() and is_repo_id(base_model):
        return base_model, "by its hub id"
    real = Path(os.path.realpath(base_dir))
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        parts = real.parent.parent.name.split("--")[1:]
        if len(parts) == 2 and is_repo_id("/".join(parts)):
            return "/".join(parts), "from the Hugging Face cache"
    card = _front_matter(base_dir / CARD_NAME)
    named = card.get("base_model")
    quantized = card.get("base_model_relation") == "quantized"
    if quantized and isinstance(named, str) and is_repo_id(named):
        return named, "through a local quantized copy of it, as that folder's card says"
    return None, f"a local base model ({base_dir.name})"


@dataclass(frozen=True)
class License:
    """What the card's ``license`` fields say, and where that was read."""

    fields: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"fields": dict(self.fields), "source": self.source}


def _license_from_text(path: Path) -> str | None:
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:400]
    except OSError:
        return None
    words = " ".join(head.split()).lower()
    if words.startswith("mit license") or words.startswith("the mit license"):
        return "mit"
    if "apache license" in words and "version 2.0" in words:
        return "apache-2.0"
    return None


def base_license(base_dir: Path) -> License:
    """The base's licence (module docstring); ``License()`` when it declares none."""
    card = _front_matter(base_dir / CARD_NAME)
    keys = ("license", "license_name", "license_link")
    found = {k: str(card[k]) for k in keys if isinstance(card.get(k), str)}
    if found.get("license"):
        return License(found, f"{CARD_NAME} of the base model")
    config = base_dir / "config.json"
    if config.is_file():
        import json

        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("license")
        except (OSError, ValueError, AttributeError):
            value = None
        if isinstance(value, str) and value:
            return License({"license": value}, "config.json of the base model")
    for name in LICENSE_FILES:
        path = base_dir / name
        if path.is_file():
            spdx = _license_from_text(path)
            if spdx:
                return License({"license": spdx}, f"the base model's {name} file")
            return License(
                {"license": "other", "license_name": "base-model-license", "license_link": name},
                f"the base model's {name} file (not recognised: shipped as {name})",
            )
    return License()


def adapter_summary(adapter_config: Mapping[str, Any]) -> dict[str, str]:
    """The adapter_config.json fields a card shows, as text (never its local paths)."""

    def text(value: Any) -> str:
        if isinstance(value, Mapping):
            return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
        if isinstance(value, (list, tuple, set)):
            return ", ".join(sorted(str(v) for v in value))
        return str(value)

    return {k: text(adapter_config[k]) for k in _ADAPTER_FIELDS if adapter_config.get(k)}


def _fence(text: str) -> str:
    """A Markdown code fence longer than any run of backticks in ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def card_data(facts: Mapping[str, Any], companion: str | None) -> Any:
    """The front matter as huggingface_hub's ModelCardData (a GGUF card names the merged
    model's repository, its ``companion``, as what it quantizes when there is one)."""
    from huggingface_hub import ModelCardData

    kind = facts["kind"]
    base = companion if kind == "gguf" and companion else facts["base_model"]
    relation = "finetune" if kind == "merged" else "quantized"
    tags = ["persona", "lora"] + (["gguf", "ollama", "llama.cpp"] if kind == "gguf" else [])
    extra: dict[str, Any] = {"base_model_relation": relation} if base else {}
    extra.update(facts["license"]["fields"])  # license, license_name, license_link
    return ModelCardData(
        base_model=base,
        pipeline_tag="text-generation",
        library_name="transformers" if kind == "merged" else "gguf",
        tags=tags,
        **extra,
    )


def render_card(
    facts: Mapping[str, Any], *, repo: str | None = None, companion: str | None = None
) -> str:
    """The card's text for ``facts`` (module docstring): usage lines name ``repo``
    (``<user>/<repo>`` when None); ``companion`` is the other repository of the same persona
    when both are shared (a merged card points to the GGUF one, a GGUF card names the merged
    one as the model it quantizes)."""
    import jinja2
    from huggingface_hub import ModelCard

    from persona_export.resources import templates_dir

    data = card_data(facts, companion)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )
    env.filters["size"] = human_size
    system = facts.get("system")
    text = env.get_template("model_card.md.j2").render(
        card_data=data.to_yaml(),
        facts=facts,
        repo=repo or PLACEHOLDER_REPO,
        companion=companion,
        base_model=data.base_model,
        system_fence=_fence(system or ""),
    )
    card = ModelCard(text)  # parses the front matter back: a card the hub can read
    if card.data.to_dict().get("base_model") != data.base_model:
        raise InvalidInputError(
            "internal error: the model card does not read back as written",
            "this is a bug in persona-export or templates/model_card.md.j2; please report it",
        )
    return str(card.content)


def merged_facts(
    *,
    persona: str,
    display_name: str,
    system: str | None,
    base_model: str,
    base_dir: Path,
    adapter_config: Mapping[str, Any],
    tokenizer_note: str,
    dtype: str,
    license_files: list[str],
) -> tuple[dict[str, Any], list[str]]:
    """The facts of a merged folder's card, and notes on what it cannot say."""
    from persona_export import __version__

    base_id, base_note = base_hub_id(base_model, base_dir)
    licence = base_license(base_dir)
    notes = []
    if base_id is None:
        notes.append(
            f"the model card names no base_model: {base_dir} is a local folder with no hub id "
            "(pass the hub id, e.g. --base-model-id microsoft/Phi-4-mini-instruct, to link "
            "the persona to its base on the hub)"
        )
    if not licence.fields:
        notes.append(
            f"the base model ({base_dir}) declares no licence in README.md, config.json or a "
            "LICENSE file: the model card says so; check its terms before sharing"
        )
    facts = {
        "kind": "merged",
        "persona": persona,
        "display_name": display_name,
        "system": system,
        "base_model": base_id,
        "base_note": base_note,
        "license": licence.to_json(),
        "license_files": license_files,
        "adapter": adapter_summary(adapter_config),
        "tokenizer_note": tokenizer_note,
        "dtype": dtype,
        "tool_version": __version__,
    }
    return facts, notes
