#!/usr/bin/env bash
# Install the edgescreen runtime on a Jetson running JetPack 6 (L4T r36, TensorRT 10).
#   sudo jetson/setup.sh [SOURCE]      SOURCE: a wheel, a source tree, or 'edgescreen' (default: this tree)
# Creates the 'edgescreen' system user, /opt/edgescreen/venv (with JetPack's system TensorRT visible),
# /var/lib/edgescreen (ledger DB) and installs the batch service (not started).
set -euo pipefail

SOURCE="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
PREFIX=/opt/edgescreen
STATE=/var/lib/edgescreen
UPLOADS=/srv/uploads

if [[ $EUID -ne 0 ]]; then echo "run as root (sudo $0)" >&2; exit 2; fi
if [[ ! -f /etc/nv_tegra_release ]]; then echo "this is not a Jetson (no /etc/nv_tegra_release)" >&2; exit 2; fi
echo "L4T: $(head -n1 /etc/nv_tegra_release)"

# 1. TensorRT's Python bindings and pycuda from JetPack's apt repository.
apt-get update
apt-get install -y --no-install-recommends python3-venv python3-pip python3-libnvinfer
if ! apt-get install -y --no-install-recommends python3-pycuda; then
    # Where no JetPack-built python3-pycuda exists, build it against JetPack's CUDA. Ubuntu's own
    # package would drag in Ubuntu's CUDA toolkit, which is not the one the Jetson driver runs.
    apt-get install -y --no-install-recommends python3-dev build-essential
    PIP_PYCUDA=1
fi

# 2. A venv that sees the system tensorrt (and pycuda) packages.
python3 -m venv --system-site-packages "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install --upgrade pip
if [[ "${PIP_PYCUDA:-0}" == 1 ]]; then
    CUDA_ROOT=/usr/local/cuda PATH=/usr/local/cuda/bin:$PATH "$PREFIX/venv/bin/pip" install "pycuda>=2022.2"
fi
"$PREFIX/venv/bin/pip" install "${SOURCE}[runtime]"
# Optional: ONNX Runtime with CUDA for Jetson, as a second GPU backend (from the Jetson AI Lab index,
# matching JetPack 6 / CUDA 12.6), e.g.:
#   $PREFIX/venv/bin/pip install onnxruntime-gpu --index-url https://pypi.jetson-ai-lab.dev/jp6/cu126
"$PREFIX/venv/bin/python" -c "import tensorrt, pycuda.driver as d; d.init(); print('TensorRT', tensorrt.__version__, 'on', d.Device(0).name())"

# 3. A dedicated user; 'video' (and 'render' where it exists) give access to the GPU device nodes.
id edgescreen >/dev/null 2>&1 || useradd --system --home "$STATE" --shell /usr/sbin/nologin edgescreen
usermod -aG video edgescreen
getent group render >/dev/null && usermod -aG render edgescreen
install -d -o edgescreen -g edgescreen -m 0750 "$STATE" "$UPLOADS" "$PREFIX/bundles"
ln -sf "$PREFIX/venv/bin/edgescreen" /usr/local/bin/edgescreen

# 4. The batch service (configure /etc/edgescreen/batch.env, then enable it).
install -d /etc/edgescreen
[[ -f /etc/edgescreen/batch.env ]] || cat > /etc/edgescreen/batch.env <<ENV
EDGESCREEN_UPLOADS=$UPLOADS
EDGESCREEN_BUNDLE=$PREFIX/bundles/dr
EDGESCREEN_PRECISION=fp16
# Everything after 'edgescreen batch UPLOADS --watch': bundle, precision, ledger DB, ...
EDGESCREEN_BATCH_ARGS=--bundle $PREFIX/bundles/dr --precision fp16 --db $STATE/ledger.sqlite
ENV
install -m 0644 "$(dirname "$0")/edgescreen-batch.service" /etc/systemd/system/edgescreen-batch.service
systemctl daemon-reload
echo "next: copy a bundle to $PREFIX/bundles/, run jetson/build-and-selftest.sh on it, then"
echo "      systemctl enable --now edgescreen-batch"
