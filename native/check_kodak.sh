#!/bin/sh
# Compare vqcdec with `vqc decompress` on whole images (not run by test.sh: it needs the Python
# package and takes minutes). The reference is the torch decoder (VQC_NATIVE=0): with libvqc built,
# `vqc decompress` would otherwise run the core itself.
# Usage: native/check_kodak.sh IMAGE.png [QUALITY...]
# e.g. native/check_kodak.sh /work/shared/data/kodak/kodim23.png 20 76 100
#      for f in ../shared/data/kodak/*.png; do KERNELS=auto native/check_kodak.sh "$f" 20 76 100; done
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
img=$1; shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for q in "$@"; do
  PYTHONPATH="$root" python3 -m vqcodec.cli compress "$img" -q "$q" -o "$tmp/q$q.vqc" >/dev/null
  VQC_NATIVE=0 PYTHONPATH="$root" python3 -m vqcodec.cli decompress "$tmp/q$q.vqc" -o "$tmp/q$q.png" >/dev/null
  python3 -c "import sys, numpy as np; from PIL import Image; sys.stdout.buffer.write(np.asarray(Image.open(sys.argv[1])).tobytes())" "$tmp/q$q.png" > "$tmp/q$q.want"
  for kernel in ${KERNELS:-auto vnni avx2}; do
    for threads in 1 2; do
      "$here/build/vqcdec" "$tmp/q$q.vqc" "$tmp/got.raw" --raw --kernel "$kernel" --threads "$threads"
      if cmp -s "$tmp/got.raw" "$tmp/q$q.want"; then r=identical; else r=DIFFERENT; fi
      echo "$(basename "$img") Q$q $(wc -c < "$tmp/q$q.vqc") bytes kernel=$kernel threads=$threads: $r"
    done
  done
done
