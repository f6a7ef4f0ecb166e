#!/usr/bin/env bash
# Generates the Python stubs of proto/ into the client package. The only way stubs are made:
# never edit the generated files by hand. Pinned by requirements.txt (grpcio-tools).
#   tools/gen_proto.sh [OUTPUT_ROOT]   (default: client/)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/client}
python=${PYTHON:-python}
pkg=reranker_client/_proto
mkdir -p "$out/$pkg"
# Compile with the package prefix so generated imports resolve inside reranker_client.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/$pkg/reranker/v1"
cp "$root/proto/reranker/v1/reranker.proto" "$tmp/$pkg/reranker/v1/"
"$python" -m grpc_tools.protoc -I "$tmp" \
  --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  "$tmp/$pkg/reranker/v1/reranker.proto"
for d in "$out/$pkg" "$out/$pkg/reranker" "$out/$pkg/reranker/v1"; do
  [ -f "$d/__init__.py" ] || : >"$d/__init__.py"
done
