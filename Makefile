# Quick start: `make run` (set up, then start the app) and `make test` (set up, then run the tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser run test test-fast lint bench clean

$(STAMP): requirements.txt requirements-dev.txt tools/install_detectron2.sh pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	bash tools/install_detectron2.sh $(BIN)/python
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

setup: $(STAMP)

# The end-to-end tests drive Debian's chromium with playwright (`playwright install` cannot download here).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

run: setup
	$(BIN)/python launch.py $(ARGS)

test: setup browser
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests not marked slow (no training, server or browser run): a quick check while working.
test-fast: setup browser
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

bench: setup
	$(BIN)/python bench/bench_model.py
	$(BIN)/python bench/bench_mapper.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
