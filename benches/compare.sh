#!/usr/bin/env bash
# Runs `openssl speed` (the anchor) and the `ctr` criterion bench in the same session and
# prints our throughput against OpenSSL's 16 KiB column, as criterion medians.
#
#   bash benches/compare.sh            # full criterion run (about 2 minutes)
#   bash benches/compare.sh --quick    # criterion --quick (noisier)
#   DFS_BENCH_CPU_TIME=1 bash benches/compare.sh
#       # both sides timed by CPU time instead of wall time (openssl speed without -elapsed,
#       # the bench by thread CPU time): for a machine shared with other work (about 4 min)
#
# OpenSSL runs before and after the bench; the higher of the two figures is the anchor (the
# conservative choice on a shared machine). Needs `openssl`, `python3` and a Rust toolchain.
set -euo pipefail

cd "$(dirname "$0")/.."
QUICK=()
if [[ "${1:-}" == "--quick" ]]; then QUICK=(--quick); fi
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
SECONDS_PER_ALGO="${OPENSSL_SECONDS:-3}"

ELAPSED=(-elapsed)
CLOCK="wall time"
if [[ "${DFS_BENCH_CPU_TIME:-}" == "1" ]]; then ELAPSED=(); CLOCK="CPU time"; fi

openssl_16k() { # prints bytes/s of the 16 KiB column for $1
    openssl speed "${ELAPSED[@]}" -seconds "$SECONDS_PER_ALGO" -bytes 16384 -evp "$1" 2>/dev/null |
        awk -v name="$(echo "$1" | tr a-z A-Z)" '$1 == name { sub(/k$/, "", $2); printf "%.0f\n", $2 * 1000 }'
}

echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu:     $(lscpu | sed -n 's/^Model name:[[:space:]]*//p')"
echo "openssl: $(openssl version)"
echo "rustc:   $(rustc --version)"
echo "clock:   $CLOCK"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg)"

CTR1=$(openssl_16k aes-256-ctr)
GCM1=$(openssl_16k aes-256-gcm)
cargo bench -p dfs-benches --bench ctr -- "${QUICK[@]}" 'ctr/' 2>&1 | grep -E 'backend|^ctr/' || true
CTR2=$(openssl_16k aes-256-ctr)
GCM2=$(openssl_16k aes-256-gcm)

python3 - "$TARGET_DIR/criterion" "$CTR1" "$CTR2" "$GCM1" "$GCM2" <<'PY'
import json, sys, os
root, ctr1, ctr2, gcm1, gcm2 = sys.argv[1], *map(float, sys.argv[2:])
ctr, gcm = max(ctr1, ctr2), max(gcm1, gcm2)
print(f"\nopenssl aes-256-ctr 16 KiB: {ctr/1e9:.2f} GB/s (runs: {ctr1/1e9:.2f}, {ctr2/1e9:.2f})")
print(f"openssl aes-256-gcm 16 KiB: {gcm/1e9:.2f} GB/s (runs: {gcm1/1e9:.2f}, {gcm2/1e9:.2f})\n")
sizes = [("16KiB", 16384), ("64KiB", 65536), ("1MiB", 1 << 20)]
funcs = [("keystream", ctr, "ctr"), ("keystream-ctr-crate", ctr, "ctr"),
         ("stream-encrypt", ctr, "ctr"), ("blake3-keyed", None, ""),
         ("polyval", None, ""), ("polyval-portable", None, ""), ("source-copy", None, ""),
         ("auth-encrypt", gcm, "gcm"), ("auth-decrypt", gcm, "gcm")]
print(f"| bench | {' | '.join(s for s, _ in sizes)} | anchor |")
print(f"|---|{'---|' * len(sizes)}---|")
for name, anchor, label in funcs:
    cells = []
    for size, nbytes in sizes:
        path = os.path.join(root, f"ctr_{size}", name, "new", "estimates.json")
        try:
            ns = json.load(open(path))["median"]["point_estimate"]
        except OSError:
            cells.append("-")
            continue
        rate = nbytes / ns  # bytes per ns = GB/s
        cell = f"{rate:.2f} GB/s"
        if anchor:
            cell += f" ({rate * 1e9 / anchor:.2f}x)"
        cells.append(cell)
    print(f"| {name} | {' | '.join(cells)} | {'openssl ' + label if label else '-'} |")
PY
