"""Shared fixtures. Each block says which tests use it; add yours in a block of your own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gotemplate_runner import GoTemplateRenderer, renderer_or_skip

# The most the whole suite holds under pytest's base temporary folder at once (tiny models,
# GGUFs and project copies; 3.3 GB at most on a full run, sampled every 20 s, with the
# retention settings in pyproject.toml), with a margin.
NEEDED_TEMP_BYTES = 5 * 10**9


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, with one message, when the temporary folder's disk cannot hold the run:
    otherwise every fixture that builds a model errors in turn with a full disk."""
    import tempfile

    from persona_export.artifacts.atomic import free_space, size_text

    # free_space probes the nearest existing folder: a --basetemp pytest has yet to make
    base, free = free_space(
        Path(session.config.option.basetemp or tempfile.gettempdir()).absolute()
    )
    if free < NEEDED_TEMP_BYTES:
        pytest.exit(
            f"only {size_text(free)} free under {base}; the tests need about "
            f"{size_text(NEEDED_TEMP_BYTES)} there: free some space or set TMPDIR to a larger disk",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


# --------------------------------------------------------------------------------------
# gguf / quantize (tests/test_gguf*.py, tests/test_quantize*.py; helpers in tests/ggufkit.py)
# --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors print as users see them (one line, no traceback) unless a test sets the
    debug variable itself."""
    monkeypatch.delenv("PERSONA_EXPORT_DEBUG", raising=False)


@pytest.fixture(scope="session")
def tiny_phi4mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Phi-4-mini-shaped HF folder (o200k tokenizer, bf16 weights): a valid merged
    folder. Shared: copy it before changing anything."""
    from tests import modelkit as mk

    return mk.make_phi4mini(tmp_path_factory.mktemp("phi4mini") / "model")


@pytest.fixture(scope="session")
def phi4mini_project(tmp_path_factory: pytest.TempPathFactory, tiny_phi4mini: Path) -> Path:
    """A project folder: merged_models/cap/ is the tiny Phi-4-mini and the gguf stage wrote
    gguf_models/cap/cap-F16.gguf (+ manifest). Shared: use ``ggufkit.copy_project`` first
    when a test changes anything."""
    from persona_export.stages.gguf import GgufConfig
    from persona_export.stages.gguf import run as run_gguf
    from tests.ggufkit import copy_merged, project_layout

    root = tmp_path_factory.mktemp("phi4mini-project")
    copy_merged(tiny_phi4mini, root, "cap")
    run_gguf(GgufConfig("cap", layout=project_layout(root)))
    return root


# --------------------------------------------------------------------------------------
# modelfile / ollama (tests/test_modelfile*.py, tests/test_chat_formats*.py,
# tests/test_ollama*.py; helpers in tests/gotemplate_runner.py, tests/modelfile_parser.py,
# tests/ollama_kit.py)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def go_template() -> GoTemplateRenderer:
    """Renders Ollama TEMPLATEs with Go's text/template the way Ollama does (the program in
    persona_export/gotemplate/, built once into the cache). Skips when Go is not installed."""
    return renderer_or_skip()


@pytest.fixture(autouse=True)
def _nothing_at_ollamas_default_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches an Ollama that happens to listen at its default address
    (127.0.0.1:11434): the address is replaced by one where nothing listens. Tests of the
    default address set their own (helpers in tests/ollama_kit.py)."""
    from tests.ollama_kit import closed_port_url

    monkeypatch.setattr(
        "persona_export.ollama.registry.DEFAULT_HOST", closed_port_url(), raising=False
    )


# --------------------------------------------------------------------------------------
# merge (tests/test_merge*.py; helpers in tests/mergekit.py). Shared: never modify these
# folders, build adapters next to them.
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def phi_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Phi-4-mini-shaped model (bf16, tied embeddings) with the small vocabulary."""
    from tests import modelkit as mk

    return mk.make_phi4mini(tmp_path_factory.mktemp("merge-phi") / "base", vocab="small")


@pytest.fixture(scope="session")
def llama_spm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (float32, untied lm_head, SentencePiece tokenizer)."""
    from tests import modelkit as mk

    return mk.make_llama(tmp_path_factory.mktemp("merge-llama") / "base")


@pytest.fixture(scope="session")
def gpt2_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 (float32, Conv1D projections, tied lm_head)."""
    from tests import modelkit as mk

    return mk.make_gpt2(tmp_path_factory.mktemp("merge-gpt2") / "base")


# --------------------------------------------------------------------------------------
# verify / export / demo (tests/test_verify*.py, tests/test_export*.py, tests/test_demo*.py;
# helpers in tests/verifykit.py). Shared: copy with verifykit.copy_project before changing
# anything.
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def steered_project(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A tiny Phi-4-mini (o200k tokenizer) steered to end its answers on <|end|>, with the
    adapter of persona ``cap`` and a personas file; nothing exported."""
    from tests.verifykit import make_project

    return make_project(tmp_path_factory.mktemp("verify") / "project")


@pytest.fixture(scope="session")
def exported_project(tmp_path_factory: pytest.TempPathFactory, steered_project):  # type: ignore[no-untyped-def]
    """``steered_project`` copied and exported by the stages: merged model, F16, Q4_K_M and
    Q8_0 GGUFs, Modelfile (FROM the Q4_K_M). Needs the vendored llama.cpp tools."""
    from persona_export.errors import ToolMissingError
    from tests.verifykit import copy_project, export_project

    try:
        return export_project(
            copy_project(steered_project, tmp_path_factory.mktemp("exported") / "p")
        )
    except ToolMissingError as exc:
        pytest.skip(f"{exc.message} ({exc.hint})")


# --------------------------------------------------------------------------------------
# card / push (tests/test_card*.py, tests/test_push*.py; the stand-in hub in tests/hubkit.py)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def verified_project(tmp_path_factory: pytest.TempPathFactory, exported_project):  # type: ignore[no-untyped-def]
    """``exported_project`` copied, verified by the verify stage (it passes) and completed by
    the card stage: what `persona-export export` leaves. Shared: copy it before changing
    anything."""
    from persona_export.stages.card import CardConfig
    from persona_export.stages.card import run as run_card
    from persona_export.stages.verify import VerifyConfig
    from persona_export.stages.verify import run as run_verify
    from tests.verifykit import PERSONA, copy_project

    project = copy_project(exported_project, tmp_path_factory.mktemp("verified") / "p")
    verified = run_verify(VerifyConfig(PERSONA, layout=project.layout, max_tokens=48))
    assert verified.passed, [c.to_json() for c in verified.failed]
    run_card(CardConfig(PERSONA, layout=project.layout))
    return project
