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

# Opt-in: llama.cpp itself (llama-cpp-python built from its PyPI sdist: CMake + a C++ compiler, ~8 min on
# 2 idle cores), for tests/test_llamacpp.py, export.gguf_quantize and benchmarks/llamacpp_gguf.py.
# x86-64: AVX2/FMA/F16C kernels instead of -march=native, which on CPUs with AMX (Sapphire Rapids and later)
# also builds llama.cpp's AMX weight repacking; where the OS has not granted the process AMX tile state (the
# project machine's VM) decoding a q8_0/q4_k file then crashes with a segmentation fault.
LLAMACPP_CPU = $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON,-DGGML_NATIVE=ON)
llamacpp: $(VENV)/.dev
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) CMAKE_ARGS="$(LLAMACPP_CPU) -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAVA_BUILD=OFF" \
	  $(PIP) install -q --no-cache-dir "$(TORCH)" "llama-cpp-python==0.3.36"
