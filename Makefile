# The README's two set-up commands: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv/ with torch pinned to the 2.13.0 CPU wheel before anything else can pull a
# multi-GB CUDA build (see shared/research/offline_assets.md, "resolver trap").
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
TORCH := torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: demo test lint clean llamacpp

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# One stamp per extra set, so `make test` does not download the 240 MB demo model.
$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(PIP) install -q "$(TORCH)" -e ".[dev]"
	touch $@

$(VENV)/.demo: $(VENV)/.dev
	$(PIP) install -q "$(TORCH)" -e ".[demo]"
	touch $@

# The web page is tested in Debian's headless Chromium (Playwright drives it; no browser download),
# with a CJK font so the screenshot shows Chinese. Installed once with apt (root, as on CI).
$(VENV)/.browser: $(BIN)/python
	@if ! command -v chromium >/dev/null || ! fc-list 2>/dev/null | grep -qi wenquanyi; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei; \
	  else echo "note: chromium missing and not root: the web page test will be skipped"; fi; fi
	touch $@

test: $(VENV)/.dev $(VENV)/.browser
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests

# Gemma-3-270M LoRA on the shipped Toyhom sample, then the base-vs-tuned evaluation report.
demo: $(VENV)/.demo
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/medtune train configs/quickstart.yaml
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/medtune eval configs/quickstart.yaml
	@echo "Report: outputs/quickstart/eval/report.md (and report.html)"

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) outputs

# Opt-in: llama.cpp itself (llama-cpp-python built from its PyPI sdist: CMake + a C++ compiler, ~10 min on
# 2 cores), for tests/test_llamacpp.py, export.gguf_quantize and benchmarks/llamacpp_gguf.py.
llamacpp: $(VENV)/.dev
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAVA_BUILD=OFF" \
	  $(PIP) install -q "$(TORCH)" "llama-cpp-python>=0.3"
