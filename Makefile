# pixelpipe: `make demo` runs the whole pipeline on the embedded stack; `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# DALI (the gpu extra) ships Linux x86_64 wheels only.
EXTRAS := dev$(shell [ "$$(uname -s)-$$(uname -m)" = "Linux-x86_64" ] && echo ",gpu")
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)-$(EXTRAS)
export NO_ALBUMENTATIONS_UPDATE := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install lint test demo demo-down clean schemas label-studio

install: $(STAMP)

# `python -m pip`, not uv/poetry: pip finds the CPU torch wheel on local disk.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-* && touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy pixelpipe

schemas: install
	$(PY) -m pixelpipe.manifests
	$(PY) -m pixelpipe.serving.app --write-schemas

test: install lint
	bash scripts/test.sh

# Label Studio's server in .venv-label-studio/ (its pins differ from ours); scripts/test.sh and
# `pixelpipe devstack up --with-label-studio` also create it when missing.
label-studio: install
	$(PY) -m pixelpipe.devstack.label_studio install

demo: install
	$(PY) -m pixelpipe demo

demo-down: install
	$(PY) -m pixelpipe devstack down

clean:
	rm -rf .pixelpipe reports
