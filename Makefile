# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision pinned here (wheels on local disk); pyproject keeps loose ranges for users.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DATA ?=
# The phantom demo writes to runs/demo, a real-data demo beside it.
OUT ?= $(if $(DATA),runs/demo_real,runs/demo)

.PHONY: install test test-slow demo lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev]' $(TORCH_PINS)
	touch $(STAMP)

install: $(STAMP)

test: lint
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

demo: $(STAMP)
	$(BIN)/cmrfm demo --out $(OUT) $(if $(DATA),--data $(DATA),)

clean:
	rm -rf runs .cache .pytest_cache
