#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs every test.
#   - software Vulkan (lavapipe, Debian's mesa-vulkan-drivers) for the WGSL backend tests;
#   - gguf-py and numpy from PyPI, the independent reader the converter tests compare against;
#   - the default model, fetched with `marco fetch` into $MARCO_HOME (default ~/.cache/marco).
# Tests never skip for lack of any of these: this script provides them.
set -euo pipefail
cd "$(dirname "$0")/.."

export MARCO_HOME="${MARCO_HOME:-$HOME/.cache/marco}"

step() { printf '\n== %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    step "installing software Vulkan (mesa-vulkan-drivers)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi

step "installing gguf-py and numpy"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check "gguf==0.19.0" "numpy>=1.26"

step "building marco"
cargo build --release --locked

step "fetching the default model into $MARCO_HOME"
target/release/marco fetch

step "running every test"
cargo test --workspace --profile test --locked
