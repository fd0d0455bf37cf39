# mailserver: `make run` starts the embedded default, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-tools lint clean bench

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
	$(BIN)/ruff check mailserver tests twisted bench
	$(BIN)/ruff format --check mailserver tests twisted bench

# Side by side with Postfix + Dovecot and aiosmtpd (issue 7); BENCH_SCALE=small: < 1 min.
BENCH_SCALE ?= full
bench: setup
	$(BIN)/python -c 'import aiosmtpd' 2>/dev/null || $(BIN)/pip install -q aiosmtpd
	$(BIN)/python -c 'import shutil, sys; sys.exit(not shutil.which("py-spy", path="$(BIN)"))' \
		|| $(BIN)/pip install -q py-spy
	$(BIN)/python -m bench --scale $(BENCH_SCALE) $(BENCH_ARGS)

test: setup test-tools lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) run build *.egg-info

# A guided, traced push/pull scenario on its own free ports (docs/push-pull.md).
.PHONY: demo
demo: setup
	$(BIN)/python -m mailserver.demo
