#!/usr/bin/env bash
# The Triton interpreter suite (tests/triton) with the oldest supported Triton, installed into a
# temporary directory that shadows the installed one.
# Usage: .ci/triton-oldest.sh [version] [tests] [pytest options...]
#
# Triton 3.3's interpreter converts program ids with int() on 1-element arrays, which NumPy
# >= 2.4 refuses ("only 0-dimensional arrays can be converted to Python scalars"): with that
# Triton, NumPy < 2.4 is installed beside it. The kernels themselves are not at fault.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:-3.3.1}"
TESTS="${2:-tests/triton}"
shift $(( $# < 2 ? $# : 2 ))
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python -m pip install -q --no-deps --target "$TMP" "triton==$VERSION"
case "$VERSION" in
  3.0.*|3.1.*|3.2.*|3.3.*) python -m pip install -q --no-deps --target "$TMP" "numpy<2.4" ;;
esac
PYTHONPATH="$TMP:src${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=1 \
  python -c "import triton; print('triton', triton.__version__)"
PYTHONPATH="$TMP:src${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=1 \
  python -m pytest -q -p no:cacheprovider "$TESTS" "$@"
