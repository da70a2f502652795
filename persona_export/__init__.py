"""persona-export: LoRA persona adapter -> merged HF model -> GGUF -> quantized GGUF -> Ollama."""

__version__ = "0.1.0"
