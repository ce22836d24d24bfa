# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test install install-test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e . --config-settings editable_mode=compat
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

# Two worker processes (the CI machine has 2 cores); one test file stays on one worker, so
# each file's session fixtures (the docs run, the fixture generators) run once.
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -p xdist -n 2 --dist loadfile

bench: $(VENV)/.installed-test
	$(PY) scripts/bench.py

clean:
	rm -rf $(VENV) examples/out build *.egg-info
