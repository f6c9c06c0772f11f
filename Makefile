# Rookery: `make run` starts a server with built-in defaults; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUM := $(shell cksum pyproject.toml | cut -d' ' -f1)
# `make run` installs only what the server needs; `make test`/`lint` add the test tools
RUNTIME := $(VENV)/.runtime-$(SUM)
STAMP := $(VENV)/.installed-$(SUM)

.PHONY: run test lint bench clean web

# the built-in web client (Converse.js, pinned in web/package-lock.json), from the npm registry; its
# install scripts are not run (the package ships its built dist/).  Without npm the server runs
# without the web client (/ says how to install it).
WEB_CLIENT := web/node_modules/converse.js/dist/converse.min.js

$(WEB_CLIENT): web/package.json web/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix web --ignore-scripts --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the web client (Converse.js) is not installed"; fi

web: $(WEB_CLIENT)

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e .
	rm -f $(VENV)/.runtime-*
	touch $@

$(STAMP): $(RUNTIME)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

run: $(RUNTIME) $(WEB_CLIENT)
	$(VENV)/bin/rookery serve $(if $(CONFIG),--config $(CONFIG))

STRICT := src/rookery/xml src/rookery/jid.py src/rookery/streams src/rookery/routing src/rookery/module.py

test: $(STAMP) $(WEB_CLIENT)
	$(VENV)/bin/ruff check src tests bench bench/compare fuzz
	$(VENV)/bin/mypy src/rookery
	$(VENV)/bin/mypy --strict $(STRICT)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench bench/compare fuzz
	$(VENV)/bin/mypy src/rookery
	$(VENV)/bin/mypy --strict $(STRICT)

bench: $(STAMP)
	bash bench/run.sh

clean:
	rm -rf $(VENV) rookery-data web/node_modules
