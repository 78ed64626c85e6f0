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

.PHONY: install test test-slow demo lint clean dicom3tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev]' $(TORCH_PINS)
	touch $(STAMP)

install: $(STAMP)

test: lint dicom3tools
	$(BIN)/python -m pytest -q

# dciodvfy (Debian's dicom3tools) checks the DICOM SEG and SR that predict writes
# (tests/cmrfm/test_dicom_out.py). Unpacked into .cache/dicom3tools, no root needed; as root,
# apt-get install if the download fails. Elsewhere (not Debian or Ubuntu) those checks skip.
DICOM3TOOLS := .cache/dicom3tools
dicom3tools:
	@command -v dciodvfy >/dev/null || test -x $(DICOM3TOOLS)/usr/bin/dciodvfy || \
	( mkdir -p $(DICOM3TOOLS) && cd $(DICOM3TOOLS) && apt-get download -q dicom3tools && \
	  dpkg -x dicom3tools_*.deb . && rm -f dicom3tools_*.deb ) || \
	( test "$$(id -u)" = 0 && apt-get update -q && apt-get install -y -q dicom3tools ) || \
	echo "dicom3tools: not installed (needs apt-get and dpkg); the dciodvfy checks will skip"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

demo: $(STAMP)
	$(BIN)/cmrfm demo --out $(OUT) $(if $(DATA),--data $(DATA),)

clean:
	rm -rf runs .cache .pytest_cache
