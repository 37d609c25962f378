// Shared by every weight format: the weight words and the unit of work.
//
// A weight row is re-laid at load time into 32-bit words (see src/backend/gpu/weights.rs), and
// each format file defines `units(cols)` and `dequant_unit(row_word, u, cols)`: unit `u` of a
// row is 16 weights, returned as four runs of four consecutive columns so the kernels can use
// vec4 dot products. Kernels prepend this file and one format file to their own source.

@group(0) @binding(1) var<storage, read> W: array<u32>;

struct Unit {
    w0: vec4<f32>,
    w1: vec4<f32>,
    w2: vec4<f32>,
    w3: vec4<f32>,
    // First column of each run of four.
    col: vec4<u32>,
}

// The f16 in the low half of a word (GGUF scales are little-endian halves).
fn f16_lo(w: u32) -> f32 {
    return unpack2x16float(w).x;
}

// The four bytes of a word, low byte first.
fn bytes4(w: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xFFu);
}

// The low nibbles of the four bytes of a word.
fn nib_lo(w: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xFu);
}

// The high nibbles of the four bytes of a word.
fn nib_hi(w: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(0xFu);
}

// The four bytes of a word as signed 8-bit values (shift each to the top, then arithmetic
// shift back down to sign-extend).
fn i8x4(w: u32) -> vec4<f32> {
    let top = vec4<u32>(w << 24u, w << 16u, w << 8u, w);
    return vec4<f32>(bitcast<vec4<i32>>(top) >> vec4<u32>(24u));
}

// Four consecutive columns starting at `c`.
fn run4(c: u32) -> vec4<u32> {
    return vec4<u32>(c, c + 4u, c + 8u, c + 12u);
}
