# Two commands do everything from a fresh clone:
#   make demo   set up .venv and export the bundled fixture archive to exports/demo
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARCHIVE ?= data/fixtures/bskyarchive/data/archive.db

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The tests also need the test readers (dev) and Ray (the ray extra: export-many --executor ray).
$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/pipeline run export $(ARCHIVE) --out exports/demo --format csv --format json --format ndjson --include-media

test: $(VENV)/.dev
	$(BIN)/ruff check pipeline cli.py tests benchmarks data/fixtures
	$(BIN)/ruff format --check pipeline cli.py tests benchmarks data/fixtures
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest --memray -m memory

$(VENV)/.bench: $(VENV)/.dev
	$(BIN)/python -m pip install --quiet -e '.[dev,ray,bench]'
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) exports build *.egg-info
