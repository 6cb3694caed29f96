# Entry points on a fresh machine (each creates or reuses .venv):
#   make sample   run sample.py on the built-in default model
#   make app      the interactive page on http://127.0.0.1:7860 (app.py)
#   make test     run the test suite (what CI runs)
#   make test-fast  the suite without the tests marked slow (a few minutes on 2 cores)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export JAX_PLATFORMS ?= cpu
# the suite on two workers, each taking whole test files (module fixtures are built once): a compile keeps one core
# busy, so one worker leaves the other core idle most of the time; PYTEST_WORKERS= runs it in one process
PYTEST_WORKERS ?= -n 2 --dist loadfile

.PHONY: sample app test test-fast lint install browser demo-model

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# the CPU torch wheel first, so that nothing pulls a multi-GB CUDA build
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

# the app's browser test drives Debian's chromium through Playwright (which cannot download its own browsers
# offline); installed only when missing (CI runs as root)
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

install: $(STAMP) browser

sample: $(STAMP)
	$(VENV)/bin/python sample.py

app: $(STAMP)
	$(VENV)/bin/python app.py

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q $(PYTEST_WORKERS)

test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -m "not slow" $(PYTEST_WORKERS)

# the built-in demo model, from nothing (about 85 minutes on 2 idle CPU cores); resumes if interrupted
demo-model: $(STAMP)
	$(VENV)/bin/python -m customnet_jax.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
