# The project's interface: the README's commands, CI and developers use these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-all lint format bench clean

install: $(VENV)/.installed

# uv resolves and installs in seconds; constraints.txt pins every version (regenerate with `make lock`).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[dev]" -c constraints.txt
	touch $@

lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --quiet -o constraints.txt

demo: install
	$(BIN)/nba demo

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest --nbmake --nbmake-timeout=1800 tests notebooks

test-all: install
	$(BIN)/pytest --nbmake --nbmake-timeout=1800 -m "slow or not slow" tests notebooks

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf data/demo .pytest_cache
