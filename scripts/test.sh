#!/usr/bin/env bash
# Sets up llmclf (scripts/setup.sh) and runs every check CI runs: ruff, mypy and the test suite,
# including the smaller set of tests on the real embedded Gemma model.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the HTML report and the review page are checked in a real headless browser (Debian chromium;
# the review page through Selenium and Debian's chromium-driver)
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "warning: could not install chromium/chromium-driver; the browser tests will be skipped" >&2
  else
    echo "warning: chromium or chromedriver is not installed; the browser tests will be skipped" >&2
  fi
fi
# the store suite also runs against a real PostgreSQL server (Debian postgresql), started by
# the tests in a temporary directory as an unprivileged user
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
      || echo "warning: could not install postgresql; the PostgreSQL store tests will be skipped" >&2
  else
    echo "warning: postgresql is not installed; the PostgreSQL store tests will be skipped" >&2
  fi
fi
.venv/bin/ruff check llmclf tests benchmarks scripts
.venv/bin/mypy
# the layers of docs/ARCHITECTURE.md and no import cycle (pyproject.toml [tool.importlinter])
.venv/bin/lint-imports
export LLMCLF_HOME="${LLMCLF_HOME:-$(mktemp -d)}"
.venv/bin/python -m pytest -q --durations=30 "$@"
