"""What this tool knows about Ollama: the Modelfile grammar and type, parameter and name rules,
the Go TEMPLATE renderer and registration (CLI and REST)."""
