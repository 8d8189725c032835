#!/usr/bin/env bash
# Build this device's TensorRT engines for a bundle and prove them against the golden set.
#   jetson/build-and-selftest.sh BUNDLE [PRECISION ...]      (default precisions: fp16 int8)
# Run it as the user that owns the bundle (engines go to BUNDLE/engines/), once per device and
# again after any JetPack/TensorRT upgrade: stale engines are refused, never loaded.
# Exit status: 0 when every precision is ready, 1 when one is not (do not ship that one), 2 on error.
set -uo pipefail

BUNDLE="${1:?usage: $0 BUNDLE [PRECISION ...]}"
shift
PRECISIONS=("${@:-fp16 int8}")
read -r -a PRECISIONS <<<"${PRECISIONS[*]}"
EDGESCREEN="${EDGESCREEN:-edgescreen}"
REPORTS="$BUNDLE/engines/selftest"
mkdir -p "$REPORTS"

# Record the power mode with the results: latency means nothing without it (see jetson/POWER.md).
{
    echo "date: $(date -Iseconds)"
    echo "l4t: $(head -n1 /etc/nv_tegra_release 2>/dev/null || echo unknown)"
    echo "model: $( { tr -d '\0' </proc/device-tree/model; } 2>/dev/null || echo unknown)"
    echo "nvpmodel: $(nvpmodel -q 2>/dev/null | tr '\n' ' ' || echo unknown)"
} >"$REPORTS/device.txt"

status=0
for precision in "${PRECISIONS[@]}"; do
    echo "== $precision: build"
    if ! "$EDGESCREEN" engine build "$BUNDLE" --precision "$precision"; then
        echo "!! $precision: engine build failed or was refused (see above)" >&2
        status=$(( status > 1 ? status : 2 ))
        continue
    fi
    echo "== $precision: self-test"
    "$EDGESCREEN" selftest "$BUNDLE" --precision "$precision" --backend tensorrt --json >"$REPORTS/$precision.json"
    rc=$?
    "$EDGESCREEN" selftest "$BUNDLE" --precision "$precision" --backend tensorrt 2>/dev/null | head -n 20 || true
    if [[ $rc -ne 0 ]]; then
        echo "!! $precision: NOT READY, do not screen with it (report: $REPORTS/$precision.json)" >&2
        status=$(( status > 1 ? status : 1 ))
    fi
done
exit $status
