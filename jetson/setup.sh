#!/usr/bin/env bash
# Install the edgescreen runtime on a Jetson running JetPack 6 (L4T r36, TensorRT 10).
#   sudo jetson/setup.sh [SOURCE]      SOURCE: a wheel, a source tree, or 'edgescreen' (default: this tree)
# Creates the 'edgescreen' system user, /opt/edgescreen/venv (with JetPack's system TensorRT visible),
# /var/lib/edgescreen (ledger DB, run-time state) and installs the batch service (not started).
#
# pycuda is always built inside the venv, against JetPack's CUDA (/usr/local/cuda) and the venv's
# own numpy. Never Ubuntu's python3-pycuda: it is built against the system numpy (1.21 on 22.04),
# the venv installs numpy 2 over it (edgescreen needs numpy >= 1.24), and that pycuda then fails to
# import. (Sourcing this file only defines the settings and functions below: the kit's tests
# do, with the paths pointed elsewhere.)
set -euo pipefail

KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX=/opt/edgescreen
STATE=/var/lib/edgescreen
UPLOADS=/srv/uploads
CONF_DIR=/etc/edgescreen
SYSTEMD_DIR=/etc/systemd/system
UNIT=edgescreen-batch.service
BIN_LINK=/usr/local/bin/edgescreen
CUDA_ROOT=/usr/local/cuda

preflight() {
    if [[ $EUID -ne 0 ]]; then echo "run as root (sudo $0)" >&2; exit 2; fi
    if [[ ! -f /etc/nv_tegra_release ]]; then echo "this is not a Jetson (no /etc/nv_tegra_release)" >&2; exit 2; fi
    echo "L4T: $(head -n1 /etc/nv_tegra_release)"
}

# The service's settings; an existing file is kept (the unit appends --bundle, --precision and
# --backend tensorrt itself, so an older batch.env still screens with what ExecStartPre tested).
write_batch_env() {
    install -d "$CONF_DIR"
    [[ -f "$CONF_DIR/batch.env" ]] && return 0
    cat >"$CONF_DIR/batch.env" <<ENV
EDGESCREEN_UPLOADS=$UPLOADS
# The bundle and precision the service self-tests (ExecStartPre) and screens with, always on the
# TensorRT backend (the unit passes --backend tensorrt to both; build the engine first with
# jetson/build-and-selftest.sh).
EDGESCREEN_BUNDLE=$PREFIX/bundles/dr
EDGESCREEN_PRECISION=fp16
# More 'edgescreen batch' options (after 'batch UPLOADS --watch'): the ledger DB, --report, ...
EDGESCREEN_BATCH_ARGS=--db $STATE/ledger.sqlite
ENV
}

# The unit, plus a drop-in adding the 'render' group only where it exists: a SupplementaryGroups=
# entry naming a missing group fails the unit (status=216/GROUP).
install_unit() {
    install -d "$SYSTEMD_DIR"
    install -m 0644 "$KIT/$UNIT" "$SYSTEMD_DIR/$UNIT"
    local dropin="$SYSTEMD_DIR/$UNIT.d/render.conf"
    if getent group render >/dev/null; then
        install -d "$SYSTEMD_DIR/$UNIT.d"
        printf '[Service]\nSupplementaryGroups=render\n' >"$dropin"
        chmod 0644 "$dropin"
    else
        rm -f "$dropin"
    fi
}

main() {
    local source="${1:-$(cd "$KIT/.." && pwd)}"
    preflight

    # 1. TensorRT's Python bindings from JetPack's apt repository; a compiler and the Python
    #    headers to build pycuda (never apt's python3-pycuda, see the top of this file).
    apt-get update
    apt-get install -y --no-install-recommends python3-venv python3-pip python3-libnvinfer \
        python3-dev build-essential
    if dpkg-query -W -f='${Status}' python3-pycuda 2>/dev/null | grep -q "install ok installed"; then
        echo "note: python3-pycuda is installed system-wide; the venv builds and uses its own pycuda" >&2
    fi

    # 2. A venv that sees the system tensorrt package; edgescreen (and numpy) first, then pycuda
    #    built against that numpy (--no-build-isolation) and JetPack's CUDA (CUDA_ROOT).
    python3 -m venv --system-site-packages "$PREFIX/venv"
    local pip=("$PREFIX/venv/bin/python" -m pip)
    "${pip[@]}" install --upgrade pip "setuptools>=68" wheel
    "${pip[@]}" install "${source}[runtime]"
    # --ignore-installed: a pycuda the venv can see outside it (system-wide) is not used either.
    env CUDA_ROOT="$CUDA_ROOT" PATH="$CUDA_ROOT/bin:$PATH" "${pip[@]}" install --ignore-installed \
        --no-build-isolation --no-binary pycuda "pycuda>=2022.2"
    # Optional: ONNX Runtime with CUDA for Jetson, as a second GPU backend (from the Jetson AI Lab index,
    # matching JetPack 6 / CUDA 12.6), e.g.:
    #   $PREFIX/venv/bin/pip install onnxruntime-gpu --index-url https://pypi.jetson-ai-lab.dev/jp6/cu126
    # Imports tensorrt and pycuda.driver for real, starts CUDA, and refuses a pycuda from outside the venv.
    "$PREFIX/venv/bin/python" "$KIT/check-runtime.py" --cuda --venv-pycuda

    # 3. A dedicated user; 'video' (and 'render' where it exists) give access to the GPU device nodes.
    id edgescreen >/dev/null 2>&1 || useradd --system --home "$STATE" --shell /usr/sbin/nologin edgescreen
    usermod -aG video edgescreen
    if getent group render >/dev/null; then usermod -aG render edgescreen; fi
    install -d -o edgescreen -g edgescreen -m 0750 "$STATE" "$UPLOADS" "$PREFIX/bundles"
    ln -sf "$PREFIX/venv/bin/edgescreen" "$BIN_LINK"

    # 4. The batch service (configure $CONF_DIR/batch.env, then enable it).
    write_batch_env
    install_unit
    systemctl daemon-reload
    echo "next: copy a bundle to $PREFIX/bundles/, run jetson/build-and-selftest.sh on it, then"
    echo "      systemctl enable --now edgescreen-batch"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
