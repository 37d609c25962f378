// F32 weights: one word per weight, rows of `cols` words. Columns past the row end read as 0.

fn units(cols: u32) -> u32 {
    return (cols + 15u) / 16u;
}

fn f32_run(rw: u32, c: u32, cols: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if c + i < cols {
            v[i] = bitcast<f32>(W[rw + c + i]);
        }
    }
    return v;
}

fn dequant_unit(rw: u32, u: u32, cols: u32) -> Unit {
    let c = u * 16u;
    return Unit(f32_run(rw, c, cols), f32_run(rw, c + 4u, cols), f32_run(rw, c + 8u, cols),
        f32_run(rw, c + 12u, cols), run4(c));
}
