"""The pipeline stages: one module each, one public entry point taking a frozen config."""
