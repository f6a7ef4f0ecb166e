# The two commands: `make serve` and `make test`. Everything else supports them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEFAULT_MODEL := model_repository/all-minilm-l6-v2-biencoder__encoder/1/model.onnx

.PHONY: serve test lint format proto install models bench-env clean

serve: models  ## build the default model if needed, then run Triton + the rank service
	$(PY) -m reranker serve

test: $(INSTALLED)  ## lint, type-check and run the whole test suite
	$(VENV)/bin/ruff check src client tests
	$(VENV)/bin/ruff format --check src client tests
	$(VENV)/bin/mypy
	$(PY) -m pytest

lint: $(INSTALLED)
	$(VENV)/bin/ruff check src client tests
	$(VENV)/bin/ruff format --check src client tests
	$(VENV)/bin/mypy

format: $(INSTALLED)
	$(VENV)/bin/ruff format src client tests
	$(VENV)/bin/ruff check --fix src client tests

proto: $(INSTALLED)  ## regenerate the gRPC stubs from proto/ (the only way they are made)
	PYTHON=$(PY) tools/gen_proto.sh

install: $(INSTALLED)

models: $(DEFAULT_MODEL)

$(DEFAULT_MODEL): $(INSTALLED)
	$(PY) -m reranker build --default

# torch first and on its own: torch==2.13.0 is the CPU build on this machine's disk, and
# anything that depends on torch must find it installed rather than pull a CUDA build.
$(INSTALLED): requirements.txt requirements-dev.txt pyproject.toml client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e . -e client
	touch $@

clean:
	rm -rf $(VENV) logs build
	find model_repository \( -name '*.onnx' -o -name 'tokenizer.json' \) -delete
