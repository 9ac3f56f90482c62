# Two commands set everything up on a fresh machine: `make run` and `make test`.
# With no DATABASE_URL / REDIS_URL, real embedded PostgreSQL and Redis start under .data/.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
# Embedded PostgreSQL asks platformdirs for a runtime dir; give it one instead of a warning.
export XDG_RUNTIME_DIR ?= $(CURDIR)/.data/run
$(shell mkdir -p $(CURDIR)/.data/run && chmod 700 $(CURDIR)/.data/run)

.PHONY: run test bench eval-moderation install system-deps migrate lint stop-embedded clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

install: system-deps $(STAMP)

# Invoices and closing acts are rendered by WeasyPrint, which needs Pango and a Cyrillic font
# from the system. On Debian/Ubuntu they are installed with apt when missing (as root or via sudo);
# elsewhere a warning names what to install.
# poppler-utils: pdftoppm renders the documents' pictures in docs/billing.md.
SYSTEM_PACKAGES := libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core poppler-utils
# Moderation reads text in image parts with Tesseract (apps/moderation/media.py).
OCR_PACKAGES := tesseract-ocr tesseract-ocr-rus tesseract-ocr-eng
system-deps:
	@if ! { /sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null; } | grep -q 'libpangoft2-1.0.so.0' \
	   || ! { /sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null; } | grep -q 'libharfbuzz-subset.so.0' \
	   || ! ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf >/dev/null 2>&1 \
	   || ! command -v pdftoppm >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	    else echo "make: installing $(SYSTEM_PACKAGES) needs root and there is no sudo" >&2; exit 1; fi; \
	    echo "make: installing $(SYSTEM_PACKAGES) (PDF invoices and acts) from Debian's packages"; \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "make: warning: PDF invoices need Pango (libpangoft2-1.0) and the DejaVu fonts; install them with your package manager" >&2; \
	  fi; \
	fi
	@# The browser tests (tests/e2e) drive Debian's Chromium through Playwright; no browser is downloaded.
	@if ! command -v chromium >/dev/null 2>&1 && ! [ -x /usr/lib/chromium/chromium ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	    else echo "make: installing chromium needs root and there is no sudo" >&2; exit 1; fi; \
	    echo "make: installing chromium (browser tests) from Debian's packages"; \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else \
	    echo "make: warning: the browser tests need Chromium; install it with your package manager" >&2; \
	  fi; \
	fi
	@if ! command -v tesseract >/dev/null 2>&1 || ! tesseract --list-langs 2>/dev/null | grep -qx rus; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	    else echo "make: installing $(OCR_PACKAGES) needs root and there is no sudo" >&2; exit 1; fi; \
	    echo "make: installing $(OCR_PACKAGES) (moderation: OCR of images) from Debian's packages"; \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(OCR_PACKAGES) >/dev/null; \
	  else \
	    echo "make: warning: moderation of images needs Tesseract with Russian and English data; install $(OCR_PACKAGES)" >&2; \
	  fi; \
	fi

migrate: install
	DEBUG=$${DEBUG:-true} $(VENV)/bin/python manage.py migrate --noinput

# The demo has no supplier holding period unless one is set, so its accruals are withdrawable at
# once and the demo can show a pending withdrawal (docs/billing.md "Suppliers"; production: 14 days).
run: migrate
	@DEBUG=$${DEBUG:-true} JETSTREAM_SUPPLIER_HOLD_DAYS=$${JETSTREAM_SUPPLIER_HOLD_DAYS:-0} $(VENV)/bin/python manage.py jetstream_demo
	DEBUG=$${DEBUG:-true} JETSTREAM_SUPPLIER_HOLD_DAYS=$${JETSTREAM_SUPPLIER_HOLD_DAYS:-0} $(VENV)/bin/honcho start -f Procfile

test: lint
	DEBUG=$${DEBUG:-true} $(VENV)/bin/pytest -m "not slow"

bench: install
	DEBUG=$${DEBUG:-true} bash bench/run.sh

# Precision and recall per category on the labelled set, latency per layer (docs/moderation.md).
eval-moderation: install
	DEBUG=$${DEBUG:-true} $(VENV)/bin/python manage.py jetstream_eval_moderation

# mypy reads the settings module (django-stubs): any URLs parse; nothing is connected to.
lint: install
	$(VENV)/bin/ruff check .
	DEBUG=true DATABASE_URL=$${DATABASE_URL:-postgres://lint@127.0.0.1:5432/lint} REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/0} \
		$(VENV)/bin/mypy
	DEBUG=true DATABASE_URL=$${DATABASE_URL:-postgres://lint@127.0.0.1:5432/lint} REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/0} \
		$(VENV)/bin/lint-imports

stop-embedded: install
	$(VENV)/bin/python -m lib.embedded stop

clean:
	rm -rf $(VENV) .pytest_cache
