// Q4_0: 5 words per block of 32: [d (f16) | 0], then the 16 nibble bytes.
// Byte j holds weight j (low nibble) and j + 16 (high nibble): x = d * (q - 8).
// A unit is half a block: qs words 2h and 2h + 1, i.e. weights 8h..8h+8 and 16+8h..16+8h+8.

fn units(cols: u32) -> u32 {
    return cols / 16u;
}

fn dequant_unit(rw: u32, u: u32, cols: u32) -> Unit {
    let b = u / 2u;
    let h = u % 2u;
    let base = rw + b * 5u;
    let d = f16_lo(W[base]);
    let q0 = W[base + 1u + 2u * h];
    let q1 = W[base + 2u + 2u * h];
    let c = b * 32u + 8u * h;
    return Unit(
        (vec4<f32>(nib_lo(q0)) - 8.0) * d,
        (vec4<f32>(nib_lo(q1)) - 8.0) * d,
        (vec4<f32>(nib_hi(q0)) - 8.0) * d,
        (vec4<f32>(nib_hi(q1)) - 8.0) * d,
        vec4<u32>(c, c + 4u, c + 16u, c + 20u));
}
