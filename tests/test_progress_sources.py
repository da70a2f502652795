"""Where the progress of each long step comes from: cmake's "[ NN%]" (three targets, each
counting to 100 % again), the converter's tqdm "Writing:" line, llama-quantize's "[ i/ n]"
per tensor, verify's engines and answers."""

from __future__ import annotations

from typing import Any

from persona_export.console import Bar


class Recorder(Bar):
    """A bar that remembers every update."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def update(self, completed: float | None = None, **kwargs: Any) -> None:
        self.calls.append({"completed": completed, **{k: v for k, v in kwargs.items() if v}})


def test_cmake_targets_share_one_bar() -> None:
    from persona_export.llamacpp.vendor import _BuildLines

    bar = Recorder()
    lines = _BuildLines(bar, targets=3)
    stream = ["[ 50%] Building C", "noise", "[100%] Linking", "[  0%] Built target", "[ 50%] x"]
    stream += ["[100%] y", "[  8%] z", "[100%] Built target llama-imatrix"]
    for line in stream:
        lines(line)
    done = [round(c["completed"], 1) for c in bar.calls]
    assert done == [16.7, 33.3, 33.3, 50.0, 66.7, 69.3, 100.0]


def test_converter_bytes_from_its_tqdm_line() -> None:
    from persona_export.llamacpp.converter import _ConverterLines

    bar, warnings = Recorder(), []  # type: ignore[var-annotated]
    lines = _ConverterLines(warnings, bar)
    lines("Writing:   0%|          | 0.00/269M [00:00<?, ?byte/s]")
    lines("Writing:  21%|██        | 56.6M/269M [00:00<00:01, 191Mbyte/s]")
    lines("Writing:  99%")  # no amounts: the percentage
    lines("WARNING:hf-to-gguf:something odd")
    assert bar.calls == [
        {"completed": 0.0, "total": 269e6},
        {"completed": 56.6e6, "total": 269e6},
        {"completed": 99, "total": 100, "unit": "%"},
    ]
    assert warnings == ["something odd"]


def test_quantize_tensors() -> None:
    from persona_export.llamacpp.quantize import _QuantizeLines

    bar = Recorder()
    lines = _QuantizeLines([], bar)
    lines("[   1/ 272] output_norm.weight - [   576,      1,      1,      1], type =    f32")
    lines("[ 272/ 272] blk.29.ffn_up.weight")
    assert bar.calls == [{"completed": 1, "total": 272}, {"completed": 272, "total": 272}]


def test_verify_steps_count_each_engine_once() -> None:
    from persona_export.verify.engines import Steps, step_count

    bar = Recorder()
    steps = Steps(bar)
    notes = ("merged model", "PEFT", "base", "F16", "F16 answers", "Q4_K_M", "Go")
    for note in (*notes, "llama-server", "answer 1"):
        steps.next(note)
    assert step_count(quants=1, prompts=1) == 9
    assert step_count(quants=0, prompts=1) == 6  # no base model, no F16 answers
    # the first step starts at 0; each next one counts the one before as done
    assert [c.get("advance", 0) for c in bar.calls] == [0, 1, 1, 1, 1, 1, 1, 1, 1]
    assert bar.calls[-1]["note"] == "answer 1"
    steps.finish()  # the checks are over: the last step counts too
    assert sum(c.get("advance", 0) for c in bar.calls) == 9
