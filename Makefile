# `make demo` and `make test` set everything up themselves, idempotently:
# Debian packages, .venv, pinned CPU torch, and this project (editable, with dev extras).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.fxcompress-installed
# chromium: the HTML report's test renders the page headless (tests/test_report_html.py)
DEB_PACKAGES := pocl-opencl-icd dataset-fashion-mnist chromium
PYTEST_ARGS ?=

.PHONY: demo test setup system-deps clean

demo: setup
	$(PY) examples/demo.py

test: setup
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=15 $(PYTEST_ARGS)

setup: system-deps $(STAMP)

system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "error: need root to apt-get install$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
