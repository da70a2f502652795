"""What this tool knows about llama.cpp: the pinned sources and their build, the converter
and its launcher, llama-quantize, llama-server, the GGUF reader and the native logits dumper."""
