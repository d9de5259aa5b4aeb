#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: CPU tests and the wgpu kernels on the best
# Vulkan adapter here (lavapipe on a machine without a GPU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec "$VENV/bin/python" -m pytest "$@"
