# The two commands of the quick start: `make run` and `make test`. Both set up what is missing, then act.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test assets setup clean-outputs

run: assets
	$(VENV)/bin/rifle-bench

test: assets
	$(PY) -m pytest -q

assets: setup
	$(PY) scripts/fetch_assets.py

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

clean-outputs:
	rm -rf outputs
