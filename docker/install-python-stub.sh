#!/bin/sh
# Puts the Python-backend stub built for Python 3.11 (from the nvidia-pytriton wheel, the same
# Triton release as the image) into Triton's Python backend directory, together with the
# libraries it links that the wheel renamed and bundles (its CUDA runtime). The stub finds
# them beside itself ($ORIGIN), so it keeps working after the wheel is uninstalled.
# Usage: install-python-stub.sh SITE_PACKAGES BACKEND_DIR   (patchelf on PATH)
set -eu
site="$1"
backend="$2"
stub="$site/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub"
bundled="$site/nvidia_pytriton.libs"
mkdir -p "$backend"
cp "$stub" "$backend/triton_python_backend_stub"
# The stub's bundled libraries, and theirs in turn.
pending="$backend/triton_python_backend_stub"
while [ -n "$pending" ]; do
  next=""
  for binary in $pending; do
    for library in $(patchelf --print-needed "$binary"); do
      if [ -e "$bundled/$library" ] && [ ! -e "$backend/$library" ]; then
        cp "$bundled/$library" "$backend/$library"
        patchelf --set-rpath '$ORIGIN' "$backend/$library"
        next="$next $backend/$library"
      fi
    done
  done
  pending="$next"
done
patchelf --set-rpath '$ORIGIN' "$backend/triton_python_backend_stub"
