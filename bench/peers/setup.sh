#!/usr/bin/env bash
# The img2dataset peer for bench/bench_images.py, in its own virtual environment: img2dataset pins old
# dependencies (pyarrow, albumentations, opencv, ...) that must not touch the project's environment.
# Usage: bench/peers/setup.sh            (idempotent; prints the img2dataset executable)
set -euo pipefail
bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${IMG2DATASET_VENV:-$bench_dir/out/venv-img2dataset}"
version="1.47.0"
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('img2dataset') != '$version')" \
        2>/dev/null; then
    uv venv --quiet --python "${IMG2DATASET_PYTHON:-3.11}" "$venv"
    uv pip install --quiet --compile-bytecode --python "$venv/bin/python" "img2dataset==$version"
fi
echo "$venv/bin/img2dataset"
