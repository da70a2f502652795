"""Train the demo persona's LoRA adapter on the CPU in a couple of minutes.

Real PEFT LoRA (rank and targets from the data file, q/k/v/o by default) on the demo base,
with a plain torch loop: each example is the persona's system prompt, one question and its
answer, rendered by the base tokenizer's chat template; the loss covers only the answer and
its end-of-turn token, so the model learns how to answer and when to stop, not to predict
the prompt. A fixed seed, full-batch AdamW, and epochs until the mean loss falls below the
data's ``target_loss`` (the persona shows) or ``max_epochs``.

The adapter folder gets ``adapter_config.json``, ``adapter_model.safetensors``, the base's
tokenizer files copied byte for byte (re-saving them through transformers 5 would rewrite
``tokenizer_class``) and a manifest: a later run with the same data, persona and base is
skipped.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from persona_export import console
from persona_export.artifacts import Artifact, record_file
from persona_export.errors import InvalidInputError, UsageError
from persona_export.personas import load_personas

STAGE = "demo-train"
TRAIN_FORMAT = 1
DATA_DIR = Path(__file__).resolve().parent / "data"
DEMO_DATA = DATA_DIR / "demo_pirate.toml"
# A second persona with another voice, for the fidelity benchmark (bench/bench_fidelity.py).
DEMO_BUTLER_DATA = DATA_DIR / "demo_butler.toml"
DEMO_PERSONAS = DATA_DIR / "personas.toml"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class TrainingData:
    """The persona, its system prompt, the pairs, the demo question and the settings."""

    persona: str
    system: str
    question: str
    pairs: tuple[tuple[str, str], ...]
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class TrainConfig:
    """Train ``data_file``'s persona (system prompt from ``personas_file``) on ``base_dir``;
    write the adapter to ``adapter_dir``. ``force`` retrains even when up to date."""

    base_dir: Path
    adapter_dir: Path
    data_file: Path = DEMO_DATA
    personas_file: Path = DEMO_PERSONAS
    threads: int | None = None
    force: bool = False


@dataclass(frozen=True)
class TrainResult:
    """The adapter and how training went (losses are epoch means over the answer tokens)."""

    adapter_dir: Path
    up_to_date: bool
    epochs: int
    steps: int
    first_loss: float
    final_loss: float
    trainable_parameters: int
    seconds: float


_SETTINGS = {
    "seed": int,
    "rank": int,
    "alpha": int,
    "target_modules": list,
    "learning_rate": float,
    "batch_size": int,
    "max_epochs": int,
    "target_loss": float,
}


def load_training_data(data_file: Path, personas_file: Path) -> TrainingData:
    """Read and check the training data and the persona's system prompt."""
    try:
        data = tomllib.loads(data_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInputError(f"cannot read the demo data {data_file}: {exc}") from exc
    persona = data.get("persona")
    if not isinstance(persona, str):
        raise UsageError(f"{data_file}: 'persona' must be a string")
    definition = load_personas([personas_file]).get(persona)
    if definition is None or not definition.system:
        raise UsageError(f"{personas_file} defines no system prompt for {persona}")
    settings = data.get("training", {})
    for key, kind in _SETTINGS.items():
        value = settings.get(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UsageError(f"{data_file}: [training] {key} must be a {kind.__name__}")
    pairs = tuple(
        (str(p["question"]), str(p["answer"]))
        for p in data.get("pairs", [])
        if isinstance(p, dict) and "question" in p and "answer" in p
    )
    if len(pairs) < 2:
        raise UsageError(f"{data_file}: give at least two [[pairs]] with question and answer")
    question = data.get("question")
    if not isinstance(question, str) or not question.strip():
        raise UsageError(f"{data_file}: 'question' (asked at the end of the demo) is missing")
    return TrainingData(persona, definition.system, question, pairs, settings)


def _examples(tokenizer: Any, data: TrainingData) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per pair; labels are -100 except on the answer and end of turn."""
    eos = tokenizer.eos_token_id
    examples = []
    for question, answer in data.pairs:
        messages = [
            {"role": "system", "content": data.system},
            {"role": "user", "content": question},
        ]
        prompt: Any = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        full: Any = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": answer}],
            tokenize=True,
            return_dict=False,
        )
        prompt, full = [int(i) for i in prompt], [int(i) for i in full]
        if full[: len(prompt)] != prompt:
            raise InvalidInputError(
                "the chat template renders the prompt differently with and without the answer; "
                "cannot mask the loss to the answer"
            )
        answer_ids = full[len(prompt) :]
        if eos in answer_ids:  # train the end of turn, not what the template writes after it
            answer_ids = answer_ids[: answer_ids.index(eos) + 1]
        ids = prompt + answer_ids
        examples.append((ids, [-100] * len(prompt) + answer_ids))
    return examples


def _inputs(config: TrainConfig) -> dict[str, Path]:
    inputs = {"data": config.data_file, "personas": config.personas_file}
    for name in ("config.json", "model.safetensors", *TOKENIZER_FILES):
        inputs[f"base/{name}"] = config.base_dir / name
    return inputs


def train_adapter(config: TrainConfig) -> TrainResult:
    """Train (or reuse) the demo adapter; see the module docstring."""
    started = time.monotonic()
    data = load_training_data(config.data_file, config.personas_file)
    artifact = Artifact(
        stage=STAGE,
        path=config.adapter_dir,
        folder=True,
        options={"format": TRAIN_FORMAT, "settings": dict(data.settings)},
        inputs=_inputs(config),
        protected=(config.base_dir,),
    )
    if artifact.fresh(force=config.force):
        done = artifact.recorded() or {}
        return TrainResult(
            config.adapter_dir,
            True,
            int(done.get("epochs", 0)),
            int(done.get("steps", 0)),
            float(done.get("first_loss", 0.0)),
            float(done.get("final_loss", 0.0)),
            int(done.get("trainable_parameters", 0)),
            time.monotonic() - started,
        )
    artifact.check_writable()
    model, losses, steps, n_trainable = _fit(config, data, started)
    with artifact.write() as writing:
        model.peft_config["default"].base_model_name_or_path = str(config.base_dir)
        model.save_pretrained(str(writing.tmp), safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (config.base_dir / name).is_file():
                shutil.copyfile(config.base_dir / name, writing.tmp / name)
        figures = {
            "epochs": len(losses),
            "steps": steps,
            "first_loss": losses[0],
            "final_loss": losses[-1],
            "trainable_parameters": n_trainable,
        }
        writing.record(
            {k: record_file(v) for k, v in artifact.inputs.items()},
            extra={**figures, "losses": losses, "persona": data.persona},
        )
    seconds = time.monotonic() - started
    return TrainResult(
        config.adapter_dir, False, len(losses), steps, losses[0], losses[-1], n_trainable, seconds
    )


def _fit(
    config: TrainConfig, data: TrainingData, started: float
) -> tuple[Any, list[float], int, int]:
    """The LoRA model trained on ``data`` (epoch mean losses, steps, trainable parameters)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = data.settings
    torch.manual_seed(s["seed"])
    if config.threads:
        torch.set_num_threads(config.threads)
    tokenizer = AutoTokenizer.from_pretrained(config.base_dir)
    examples = _examples(tokenizer, data)
    base = AutoModelForCausalLM.from_pretrained(config.base_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=s["rank"],
        lora_alpha=s["alpha"],
        target_modules=list(s["target_modules"]),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=s["learning_rate"], weight_decay=0.0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    console.info(
        f"training {data.persona}: {len(examples)} pairs, LoRA r={s['rank']} on "
        f"{', '.join(s['target_modules'])} ({n_trainable:,} parameters), up to "
        f"{s['max_epochs']} epochs until loss < {s['target_loss']}"
    )
    model.train()
    per_epoch = -(-len(examples) // s["batch_size"])
    with console.progress("training", total=s["max_epochs"] * per_epoch, unit="steps") as bar:
        losses, steps = _epochs(model, optimizer, examples, pad, s, bar, started)
    model.eval()
    return model, losses, steps, n_trainable


def _epochs(
    model: Any,
    optimizer: Any,
    examples: list[tuple[list[int], list[int]]],
    pad: int,
    s: Mapping[str, Any],
    bar: console.Bar,
    started: float,
) -> tuple[list[float], int]:
    """Train epoch after epoch until the mean loss is under the target (or the last epoch);
    return each epoch's mean loss and the steps taken. The bar counts steps."""
    import torch

    order_rng = torch.Generator().manual_seed(s["seed"])
    losses: list[float] = []
    steps = 0
    for epoch in range(s["max_epochs"]):
        order = torch.randperm(len(examples), generator=order_rng).tolist()
        total, count = 0.0, 0
        for start in range(0, len(order), s["batch_size"]):
            batch = [examples[i] for i in order[start : start + s["batch_size"]]]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch])
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            total += float(loss.item()) * len(batch)
            count += len(batch)
            bar.update(steps, note=f"epoch {epoch + 1}, loss {total / count:.3f}")
        losses.append(total / count)
        console.info(
            f"  epoch {epoch + 1}: loss {losses[-1]:.3f} ({time.monotonic() - started:.0f} s)"
        )
        if losses[-1] < s["target_loss"]:
            bar.update(total=steps)  # done early: the loss is there
            break
    return losses, steps
