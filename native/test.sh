#!/bin/sh
# Conformance test of the native decoder: every vector of format/vectors/vectors.json must decode
# to its pixels_sha256 with every kernel (scalar, avx2, vnni where the CPU has them) and 1 or 2
# threads, and every file of format/vectors/broken/ must fail with its error class (exit 3, 5, 6).
# Usage: native/test.sh  (after make -C native).  Needs sha256sum and python3 (JSON only).
# KERNELS="scalar avx2 ..." limits the kernels to those the CPU has (a kernel it lacks falls back
# to a lower one; tests/test_native.py passes the ones vqc_kernel_resolve keeps).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
dec="$here/build/vqcdec"
vec="$root/format/vectors"
models="$root/models"
[ -x "$dec" ] || { echo "build first: make -C native"; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0; pass=0
python3 - "$vec/vectors.json" > "$tmp/vectors.txt" <<'PY'
import json, sys
for name, e in json.load(open(sys.argv[1])).items():
    print(name, e["pixels_sha256"])
PY
python3 - "$vec/broken/broken.json" > "$tmp/broken.txt" <<'PY'
import json, sys
for name, e in json.load(open(sys.argv[1])).items():
    print(name, {"format": 3, "model": 5, "limit": 6}[e["error"]])
PY
# check FILE SHA MODELS KERNEL THREADS LABEL: FILE decodes to raw pixels of SHA-256 SHA
check() {
  if "$dec" "$1" "$tmp/out.raw" --raw --models "$3" --kernel "$4" --threads "$5" 2>"$tmp/err"; then
    got=$(sha256sum "$tmp/out.raw" | cut -d' ' -f1)
  else
    got="error: $(cat "$tmp/err")"
  fi
  if [ "$got" = "$2" ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL $6 kernel=$4 threads=$5: $got"; fi
}
kernels=${KERNELS:-scalar avx2 vnni amx}
for kernel in $kernels; do
  for threads in 1 2; do
    while read -r name sha; do
      check "$vec/$name" "$sha" "$models" "$kernel" "$threads" "$name"
    done < "$tmp/vectors.txt"
  done
done
# files coded with the tiny fuzz model (K = 4, C = 4, L = 2, D = 4, n_res = 1; several tiles,
# coded sizes): pixel hashes from the reference decoder (format/reference/decode.py)
python3 - "$here/fuzz/seed-files/expected.json" > "$tmp/tiny.txt" <<'PY'
import json, sys
for name, e in json.load(open(sys.argv[1])).items():
    print(name, e["pixels_sha256"])
PY
best=${kernels##* }  # the best kernel of the CPU (amx where it has one)
for kernel in scalar $([ "$best" = scalar ] || echo "$best"); do
  while read -r name sha; do
    check "$here/fuzz/seed-files/$name" "$sha" "$here/fuzz/seed-models" "$kernel" 2 "tiny $name"
  done < "$tmp/tiny.txt"
done
while read -r name code; do
  "$dec" "$vec/broken/$name" "$tmp/out.png" --models "$models" 2>"$tmp/err"
  rc=$?
  if [ "$rc" = "$code" ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL broken/$name: exit $rc, expected $code: $(cat "$tmp/err")"; fi
done < "$tmp/broken.txt"
# the embedded normative tables equal format/exp-lut.txt and format/upsample-taps.txt
if "$dec" --dump-tables > "$tmp/tables.txt" 2>/dev/null; then
  { cat "$root/format/exp-lut.txt"; grep -v '^#' "$root/format/upsample-taps.txt" | sed 's/^ *//; s/  */ /g'; } > "$tmp/want.txt"
  if cmp -s "$tmp/tables.txt" "$tmp/want.txt"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL tables differ from format/"; fi
fi
echo "native/test.sh: $pass passed, $fail failed"
[ "$fail" = 0 ]
