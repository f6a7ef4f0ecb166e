#!/usr/bin/env bash
# Generates the Python stubs of proto/ into the reranker-api package (api/reranker_api), the
# one home both the server and the client depend on. The only way stubs are made: never edit
# the generated files by hand. Pinned by requirements.txt (grpcio-tools).
#   tools/gen_proto.sh [OUTPUT_ROOT]   (default: the repository root)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
python=${PYTHON:-python}
package=reranker_api
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Compile with the package prefix so generated imports resolve inside the package.
mkdir -p "$tmp/src/$package" "$tmp/gen" "$out/api/$package"
for proto_dir in reranker/v1 tei/v1; do
  mkdir -p "$tmp/src/$package/$proto_dir"
  cp "$root/proto/$proto_dir"/*.proto "$tmp/src/$package/$proto_dir/"
done
"$python" -m grpc_tools.protoc -I "$tmp/src" \
  --python_out="$tmp/gen" --grpc_python_out="$tmp/gen" --pyi_out="$tmp/gen" \
  "$tmp/src/$package"/*/v1/*.proto
cp -r "$tmp/gen/$package/." "$out/api/$package/"
for d in "" /reranker /reranker/v1 /tei /tei/v1; do
  [ -f "$out/api/$package$d/__init__.py" ] || : >"$out/api/$package$d/__init__.py"
done
: >"$out/api/$package/py.typed"
