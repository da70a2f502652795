"""Model cards (persona_export/hf/model_card.py, templates/model_card.md.j2): the base's
licence and hub id as read from its folder, and cards huggingface_hub reads back with the
metadata the hub uses (base_model and its relation, licence, pipeline, library, tags)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import pytest
from huggingface_hub import ModelCard

from persona_export.hf.model_card import (
    PLACEHOLDER_REPO,
    base_hub_id,
    base_license,
    merged_facts,
    render_card,
)

SYSTEM = 'You are Captain Codebeard. Say "arr" and keep ```code``` exact.'


def facts(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    base = tmp_path / "Phi-4-mini-instruct"
    base.mkdir(exist_ok=True)
    (base / "README.md").write_text("---\nlicense: mit\nlicense_link: https://x/LICENSE\n---\n")
    made, _ = merged_facts(
        persona="captain_codebeard",
        display_name="Captain Codebeard",
        system=SYSTEM,
        base_model="microsoft/Phi-4-mini-instruct",
        base_dir=base,
        adapter_config={
            "peft_type": "LORA",
            "r": 16,
            "lora_alpha": 32,
            "target_modules": ["qkv_proj", "o_proj"],
            "base_model_name_or_path": str(tmp_path / "secret-local-path"),
        },
        tokenizer_note="the adapter has no tokenizer: the base's files",
        dtype="bfloat16",
        license_files=["LICENSE"],
    )
    return {**made, **changes}


def gguf_facts(tmp_path: Path) -> dict[str, Any]:
    return facts(
        tmp_path,
        kind="gguf",
        llama_cpp_commit="0c1e57098",
        quants=[
            {"file": "cap-F16.gguf", "type": "F16", "size": 7_680_000_000, "bits_per_weight": 16.0},
            {
                "file": "cap-Q4_K_M.gguf",
                "type": "Q4_K_M",
                "size": 2_490_000_000,
                "bits_per_weight": 5.2,
            },
        ],
        default_quant="Q4_K_M",
        model_name="captain-codebeard",
        format="phi4mini",
        stops=["<|end|>"],
        parameters={"temperature": 0.8},
        verify={
            "checks": [{"name": "peft-vs-merged", "status": "passed", "summary": "NMSE 2e-12"}]
        },
    )


def test_licence_from_the_card_then_config_then_the_licence_file(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    assert base_license(base).fields == {}
    (base / "LICENSE").write_text("Some custom terms.\n")
    assert base_license(base).fields == {
        "license": "other",
        "license_name": "base-model-license",
        "license_link": "LICENSE",
    }
    (base / "LICENSE").write_text(
        "\n                                 Apache License\n                           Version 2.0, January 2004\n"
    )
    assert base_license(base).fields == {"license": "apache-2.0"}
    (base / "LICENSE").write_text("MIT License\n\nCopyright (c) Microsoft Corporation.\n")
    assert base_license(base).fields == {"license": "mit"}
    assert base_license(base).source == "the base model's LICENSE file"
    (base / "config.json").write_text(json.dumps({"license": "llama3.2"}))
    assert base_license(base).fields == {"license": "llama3.2"}
    (base / "README.md").write_text(
        "---\nlicense: other\nlicense_name: gemma\nlicense_link: https://ai.google.dev/gemma/terms\n---\n# x\n"
    )
    found = base_license(base)
    assert found.fields == {
        "license": "other",
        "license_name": "gemma",
        "license_link": "https://ai.google.dev/gemma/terms",
    }
    assert found.source == "README.md of the base model"


def test_base_id_is_a_hub_id_never_a_local_path(tmp_path: Path) -> None:
    local = tmp_path / "my-base"
    local.mkdir()
    assert base_hub_id("microsoft/Phi-4-mini-instruct", local)[0] == "microsoft/Phi-4-mini-instruct"
    assert base_hub_id(str(local), local) == (None, "a local base model (my-base)")
    snapshot = tmp_path / "hub" / "models--microsoft--Phi-4-mini-instruct" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert base_hub_id(str(snapshot), snapshot)[0] == "microsoft/Phi-4-mini-instruct"
    # a local copy whose own card says it is a quantized copy of a hub model (the demo's)
    (local / "README.md").write_text(
        "---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\nbase_model_relation: quantized\n---\n"
    )
    assert base_hub_id(str(local), local) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "through a local quantized copy of it, as that folder's card says",
    )
    (local / "README.md").write_text(
        "---\nbase_model: org/other\nbase_model_relation: finetune\n---\n"
    )
    assert base_hub_id(str(local), local)[0] is None  # a fine-tune is another model


def test_merged_card_reads_back_with_the_hub_metadata(tmp_path: Path) -> None:
    text = render_card(facts(tmp_path), repo="me/captain-codebeard")
    card = ModelCard(text)
    assert card.data.to_dict() == {
        "base_model": "microsoft/Phi-4-mini-instruct",
        "base_model_relation": "finetune",
        "library_name": "transformers",
        "license": "mit",
        "license_link": "https://x/LICENSE",
        "pipeline_tag": "text-generation",
        "tags": ["persona", "lora"],
    }
    assert card.text.startswith("\n# Captain Codebeard\n")
    assert f"````text\n{SYSTEM}\n````" in card.text  # a fence longer than the prompt's
    assert json.dumps(SYSTEM) in card.text  # the transformers example's system message
    assert 'AutoModelForCausalLM.from_pretrained(repo, dtype="auto")' in card.text
    assert 'repo = "me/captain-codebeard"' in card.text
    assert "r `16`, lora_alpha `32`, target_modules `o_proj, qkv_proj`" in card.text
    assert PLACEHOLDER_REPO not in text and str(tmp_path) not in text


def test_gguf_card_files_usage_and_verify_figures(tmp_path: Path) -> None:
    text = render_card(gguf_facts(tmp_path), repo="me/cap")
    data = ModelCard(text).data.to_dict()
    assert data["base_model"] == "microsoft/Phi-4-mini-instruct"
    assert data["base_model_relation"] == "quantized"
    assert data["library_name"] == "gguf"
    assert data["tags"] == ["persona", "lora", "gguf", "ollama", "llama.cpp"]
    assert "ollama run hf.co/me/cap:Q4_K_M" in text
    assert "llama-server -hf me/cap:Q4_K_M" in text
    assert "| `cap-Q4_K_M.gguf` | Q4_K_M | 2.5 GB | 5.20 |" in text
    assert "llama.cpp commit `0c1e57098`" in text
    assert "| peft-vs-merged | passed: NMSE 2e-12 |" in text
    assert 'gguf_file = "me/cap", "cap-F16.gguf"' in text  # transformers reads a GGUF
    # with the merged model shared too, the GGUF card names it as what it quantizes
    both = render_card(gguf_facts(tmp_path), repo="me/cap-gguf", companion="me/cap")
    assert ModelCard(both).data.to_dict()["base_model"] == "me/cap"
    assert 'repo = "me/cap"' in both
    # the local copy, before a repository is chosen
    assert f"ollama run hf.co/{PLACEHOLDER_REPO}:Q4_K_M" in render_card(gguf_facts(tmp_path))


def test_no_verify_report_and_no_licence_are_said_not_hidden(tmp_path: Path) -> None:
    bare = gguf_facts(tmp_path) | {"verify": None, "license": {"fields": {}, "source": ""}}
    text = render_card(bare, repo="me/cap")
    assert "No passing verify report" in text
    assert "declares no licence that persona-export could read" in text
    assert "license" not in ModelCard(text).data.to_dict()


def test_a_missing_fact_is_an_error_not_an_empty_line(tmp_path: Path) -> None:
    broken = facts(tmp_path)
    del broken["dtype"]
    with pytest.raises(jinja2.UndefinedError):
        render_card(broken, repo="me/cap")
