// Q6_K: 53 words per super-block of 256: the 210-byte GGUF block (ql 128, qh 64, scales 16,
// d) plus two zero bytes. In half h (128 weights), weight 32k + l takes its low nibble from
// ql[64h + l + 32*(k%2)] (high nibble when k >= 2) and its top two bits from qh[32h + l] at
// shift 2k: x = d * sc * (q - 32) with signed 8-bit sc per 16 weights.
// A unit is l = 4g..4g+4 of one half for all four k: one qh word and two ql words.

fn units(cols: u32) -> u32 {
    return cols / 16u;
}

fn q6(low: vec4<u32>, qh: vec4<u32>, k: u32, scale: f32) -> vec4<f32> {
    let q = low | (((qh >> vec4<u32>(2u * k)) & vec4<u32>(3u)) << vec4<u32>(4u));
    return scale * (vec4<f32>(q) - 32.0);
}

// d times the signed scale of sub-block `is` of the block at `base`.
fn q6_scale(base: u32, is: u32, d: f32) -> f32 {
    let byte = W[base + 48u + is / 4u] << (24u - 8u * (is % 4u));
    return d * f32(bitcast<i32>(byte) >> 24u);
}

fn dequant_unit(rw: u32, u: u32, cols: u32) -> Unit {
    let b = u / 16u;
    let h = (u % 16u) / 8u;
    let g = u % 8u;
    let base = rw + b * 53u;
    let d = f16_lo(W[base + 52u]);
    let ql_a = W[base + 16u * h + g];
    let ql_b = W[base + 16u * h + 8u + g];
    let qh = bytes4(W[base + 32u + 8u * h + g]);
    // The 16-weight sub-block of column 32k + 4g in half h.
    let is = 8u * h + g / 4u;
    let col = b * 256u + 128u * h + 4u * g;
    return Unit(
        q6(nib_lo(ql_a), qh, 0u, q6_scale(base, is, d)),
        q6(nib_lo(ql_b), qh, 1u, q6_scale(base, is + 2u, d)),
        q6(nib_hi(ql_a), qh, 2u, q6_scale(base, is + 4u, d)),
        q6(nib_hi(ql_b), qh, 3u, q6_scale(base, is + 6u, d)),
        vec4<u32>(col, col + 32u, col + 64u, col + 96u));
}
