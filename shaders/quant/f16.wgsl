// F16 weights: two per word (low half first), each row padded to a whole word.
// Columns past the row end read as 0.

fn units(cols: u32) -> u32 {
    return (cols + 15u) / 16u;
}

// Columns c..c+4 (c even) from the two words holding them.
fn f16_run(rw: u32, c: u32, cols: u32) -> vec4<f32> {
    if c >= cols {
        return vec4<f32>(0.0);
    }
    let a = unpack2x16float(W[rw + c / 2u]);
    var b = vec2<f32>(0.0);
    if c + 2u < cols {
        b = unpack2x16float(W[rw + c / 2u + 1u]);
    }
    let v = vec4<f32>(a, b);
    let inside = vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(cols);
    return select(vec4<f32>(0.0), v, inside);
}

fn dequant_unit(rw: u32, u: u32, cols: u32) -> Unit {
    let c = u * 16u;
    return Unit(f16_run(rw, c, cols), f16_run(rw, c + 4u, cols), f16_run(rw, c + 8u, cols),
        f16_run(rw, c + 12u, cols), run4(c));
}
