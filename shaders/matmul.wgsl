// Y[t, row] = W[row, :] . X[t, :] (+ B[row]) for the rows of one weight chunk.
//
// Prepended: quant/common.wgsl and one format file (binding 1 is the weight chunk W).
// Each thread dequantizes every WG-th unit of 16 weights of a row into registers and dots it
// with the activations; the 64 partial sums per output are reduced in workgroup memory. Weights are dequantized to f32 and
// accumulated in f32 (no activation quantization), so results track an f32 reference.

struct Params {
    cols: u32,
    // Rows of the whole matrix: the stride of a token in Y.
    rows: u32,
    // First row of this chunk in the whole matrix.
    row0: u32,
    chunk_rows: u32,
    n_tokens: u32,
    row_words: u32,
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read> B: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;

const WG: u32 = 64u;
// Rows per workgroup of `matvec`.
const ROWS: u32 = 4u;
// Tokens per workgroup of `matmul`.
const TILE: u32 = 8u;

// Accumulators are vec4s indexed by constants: private arrays indexed in loops end up in
// scratch memory on some compilers (a 6x slowdown on llvmpipe).
var<workgroup> red: array<vec4<f32>, 128>; // 2 per thread

// X[base + c .. base + c + 4], zero past the row end (F32/F16 rows of any length).
fn x4(base: u32, c: u32) -> vec4<f32> {
    if c + 4u <= p.cols {
        return vec4<f32>(X[base + c], X[base + c + 1u], X[base + c + 2u], X[base + c + 3u]);
    }
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if c + i < p.cols {
            v[i] = X[base + c + i];
        }
    }
    return v;
}

fn unit_dot(w: Unit, base: u32) -> f32 {
    return dot(w.w0, x4(base, w.col.x)) + dot(w.w1, x4(base, w.col.y))
        + dot(w.w2, x4(base, w.col.z)) + dot(w.w3, x4(base, w.col.w));
}

// Sums red[2 * i + k] over the workgroup's threads i into red[k] (k = 0, 1).
fn reduce(lid: u32) {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[2u * lid] += red[2u * (lid + s)];
            red[2u * lid + 1u] += red[2u * (lid + s) + 1u];
        }
        workgroupBarrier();
    }
}

fn store(t: u32, r: u32, v: f32) {
    let row = p.row0 + r;
    var y = v;
    if p.has_bias != 0u {
        y += B[row];
    }
    Y[t * p.rows + row] = y;
}

// Rows are spread over the x and y of the dispatch (one dimension is capped at 65535 groups).
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// ROWS rows for one token (z): generation, where every weight is read once per token.
@compute @workgroup_size(64)
fn matvec(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let r0 = group_index(wid, nwg) * ROWS;
    if r0 >= p.chunk_rows {
        return;
    }
    let nr = min(ROWS, p.chunk_rows - r0);
    let xb = wid.z * p.cols;
    let nu = units(p.cols);
    var acc = vec4<f32>(0.0);
    for (var u = lid; u < nu; u += WG) {
        for (var i = 0u; i < ROWS; i++) {
            if i < nr {
                acc[i] += unit_dot(dequant_unit((r0 + i) * p.row_words, u, p.cols), xb);
            }
        }
    }
    red[2u * lid] = acc;
    red[2u * lid + 1u] = vec4<f32>(0.0);
    reduce(lid);
    if lid < nr {
        store(wid.z, r0 + lid, red[0][lid]);
    }
}

// One row for a tile of TILE tokens (prompts): the row is dequantized once per tile.
@compute @workgroup_size(64)
fn matmul(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let r = group_index(wid, nwg);
    if r >= p.chunk_rows {
        return;
    }
    let t0 = wid.z * TILE;
    let nt = min(TILE, p.n_tokens - t0);
    let rw = r * p.row_words;
    let nu = units(p.cols);
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    for (var u = lid; u < nu; u += WG) {
        let w = dequant_unit(rw, u, p.cols);
        for (var t = 0u; t < 4u; t++) {
            if t < nt {
                lo[t] += unit_dot(w, (t0 + t) * p.cols);
            }
            if t + 4u < nt {
                hi[t] += unit_dot(w, (t0 + t + 4u) * p.cols);
            }
        }
    }
    red[2u * lid] = lo;
    red[2u * lid + 1u] = hi;
    reduce(lid);
    if lid < nt {
        store(t0 + lid, r, red[lid / 4u][lid % 4u]);
    }
}
