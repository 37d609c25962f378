// Q4_K: 36 words per super-block of 256 (the GGUF block unchanged: it is already 4-aligned):
// [d | dmin] (two f16), 12 bytes of packed 6-bit scales and mins, 128 nibble bytes.
// qs bytes 32c..32c+32 hold sub-block 2c (low nibbles) and 2c+1 (high nibbles):
// x = d*sc*q - dmin*m. A unit is two qs words: weights 8v..8v+8 of both sub-blocks.

fn units(cols: u32) -> u32 {
    return cols / 16u;
}

// Byte i of the packed scales of the block at `base`.
fn kbyte(base: u32, i: u32) -> u32 {
    return (W[base + 1u + i / 4u] >> (8u * (i % 4u))) & 0xFFu;
}

// (scale, min) of sub-block j, unpacked as ggml's get_scale_min_k4.
fn scale_min(base: u32, j: u32) -> vec2<f32> {
    if j < 4u {
        return vec2<f32>(f32(kbyte(base, j) & 63u), f32(kbyte(base, j + 4u) & 63u));
    }
    let sc = (kbyte(base, j + 4u) & 0xFu) | ((kbyte(base, j - 4u) >> 6u) << 4u);
    let m = (kbyte(base, j + 4u) >> 4u) | ((kbyte(base, j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

fn dequant_unit(rw: u32, u: u32, cols: u32) -> Unit {
    let b = u / 16u;
    let c = (u % 16u) / 4u;
    let v = u % 4u;
    let base = rw + b * 36u;
    let dm = unpack2x16float(W[base]);
    let s0 = scale_min(base, 2u * c);
    let s1 = scale_min(base, 2u * c + 1u);
    let dl0 = dm.x * s0.x;
    let ml0 = dm.y * s0.y;
    let dl1 = dm.x * s1.x;
    let ml1 = dm.y * s1.y;
    let q0 = W[base + 4u + 8u * c + 2u * v];
    let q1 = W[base + 5u + 8u * c + 2u * v];
    let col = b * 256u + 64u * c + 8u * v;
    return Unit(
        dl0 * vec4<f32>(nib_lo(q0)) - ml0,
        dl0 * vec4<f32>(nib_lo(q1)) - ml0,
        dl1 * vec4<f32>(nib_hi(q0)) - ml1,
        dl1 * vec4<f32>(nib_hi(q1)) - ml1,
        vec4<u32>(col, col + 4u, col + 32u, col + 36u));
}
