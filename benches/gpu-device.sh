#!/usr/bin/env bash
# GPU benchmark on a machine the model files cannot reach (a lent GPU machine: 64 MiB of
# luggage, no network). Prepare here, run there:
#
#   here:   cargo build --release && mkdir -p .devbin
#           objcopy --strip-debug target/release/marco .devbin/marco
#           marco synth --like MODEL.gguf --shape-only -o .devbin/shape-NAME.gguf   (per model)
#   there:  bash benches/gpu-device.sh .devbin [OUT_DIR]
#
# For each shape file it writes a same-shaped model with random weights (speed does not depend
# on the values) and runs `marco bench --backend gpu`, then a CPU run of the same model for
# scale. Vulkan loader packages, if the machine lacks them, are unpacked from .gl/*.deb.
set -euo pipefail
dir=${1:?usage: gpu-device.sh BIN_AND_SHAPES_DIR [OUT_DIR]}
out=${2:-.}
if ! ldconfig -p | grep -q libvulkan.so.1 && compgen -G ".gl/*.deb" >/dev/null; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$nv_icd" ] && export VK_DRIVER_FILES=$nv_icd
command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv |
    tee "$out/gpu.txt" || true
marco=$dir/marco
"$marco" --version
for shape in "$dir"/shape-*.gguf; do
    name=$(basename "$shape" .gguf)
    name=${name#shape-}
    model=/tmp/synth-$name.gguf
    "$marco" synth --like "$shape" -o "$model" >/dev/null
    echo "== $name: GPU"
    "$marco" bench -m "$model" --backend gpu -p 128,512 -n 128 -r 3 | tee "$out/bench-gpu-$name.txt"
    echo "== $name: auto picks"
    "$marco" bench -m "$model" --backend auto -p 0 -n 16 -r 1 | tail -n 1
    echo "== $name: CPU, all cores, for scale"
    "$marco" bench -m "$model" --backend cpu -p 512 -n 64 -r 2 | tee "$out/bench-cpu-$name.txt"
done
