"""What this tool knows about Hugging Face models: base model resolution, tokenizer facts,
chat templates and chat formats."""
