#!/usr/bin/env python3
"""Dequantize every tensor of a GGUF file with gguf-py, an independent reader, for tests/convert.rs.

Usage: gguf_py_check.py FILE.gguf...

Writes to stdout, for each file, a line "FILE" <TAB> PATH <LF>; then for each of its tensors in
file order a header line
    NAME <TAB> TYPE <TAB> DIMS (comma-separated, ggml order) <TAB> N_ELEMENTS <LF>
followed by N_ELEMENTS little-endian float32 values (gguf.quants.dequantize); finally
"END" <LF>. The Rust test reads the stream and compares every value with marco's own
dequantization of the same tensor; nothing is written to disk.

Needs: python3 -m pip install gguf numpy
"""
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def dump(path, out):
    out.write(f"FILE\t{path}\n".encode())
    for t in GGUFReader(path).tensors:
        values = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype="<f4").reshape(-1)
        dims = ",".join(str(int(d)) for d in t.shape)
        out.write(f"{t.name}\t{t.tensor_type.name}\t{dims}\t{values.size}\n".encode())
        out.write(values.tobytes())


def main(paths):
    out = sys.stdout.buffer
    for path in paths:
        dump(path, out)
    out.write(b"END\n")
    out.flush()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
