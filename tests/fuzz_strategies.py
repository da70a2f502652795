"""Hypothesis strategies for the fuzz tests (tests/test_fuzz.py): the inputs users, careless
or hostile, hand the tool: adapter configs, safetensors files, persona names, personas TOML,
chat templates and JSON files of ours or a model's. Most of what they make is malformed; some
of it is valid, which the checks allow (tests/fuzzkit.py)."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from hypothesis import strategies as st

_floats = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 0.5, 1e308, -1.0, 8.0, 1e-320]),
    st.floats(allow_nan=True, allow_infinity=True),
)
_ints = st.one_of(
    st.sampled_from([0, -1, 1, 2, 4, 8, 16, 2**31, 2**63, -(2**63), 10**30]),
    st.integers(),
)
_texts = st.one_of(
    st.sampled_from(
        ["", " ", "q_proj", ".*", "(", "[", "*", "\x00", "a\nb", "all-linear", "\u202e"]
    ),
    st.text(max_size=20),
)
json_values = st.recursive(
    st.none() | st.booleans() | _ints | _floats | _texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_texts, children, max_size=4),
    max_leaves=12,
)

ADAPTER_CONFIG_KEYS = (
    "r",
    "lora_alpha",
    "use_rslora",
    "use_dora",
    "fan_in_fan_out",
    "rank_pattern",
    "alpha_pattern",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "modules_to_save",
    "peft_type",
    "lora_bias",
    "base_model_name_or_path",
    "init_lora_weights",
    "task_type",
)


@st.composite
def adapter_configs(draw: Any, valid: dict[str, Any]) -> bytes:
    """adapter_config.json bytes: the valid config with some keys changed or removed, or
    something that is not a config at all."""
    kind = draw(st.sampled_from(["edit", "edit", "edit", "whole", "bytes"]))
    if kind == "bytes":
        return bytes(draw(st.binary(max_size=64)))
    if kind == "whole":
        return json.dumps(draw(json_values)).encode()
    config = dict(valid)
    for key in draw(st.lists(st.sampled_from(ADAPTER_CONFIG_KEYS), min_size=1, max_size=3)):
        if draw(st.booleans()) and key in config:
            del config[key]
        else:
            config[key] = draw(
                st.one_of(
                    json_values,
                    st.dictionaries(_texts, _ints | _floats, max_size=3),
                    st.lists(_texts, max_size=3),
                )
            )
    return json.dumps(config, allow_nan=True).encode()


_DTYPES = ["F32", "F16", "BF16", "F64", "I8", "I64", "U8", "U16", "U64", "BOOL", "F8_E4M3", "X"]


@st.composite
def safetensors_files(draw: Any, valid: bytes) -> bytes:
    """adapter_model.safetensors bytes: the valid file with its header entries edited, its
    length prefix changed, truncated, or bytes flipped."""
    (header_len,) = struct.unpack("<Q", valid[:8])
    header = json.loads(valid[8 : 8 + header_len])
    data = valid[8 + header_len :]
    kind = draw(st.sampled_from(["entry", "entry", "prefix", "truncate", "flip", "names"]))
    if kind == "prefix":
        prefix = draw(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, header_len - 1, 2**63]))
        return prefix.to_bytes(8, "little") + valid[8:]
    if kind == "truncate":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "flip":
        raw = bytearray(valid)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, min(len(raw), 8 + header_len) - 1))
            raw[at] = draw(st.integers(0, 255))
        return bytes(raw)
    names = [k for k in header if k != "__metadata__"]
    if kind == "names":
        name = draw(st.sampled_from(names))
        new = draw(
            st.sampled_from(
                [
                    name.replace("lora_A", "lora_C"),
                    name.replace("lora_B", "lora_A"),
                    name.replace("q_proj", "nonexistent"),
                    name.replace("base_model.model.", ""),
                    name + ".extra",
                    "lm_head.weight",
                    "base_model.model.model.embed_tokens.weight",
                ]
            )
            | _texts
        )
        header[new] = header.pop(name)
    else:
        for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True)):
            entry = header[name]
            what = draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry"]))
            if what == "dtype":
                entry["dtype"] = draw(st.sampled_from(_DTYPES) | _texts)
            elif what == "shape":
                entry["shape"] = draw(
                    st.lists(_ints, max_size=3) | st.just([*reversed(entry["shape"])]) | json_values
                )
            elif what == "data_offsets":
                entry["data_offsets"] = draw(st.lists(_ints, max_size=3) | json_values)
            else:
                header[name] = draw(json_values)
    raw = json.dumps(header, allow_nan=True).encode()
    return len(raw).to_bytes(8, "little") + raw + data


_CONTROL = st.characters(min_codepoint=0, max_codepoint=31) | st.sampled_from(
    ["\x7f", "\x85", "\u2028", "\u202e", "\ufeff"]
)
persona_names = st.one_of(
    st.sampled_from(
        ["cap\n", "cap\r", "\ncap", "ca\x00p", "../cap", "..", ".", "cap/..", "-cap", "c ap", ""]
    ),
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=4), _CONTROL, st.text(max_size=4)),
    st.text(max_size=12),
)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(value)


_toml_scalars = st.none() | st.booleans() | _ints | _floats | _texts | persona_names
_toml_values = st.recursive(
    _toml_scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(_texts, c, max_size=3),
    max_leaves=6,
).filter(lambda v: v is not None and not _has_none(v))


def _has_none(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, list):
        return any(_has_none(v) for v in value)
    if isinstance(value, dict):
        return any(_has_none(v) for v in value.values())
    return False


PERSONA_FIELDS = ("system", "display_name", "ollama_name", "parameters", "stops", "extra")
PARAMETER_NAMES = ("temperature", "top_p", "top_k", "num_ctx", "stop", "seed", "mirostat", "x")


@st.composite
def personas_tomls(draw: Any, persona: str) -> str:
    """A personas file: tables with fields of any type (the persona's own among them), or
    text that is not TOML."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.text(max_size=80))
    lines = []
    for name in draw(st.lists(st.just(persona) | persona_names, min_size=1, max_size=3)):
        lines.append(f"[personas.{json.dumps(name)}]")
        for key in draw(st.lists(st.sampled_from(PERSONA_FIELDS), max_size=4, unique=True)):
            if key == "parameters":
                params = draw(
                    st.dictionaries(
                        st.sampled_from(PARAMETER_NAMES) | _texts, _toml_values, max_size=3
                    )
                )
                lines.append(f"parameters = {_toml_value(params)}")
            else:
                lines.append(f"{key} = {_toml_value(draw(_toml_values))}")
    return "\n".join(lines) + "\n"


_JINJA_PIECES = [
    "{% for m in messages %}",
    "{% endfor %}",
    "{% if m['role'] == 'system' %}",
    "{% if loop.first %}",
    "{% else %}",
    "{% endif %}",
    "{{ m['content'] }}",
    "{{ m.role }}",
    "<|{{ m['role'] }}|>",
    "<|end|>",
    "{{ bos_token }}",
    "{{ eos_token }}",
    "{% if add_generation_prompt %}<|assistant|>{% endif %}",
    "{{ raise_exception('no') }}",
    "{% for i in range(50) %}{% for j in range(50) %}x{% endfor %}{% endfor %}",
    "{{ messages|tojson }}",
    "{{ strftime_now('%Y') }}",
    "{{ ''.__class__ }}",
    "{{ undefined_thing.x }}",
    "{{ 1/0 }}",
    "{{ 'a' * 10 }}",
    "{% set x = namespace(a=1) %}",
    "{% generation %}",
    "{% endgeneration %}",
    "{% break %}",
    "{{",
    "{%",
    "}}",
    "{#",
]
chat_templates = st.one_of(
    st.lists(st.sampled_from(_JINJA_PIECES) | st.text(max_size=6), max_size=10).map("".join),
    st.text(max_size=40),
)


@st.composite
def json_edits(draw: Any, valid: dict[str, Any]) -> bytes:
    """A JSON file of ours or a model's (tokenizer files, manifests): the valid object with
    values replaced at any depth, keys removed, or something that is not that object."""
    kind = draw(st.sampled_from(["edit", "edit", "edit", "whole", "bytes"]))
    if kind == "bytes":
        return bytes(draw(st.binary(max_size=64)))
    if kind == "whole":
        return json.dumps(draw(json_values), allow_nan=True).encode()
    data = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(1, 3))):
        target = data
        path = []
        while isinstance(target, (dict, list)) and target and draw(st.booleans()):
            key = draw(
                st.sampled_from(sorted(target) if isinstance(target, dict) else range(len(target)))
            )
            path.append(key)
            if not isinstance(target[key], (dict, list)):
                break
            target = target[key]
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if not path:
            if isinstance(data, dict) and data:
                key = draw(st.sampled_from(sorted(data)))
                data[key] = draw(json_values)
            continue
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return json.dumps(data, allow_nan=True).encode()
