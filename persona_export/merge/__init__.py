"""The streaming LoRA merge behind `persona-export merge`.

``safetensors_io`` reads and writes safetensors tensor by tensor; ``adapter`` parses a PEFT
adapter folder; ``base_model`` finds and indexes the base checkpoint; ``plan`` matches the
two and decides every output tensor; ``tensors`` holds PEFT's merge arithmetic; ``execute``
streams the plan into output shards. The stage entry point is
:func:`persona_export.stages.merge.merge`.
"""
