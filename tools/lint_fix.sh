#!/usr/bin/env bash
# Apply ruff's safe fixes to the whole tree (import order, pyupgrade rewrites), then show what is left
# for a person to fix and what mypy says. Run from anywhere; the configuration is in pyproject.toml.
# Usage: bash tools/lint_fix.sh        (one commit afterwards: "ruff --fix: safe fixes only")
set -uo pipefail
cd "$(dirname "$0")/.."
ruff check --fix --quiet . || true   # safe fixes only (no --unsafe-fixes): behaviour stays the same
echo "--- left for a person (ruff):"
ruff check --output-format concise . && echo "none"
echo "--- mypy (engine/ and model/):"
mypy
