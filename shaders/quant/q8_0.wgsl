// Q8_0: 9 words per block of 32: [d (f16) | 0], then 32 signed bytes: x = d * q.
// A unit is half a block: 16 consecutive weights.

fn units(cols: u32) -> u32 {
    return cols / 16u;
}

fn dequant_unit(rw: u32, u: u32, cols: u32) -> Unit {
    let b = u / 2u;
    let h = u % 2u;
    let base = rw + b * 9u;
    let d = f16_lo(W[base]);
    let q = base + 1u + 4u * h;
    return Unit(i8x4(W[q]) * d, i8x4(W[q + 1u]) * d, i8x4(W[q + 2u]) * d, i8x4(W[q + 3u]) * d,
        run4(b * 32u + 16u * h));
}
