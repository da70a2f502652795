"""The libraries stay quiet: no transformers/PEFT/huggingface_hub progress bars, deprecation
warnings or config notes on stderr unless --verbose asks for them.

Run in a child process: the libraries write to the real stderr (their handlers keep the
stream they found at import), which an in-process runner does not capture.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.modelfile_kit import layout_args
from tests.ollama_kit import closed_port_url
from tests.verifykit import PERSONA, Project, copy_project

# What the libraries print, never persona-export: tqdm bars ("Loading weights: 100%|███|"),
# Python warnings ("FutureWarning: ...", with the source line after them), transformers'
# notes ("[transformers] This model config has set a `rope_parameters[...]`").
THIRD_PARTY = re.compile(
    r"\d+%\|"
    r"|\b[A-Z]\w*Warning: "
    r"|^\s*warnings\.warn\("
    r"|^\[transformers\]"
    r"|rope_parameters"
    r"|it/s\]"
)


def third_party(stderr: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]+", stderr) if THIRD_PARTY.search(line)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PERSONA_EXPORT_DEBUG", None)
    env["OLLAMA_HOST"] = closed_port_url()  # never a real Ollama (verify does not use it)
    env["PYTHONWARNINGS"] = "default"  # Python would show every library warning
    return env


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "persona_export", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=1800,
    )


@pytest.mark.llama
@pytest.mark.slow
def test_verify_shows_library_output_only_with_verbose(
    tmp_path: Path, exported_project: Project
) -> None:
    """verify loads the merged model and PEFT base + adapter through transformers (its
    "Loading weights" bars, the note about Phi-4-mini's rope_parameters)."""
    project = copy_project(exported_project, tmp_path / "p")
    args = ["verify", "--persona", PERSONA, *layout_args(project.layout), "--max-tokens", "48"]
    quiet = _cli(*args, "--force")
    assert quiet.returncode == 0, quiet.stderr
    assert third_party(quiet.stderr) == [], quiet.stderr
    # our own progress is there (plain lines)
    assert re.search(r"^  verifying( \(.+\))?: done in ", quiet.stderr, re.M), quiet.stderr
    verbose = _cli(*args, "--force", "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert third_party(verbose.stderr), verbose.stderr
    assert "$ " in verbose.stderr  # the external commands (pe-logits, llama-server)


TRAINING = """
persona = "demo_pirate"
question = "What is a program?"

[training]
seed = 0
rank = 2
alpha = 4
target_modules = ["qkv_proj"]
learning_rate = 1e-3
batch_size = 2
max_epochs = 2
target_loss = 0.0

[[pairs]]
question = "What is Python?"
answer = "Arr, a language, matey!"

[[pairs]]
question = "What is a bug?"
answer = "Arr, a stowaway, matey!"
"""

TRAIN = """
import sys
from pathlib import Path
from persona_export import console
from persona_export.demo.train import DEMO_PERSONAS, TrainConfig, train_adapter

base, adapter, data, verbose = sys.argv[1:5]
with console.output_mode(console.Mode(verbose=verbose == "1")):
    train_adapter(TrainConfig(Path(base), Path(adapter), Path(data), DEMO_PERSONAS))
"""


@pytest.mark.slow
def test_demo_training_shows_library_output_only_with_verbose(
    tmp_path: Path, tiny_phi4mini: Path
) -> None:
    """The demo's training (transformers loads the base, PEFT wraps it) on a tiny model,
    in the output mode every command runs in (cli/_output.py): the demo's own command
    needs the demo model package and minutes, this path is the same code."""
    data = tmp_path / "data.toml"
    data.write_text(TRAINING, encoding="utf-8")
    seen = {}
    for verbose in ("0", "1"):
        done = subprocess.run(
            [sys.executable, "-c", TRAIN, str(tiny_phi4mini), str(tmp_path / f"a{verbose}"),
             str(data), verbose],
            capture_output=True, text=True, env=_env(), timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        seen[verbose] = done.stderr
    assert third_party(seen["0"]) == [], seen["0"]
    assert re.search(r"^  training \(epoch 2, loss [\d.]+\): done in ", seen["0"], re.M)
    assert third_party(seen["1"]), seen["1"]
