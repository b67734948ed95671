VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test quickstart clean

install: $(STAMP)

# torch and torchvision are pinned here (not in pyproject) because this machine's pip takes those
# exact releases from local disk; a free-floating torch would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/pytest -n 2 tests

quickstart: $(STAMP)
	$(VENV)/bin/styleprefs quickstart

clean:
	rm -rf $(VENV) build *.egg-info
