#!/bin/sh
# Rebuild stream.lackey.gz: a valgrind lackey memory trace of stream.c.
# Needs gcc, valgrind and gzip. Run from anywhere; writes next to this script
# (or into the directory given as $1).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "${1:-$here}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

gcc -O1 -o "$work/stream" "$here/stream.c"
cd "$work"
valgrind --tool=lackey --trace-mem=yes --log-file=stream.lackey ./stream >/dev/null
# Drop the instruction fetches (I lines): Trace.read skips them anyway, and they
# are most of the file. Everything else (==pid== lines, L, S, M) is kept as is.
grep -v '^I ' stream.lackey | gzip -9 -n >"$out/stream.lackey.gz"
echo "$out/stream.lackey.gz: $(zcat "$out/stream.lackey.gz" | grep -c '^ [LSM] ') data accesses"
