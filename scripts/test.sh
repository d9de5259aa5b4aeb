#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint with ruff and run the whole test suite: CPU tests and the wgpu kernels on the best
# Vulkan adapter here (lavapipe on a machine without a GPU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
# Lint first (pyproject.toml [tool.ruff]): a second, not a reason to wait for the suite to learn it.
"$VENV/bin/ruff" check --quiet src tests benchmarks scripts
exec "$VENV/bin/python" -m pytest "$@"
