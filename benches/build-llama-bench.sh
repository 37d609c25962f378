#!/usr/bin/env bash
# Builds llama.cpp's llama-bench, the peer we measure against, from the registry: the source
# distribution of the PyPI package llama-cpp-python 0.3.36 vendors llama.cpp 0c1e57098.
# Prints the path of the llama-bench binary. Cached under $MARCO_HOME/peers.
#
# Build flags: AVX-512 and VNNI on, AMX off. With GCC 12 a native build of this version crashes
# on Sapphire Rapids in its AMX code (an upstream bug), so -DGGML_NATIVE=OFF with explicit ISAs.
set -euo pipefail
MARCO_HOME="${MARCO_HOME:-$HOME/.cache/marco}"
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
dir="$MARCO_HOME/peers/llama-cpp-python-$VERSION"
bin="$dir/build/bin/llama-bench"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$dir"
cd "$dir"
tarball="llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$tarball" ]; then
    # The simple index gives the sdist's address; pip download would try to build it.
    url=$(curl -fsSL "https://pypi.org/simple/llama-cpp-python/" \
        | grep -o "href=\"[^\"]*$tarball[^\"]*\"" | head -1 | sed 's/^href="//; s/#.*//; s/"$//')
    [ -n "$url" ] || { echo "could not find $tarball on PyPI" >&2; exit 1; }
    curl -fsSL -o "$tarball.partial" "$url"
    echo "$SHA256  $tarball.partial" | sha256sum -c --quiet
    mv "$tarball.partial" "$tarball"
fi
[ -d src ] || { mkdir -p src && tar xzf "$tarball" -C src --strip-components=1; }
command -v cmake >/dev/null || PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q cmake
cmake -S src/vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >&2
cmake --build build --target llama-bench -j "$(nproc)" >&2
echo "$bin"
