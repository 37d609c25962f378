// Y[t, :] = dequantized row ids[t] of the embedding table, for the rows in one chunk.
//
// Prepended: quant/common.wgsl and one format file (binding 1 is the table chunk W).
// One workgroup per token; a token whose row lies in another chunk is left to that chunk's
// dispatch.

struct Params {
    cols: u32,
    row0: u32,
    chunk_rows: u32,
    n_tokens: u32,
    row_words: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;

const WG: u32 = 64u;

fn store4(base: u32, c: u32, v: vec4<f32>) {
    for (var i = 0u; i < 4u; i++) {
        if c + i < p.cols {
            Y[base + c + i] = v[i];
        }
    }
}

@compute @workgroup_size(64)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let t = wid.x + wid.y * nwg.x;
    if t >= p.n_tokens {
        return;
    }
    let id = ids[t];
    if id < p.row0 || id >= p.row0 + p.chunk_rows {
        return;
    }
    let rw = (id - p.row0) * p.row_words;
    let base = t * p.cols;
    let nu = units(p.cols);
    for (var u = lid; u < nu; u += WG) {
        let w = dequant_unit(rw, u, p.cols);
        store4(base, w.col.x, w.w0);
        store4(base, w.col.y, w.w1);
        store4(base, w.col.z, w.w2);
        store4(base, w.col.w, w.w3);
    }
}
