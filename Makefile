# The two commands: `make serve` and `make test`. Everything else supports them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Serving and building (make serve), then the test and lint tools on top (make test).
INSTALLED := $(VENV)/.installed
DEV_INSTALLED := $(VENV)/.installed-dev
DEFAULT_MODEL := model_repository/all-minilm-l6-v2-biencoder__tokenizer/1/tokenizer.json

.PHONY: serve test test-unit lint format proto install models bench bench-env load gpu-kit gpu-emulation gpu-dry-run clean

serve: models  ## build the default model if needed, then run Triton + the rank service
	$(PY) -m reranker serve

test: lint gpu-emulation  ## lint, type-check, check the dependency rule and run the whole test suite
	$(PY) -m pytest

test-unit: $(DEV_INSTALLED)  ## the unit tests alone: seconds, no Triton
	$(PY) -m pytest tests/unit -q

lint: $(DEV_INSTALLED)  ## ruff, mypy and the import contracts (docs/architecture.md)
	$(VENV)/bin/ruff check src client tests bench
	$(VENV)/bin/ruff format --check src client tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests bench/*.py bench/gpucheck
	$(VENV)/bin/lint-imports

format: $(DEV_INSTALLED)
	$(VENV)/bin/ruff format src client tests bench
	$(VENV)/bin/ruff check --fix src client tests bench

proto: $(INSTALLED)  ## regenerate the gRPC stubs from proto/ (the only way they are made)
	PYTHON=$(PY) tools/gen_proto.sh

install: $(INSTALLED)

load: models $(DEV_INSTALLED)  ## overload (4x capacity, 60 s) and 10-minute soak; not part of `make test`
	$(PY) bench/load.py

BENCH := build/bench-env.installed
INFINITY := build/infinity-venv

bench: $(BENCH)  ## side-by-side benchmark (not part of `make test`): table, JSON and plot
	$(PY) bench/run.py

# Infinity pins sentence-transformers < 4: it gets its own environment, torch first again.
# perf_analyzer comes from the tritonclient 2.41.1 wheel, the last whose binary runs on
# glibc 2.36; its libb64 and libcudart are taken from the nvidia-pytriton wheel at run time.
$(BENCH): $(DEV_INSTALLED) bench/requirements.txt
	$(PY) -m pip install -q -r bench/requirements.txt
	test -x $(INFINITY)/bin/python || $(PYTHON) -m venv $(INFINITY)
	$(INFINITY)/bin/python -m pip install -q --upgrade pip
	$(INFINITY)/bin/python -m pip install -q torch==2.13.0
	$(INFINITY)/bin/python -m pip install -q "infinity-emb[server,torch]==0.0.78" "numpy<2"
	mkdir -p build/perf_analyzer && cd build/perf_analyzer && \
	  $(CURDIR)/$(PY) -m pip download -q --no-deps tritonclient==2.41.1 -d . && \
	  unzip -o -q -j tritonclient-2.41.1-*.whl 'tritonclient-2.41.1.data/data/bin/perf_analyzer' && \
	  chmod +x perf_analyzer
	touch $@

# What bench/gpu_check brings to a GPU machine without network (60 MiB at most), for its
# Python (GPU_PYTHON): make gpu-kit, carry build/gpu-kit with the tree, and run
# bench/gpu_check OUT --wheels build/gpu-kit (README: "The GPU check").
GPU_PYTHON ?= 3.12
gpu-kit: $(INSTALLED)
	$(PY) bench/gpu_kit.py --output build/gpu-kit --python-version $(GPU_PYTHON)

# The GPU check's dry run in `make test` runs as on the lent GPU machine, as far as this one
# allows: under that image's package versions (torch, transformers, sentence-transformers,
# numpy 2; bench/gpu-image-requirements.txt) and through a kit for this machine's Python laid
# out as `make gpu-kit` lays it out (compressed faster: the layout is what is tested).
GPU_IMAGE_ENV := build/gpu-image-env
GPU_TEST_KIT := build/gpu-kit-here
gpu-emulation: $(GPU_IMAGE_ENV)/.installed $(GPU_TEST_KIT)/kit.json

$(GPU_IMAGE_ENV)/.installed: bench/gpu-image-requirements.txt | $(INSTALLED)
	$(UV) venv -q --clear -p "$$($(PY) -c 'import sys; print(sys._base_executable)')" $(GPU_IMAGE_ENV)
	$(UV_PIP) install -q --python $(GPU_IMAGE_ENV)/bin/python -r bench/gpu-image-requirements.txt
	touch $@

$(GPU_TEST_KIT)/kit.json: bench/gpu_kit.py | $(INSTALLED)
	$(PY) bench/gpu_kit.py --output $(GPU_TEST_KIT) --preset 1 \
	  --python-version "$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

# The GPU check's call sizes, concurrency (up to 64 callers) and 1000-document call, on CPU
# with a tiny model: the row budget, the sweep and the report, exercised without a GPU.
gpu-dry-run: $(DEV_INSTALLED)
	$(PY) bench/gpucheck build/gpu-dry-run --cpu --scale gpu

models: $(DEFAULT_MODEL)

# On a machine where PyTorch sees a GPU, the default model is served there (torch runtime).
$(DEFAULT_MODEL): $(INSTALLED)
	$(PY) -m reranker build --default --device auto

# uv installs the same pins as pip, about 5x faster (measured here: 19 s against 99 s for
# torch and the serving requirements). It reads no pip configuration, so the package indexes,
# wheel folders and constraints pip is configured with are handed to it, every index searched
# alike as pip searches them; certificates are the system's, as pip's are. Read only when an
# install runs (recursive variables): pip's configuration costs a second to read.
UV := $(VENV)/bin/uv
$(UV):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv

pip_setting = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^global.$(1)='\(.*\)'$$/\1/p")
comma := ,
PIP_INDEXES = $(call pip_setting,extra-index-url)
PIP_WHEELS = $(subst $(eval) ,$(comma),$(strip $(call pip_setting,find-links)))
PIP_CONSTRAINT = $(call pip_setting,constraint)
UV_PIP = $(if $(PIP_INDEXES),UV_EXTRA_INDEX_URL="$(PIP_INDEXES)") \
	$(if $(PIP_WHEELS),UV_FIND_LINKS="$(PIP_WHEELS)") \
	$(if $(PIP_CONSTRAINT),UV_CONSTRAINT="$(PIP_CONSTRAINT)") \
	UV_INDEX_STRATEGY=unsafe-best-match UV_NATIVE_TLS=1 \
	$(UV) pip
UV_INSTALL = $(UV_PIP) install -q --python $(PY)

# torch and torchvision first and on their own, from this machine's disk (a build that also
# runs on the CPU; no CPU build of torchvision matches torch 2.13): anything that depends on
# torch must find it installed rather than pull another build. torchvision is what
# transformers' vision-language processors (Qwen-VL) need to load at all.
$(INSTALLED): requirements.txt pyproject.toml client/pyproject.toml api/pyproject.toml | $(UV)
	$(UV_INSTALL) torch==2.14.1 torchvision==0.29.1
	$(UV_INSTALL) -r requirements.txt
	$(UV_INSTALL) --no-deps -e api -e . -e client
	touch $@

# The test suite's tools and the client libraries of other projects it calls the server with.
$(DEV_INSTALLED): $(INSTALLED) requirements-dev.txt | $(UV)
	$(UV_INSTALL) -r requirements.txt -r requirements-dev.txt
	touch $@


clean:
	rm -rf $(VENV) logs build
	find model_repository \( -name '*.onnx' -o -name 'tokenizer.json' -o -name 'prompt.json' \) -delete
	find model_repository -type d -name checkpoint -prune -exec rm -rf {} +
