// Q5_0: 6 words per block of 32: [d (f16) | 0], qh, then the 16 nibble bytes.
// Weight j's fifth bit is bit j of qh; nibbles as in Q4_0: x = d * (q - 16).
// A unit is half a block, as in Q4_0.

fn units(cols: u32) -> u32 {
    return cols / 16u;
}

// Fifth bits of weights j..j+4, as 0 or 16.
fn high4(qh: u32, j: u32) -> vec4<u32> {
    return ((vec4<u32>(qh) >> (vec4<u32>(j) + vec4<u32>(0u, 1u, 2u, 3u))) & vec4<u32>(1u)) << vec4<u32>(4u);
}

fn q5(lo: vec4<u32>, hi: vec4<u32>, d: f32) -> vec4<f32> {
    return (vec4<f32>(lo | hi) - 16.0) * d;
}

fn dequant_unit(rw: u32, u: u32, cols: u32) -> Unit {
    let b = u / 2u;
    let h = u % 2u;
    let base = rw + b * 6u;
    let d = f16_lo(W[base]);
    let qh = W[base + 1u];
    let q0 = W[base + 2u + 2u * h];
    let q1 = W[base + 3u + 2u * h];
    let j = 8u * h;
    let c = b * 32u + j;
    return Unit(
        q5(nib_lo(q0), high4(qh, j), d),
        q5(nib_lo(q1), high4(qh, j + 4u), d),
        q5(nib_hi(q0), high4(qh, j + 16u), d),
        q5(nib_hi(q1), high4(qh, j + 20u), d),
        vec4<u32>(c, c + 4u, c + 16u, c + 20u));
}
