#!/usr/bin/env bash
# Generates the Python stubs of proto/. The only way stubs are made: never edit the generated
# files by hand. Pinned by requirements.txt (grpcio-tools).
#   reranker.v1 -> client/reranker_client/_proto   (the public API: client and server use it)
#   tei.v1      -> src/reranker/_proto              (served by the rank service only)
#   tools/gen_proto.sh [OUTPUT_ROOT]   (default: the repository root)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
python=${PYTHON:-python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# generate PROTO_DIR (under proto/) PACKAGE_DIR (relative to OUTPUT_ROOT) IMPORT_PREFIX
generate() {
  local proto_dir=$1 target=$2 prefix=$3
  # Compile with the package prefix so generated imports resolve inside the package.
  rm -rf "$tmp/src" "$tmp/gen"
  mkdir -p "$tmp/src/$prefix/$proto_dir" "$tmp/gen" "$out/$target"
  cp "$root/proto/$proto_dir"/*.proto "$tmp/src/$prefix/$proto_dir/"
  "$python" -m grpc_tools.protoc -I "$tmp/src" \
    --python_out="$tmp/gen" --grpc_python_out="$tmp/gen" --pyi_out="$tmp/gen" \
    "$tmp/src/$prefix/$proto_dir"/*.proto
  cp -r "$tmp/gen/$prefix/." "$out/$target/"
  local d="$out/$target"
  [ -f "$d/__init__.py" ] || : >"$d/__init__.py"
  local part
  for part in ${proto_dir//\// }; do
    d="$d/$part"
    [ -f "$d/__init__.py" ] || : >"$d/__init__.py"
  done
}

generate reranker/v1 client/reranker_client/_proto reranker_client/_proto
generate tei/v1 src/reranker/_proto reranker/_proto
