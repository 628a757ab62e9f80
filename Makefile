# Two commands do all the set-up: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup jars demo test test-reliability lambda-zip clean

setup: $(STAMP) jars

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# Delta Lake and S3A jars from Maven Central, once; later runs use the cached copies.
jars: $(STAMP)
	$(BIN)/fruits jars

demo: setup
	$(BIN)/fruits demo

test: setup
	$(BIN)/python -m pytest -m "not slow"

test-reliability: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .cache work build *.egg-info
