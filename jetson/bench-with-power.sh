#!/usr/bin/env bash
# Run `edgescreen bench` and record the power state it ran in (see jetson/POWER.md).
#   jetson/bench-with-power.sh [BENCH ARGS ...]        e.g. --out benchmarks/results --batches 1 8
# Writes OUT/power.json (OUT: the bench's --out, default benchmarks/results) with the power mode,
# jetson_clocks state, L4T release, module, TensorRT version, the tegrastats log sampled during the
# run and a summary of it (VDD_IN mW, GPU %). Each Jetson tool that is missing or fails is recorded
# as null, so the script also runs (with nulls) off a Jetson. Run it with sudo for a reliable
# `jetson_clocks --show`. OUT/power.json is overwritten on every run: it describes the last one and
# lists the result files that run wrote ("results").
# Exit status: the bench's.
set -euo pipefail

EDGESCREEN="${EDGESCREEN:-edgescreen}"
PYTHON="${PYTHON:-python3}"

OUT=benchmarks/results
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --out) OUT="${args[i + 1]:-$OUT}" ;;
        --out=*) OUT="${args[i]#--out=}" ;;
    esac
done
mkdir -p "$OUT"
STAMP="$(date +%Y%m%dT%H%M%S)"
TEGRA_LOG="$OUT/tegrastats-$STAMP.log"
SIDECAR="$OUT/power.json"

have() { command -v "$1" >/dev/null 2>&1; }
# The output of a command, or nothing when the tool is missing, fails or hangs.
capture() {
    have "$1" || return 0
    timeout 15 "$@" 2>/dev/null || true
}

POWER_DATE="$(date -Iseconds)"
POWER_NVPMODEL="$(capture nvpmodel -q)"
POWER_CLOCKS="$(capture jetson_clocks --show)"
POWER_L4T="$(head -n1 2>/dev/null /etc/nv_tegra_release || true)"
POWER_MODEL="$(tr -d '\0' 2>/dev/null </proc/device-tree/model || true)"
POWER_TRT="$(capture "$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)')"

TEGRA_PID=""
stop_tegrastats() {
    if [[ -n "$TEGRA_PID" ]]; then
        kill "$TEGRA_PID" 2>/dev/null || true
        wait "$TEGRA_PID" 2>/dev/null || true
        TEGRA_PID=""
    fi
}
trap stop_tegrastats EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if have tegrastats; then
    tegrastats --interval 500 --logfile "$TEGRA_LOG" &
    TEGRA_PID=$!
else
    TEGRA_LOG=""
    echo "bench-with-power: no tegrastats, power will not be sampled" >&2
fi

START_EPOCH="$(date +%s)"
rc=0
"$EDGESCREEN" bench "$@" || rc=$?
stop_tegrastats
[[ -n "$TEGRA_LOG" && ! -s "$TEGRA_LOG" ]] && echo "bench-with-power: tegrastats wrote nothing to $TEGRA_LOG" >&2

if ! have "$PYTHON"; then
    echo "bench-with-power: no $PYTHON, $SIDECAR not written" >&2
    exit "$rc"
fi
export POWER_DATE POWER_NVPMODEL POWER_CLOCKS POWER_L4T POWER_MODEL POWER_TRT
export TEGRA_LOG SIDECAR START_EPOCH OUT BENCH_RC="$rc"
"$PYTHON" - "$@" <<'PY' || echo "bench-with-power: could not write $SIDECAR" >&2
import json, os, re, statistics, sys
from pathlib import Path

env = lambda k: (os.environ.get(k) or "").strip() or None

def clocks_pinned(show):
    """jetson_clocks pins the GPU at its maximum: its MinFreq equals its MaxFreq."""
    for line in (show or "").splitlines():
        m = re.match(r"\s*GPU\s.*MinFreq=(\d+)\s+MaxFreq=(\d+)", line)
        if m:
            return m.group(1) == m.group(2)
    return None

def nvpmodel(raw):
    if not raw:
        return None, None
    name = re.search(r"Power Mode:\s*(.+)", raw)
    num = re.search(r"^\s*(\d+)\s*$", raw, re.M)
    return (name.group(1).strip() if name else None), (int(num.group(1)) if num else None)

def stats(values):
    return {"max": max(values), "mean": round(statistics.fmean(values), 1), "samples": len(values)} if values else None

def tegrastats(path):
    if not path or not Path(path).is_file():
        return None
    vdd, gpu = [], []
    for line in Path(path).read_text(errors="replace").splitlines():
        m = re.search(r"\b(?:VDD_IN|POM_5V_IN)\s+(\d+)(?:mW)?/", line)  # current/average: keep current
        if m:
            vdd.append(int(m.group(1)))
        m = re.search(r"\bGR3D_FREQ\s+(\d+)%", line)
        if m:
            gpu.append(int(m.group(1)))
    return {"vdd_in_mw": stats(vdd), "gpu_percent": stats(gpu)}

mode, mode_id = nvpmodel(env("POWER_NVPMODEL"))
out, start = Path(os.environ["OUT"]), int(os.environ["START_EPOCH"])
sidecar, log = Path(os.environ["SIDECAR"]), env("TEGRA_LOG")
results = sorted(
    str(p) for p in out.iterdir()
    if p.is_file() and p.stat().st_mtime >= start and p != sidecar and str(p) != log
)
record = {
    "date": env("POWER_DATE"),
    "command": ["edgescreen", "bench", *sys.argv[1:]],
    "exit_status": int(os.environ["BENCH_RC"]),
    "nvpmodel": mode,
    "nvpmodel_id": mode_id,
    "nvpmodel_raw": env("POWER_NVPMODEL"),
    "jetson_clocks": clocks_pinned(env("POWER_CLOCKS")),
    "jetson_clocks_show": env("POWER_CLOCKS"),
    "l4t": env("POWER_L4T"),
    "module": env("POWER_MODEL"),
    "tensorrt": env("POWER_TRT"),
    "tegrastats_log": log,
    "tegrastats_summary": tegrastats(log),
    "results": results,
}
sidecar.write_text(json.dumps(record, indent=2) + "\n")
print(f"bench-with-power: wrote {sidecar}", file=sys.stderr)
PY
exit "$rc"
