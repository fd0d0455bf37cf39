# mailserver: `make run` starts the embedded default, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-tools lint clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

setup: $(STAMP)

run: setup
	mkdir -p run
	$(BIN)/twistd -n --pidfile run/twistd.pid mailserver --config etc/mailserver.toml

test-tools:
	scripts/install-test-tools.sh

lint: setup
	$(BIN)/ruff check mailserver tests twisted
	$(BIN)/ruff format --check mailserver tests twisted

test: setup test-tools lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) run build *.egg-info
