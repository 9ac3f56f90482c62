# Two commands set everything up on a fresh machine: `make run` and `make test`.
# With no DATABASE_URL / REDIS_URL, real embedded PostgreSQL and Redis start under .data/.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
# Embedded PostgreSQL asks platformdirs for a runtime dir; give it one instead of a warning.
export XDG_RUNTIME_DIR ?= $(CURDIR)/.data/run
$(shell mkdir -p $(CURDIR)/.data/run && chmod 700 $(CURDIR)/.data/run)

.PHONY: run test bench install migrate lint stop-embedded clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

install: $(STAMP)

migrate: install
	DEBUG=$${DEBUG:-true} $(VENV)/bin/python manage.py migrate --noinput

run: migrate
	@DEBUG=$${DEBUG:-true} $(VENV)/bin/python manage.py jetstream_demo
	DEBUG=$${DEBUG:-true} $(VENV)/bin/honcho start -f Procfile

test: lint
	DEBUG=$${DEBUG:-true} $(VENV)/bin/pytest -m "not slow"

bench: install
	DEBUG=$${DEBUG:-true} bash bench/run.sh

# mypy reads the settings module (django-stubs): any URLs parse; nothing is connected to.
lint: install
	$(VENV)/bin/ruff check .
	DEBUG=true DATABASE_URL=$${DATABASE_URL:-postgres://lint@127.0.0.1:5432/lint} REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/0} \
		$(VENV)/bin/mypy

stop-embedded: install
	$(VENV)/bin/python -m lib.embedded stop

clean:
	rm -rf $(VENV) .pytest_cache
