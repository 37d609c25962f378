// Y[t, row] = W[row, :] . X[t, :] (+ B[row]) for the rows of one weight chunk.
//
// Prepended: quant/common.wgsl and one format file (binding 1 is the weight chunk W).
// Weights are dequantized to f32 in registers, a unit of 16 at a time, and accumulated in f32
// (activations are not quantized), so results track an f32 reference. Three kernels:
// - `matvec` (GPUs, one token): a workgroup per ROWS rows; each thread takes every WG-th unit
//   (adjacent threads read adjacent weights) and the partial sums meet in workgroup memory;
// - `matmul` (GPUs, prompts): a thread per row, activation tiles staged in workgroup memory;
// - `matmul_rows` (software adapters): a thread per row and token, nothing shared.

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
    // Add to Y instead of overwriting it (residual connections).
    accumulate: u32,
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

// Accumulators are vec4s rather than private arrays: arrays indexed in loops end up in
// scratch memory on some compilers (a 6x slowdown on llvmpipe).
var<workgroup> red: array<vec4<f32>, 64>; // one per thread

// Columns of the activation tile `matmul` stages, and the tile (TILE tokens x XT_COLS).
const XT_COLS: u32 = 256u;
const XT_VEC4: u32 = 64u; // XT_COLS / 4
var<workgroup> xt: array<vec4<f32>, 512>; // TILE * XT_VEC4

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

fn unit_dot_x(w: Unit, x: array<vec4<f32>, 4>) -> f32 {
    return dot(w.w0, x[0]) + dot(w.w1, x[1]) + dot(w.w2, x[2]) + dot(w.w3, x[3]);
}

// Sums red[i] over the workgroup's threads i into red[0] (a tree: log2(WG) barriers).
fn reduce(lid: u32) {
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
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
    let i = t * p.rows + row;
    if p.accumulate != 0u {
        y += Y[i];
    }
    Y[i] = y;
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
        // The activations of a unit are loaded once for all rows (every row's unit covers
        // the same columns).
        let first = dequant_unit(r0 * p.row_words, u, p.cols);
        let x = array<vec4<f32>, 4>(x4(xb, first.col.x), x4(xb, first.col.y),
            x4(xb, first.col.z), x4(xb, first.col.w));
        acc.x += unit_dot_x(first, x);
        for (var i = 1u; i < ROWS; i++) {
            if i < nr {
                acc[i] += unit_dot_x(dequant_unit((r0 + i) * p.row_words, u, p.cols), x);
            }
        }
    }
    red[lid] = acc;
    reduce(lid);
    if lid < nr {
        store(wid.z, r0 + lid, red[0][lid]);
    }
}

// A tile of TILE tokens for WG rows (prompts), one row per thread. The tile's activations
// are staged in workgroup memory XT_COLS columns at a time (read from global memory once per
// workgroup, not once per row), and every thread dequantizes each unit of its row once for
// all the tile's tokens. A unit's columns never straddle an XT_COLS boundary: units are 16
// consecutive weights' worth of one block, and blocks are at most 256 columns.
@compute @workgroup_size(64)
fn matmul(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let r0 = group_index(wid, nwg) * WG;
    if r0 >= p.chunk_rows {
        return;
    }
    let r = r0 + lid;
    // Threads past the last row still load tiles and meet the barriers; they compute on the
    // last row and store nothing.
    let rw = min(r, p.chunk_rows - 1u) * p.row_words;
    let t0 = wid.z * TILE;
    let nt = min(TILE, p.n_tokens - t0);
    let nu = units(p.cols);
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    for (var c0 = 0u; c0 < p.cols; c0 += XT_COLS) {
        for (var i = lid; i < TILE * XT_VEC4; i += WG) {
            let t = i / XT_VEC4;
            var v = vec4<f32>(0.0);
            if t < nt {
                v = x4((t0 + t) * p.cols, c0 + 4u * (i % XT_VEC4));
            }
            xt[i] = v;
        }
        workgroupBarrier();
        let u_end = min(nu, (c0 + XT_COLS) / 16u);
        for (var u = c0 / 16u; u < u_end; u++) {
            let w = dequant_unit(rw, u, p.cols);
            let q = (w.col - vec4<u32>(c0)) / vec4<u32>(4u);
            for (var t = 0u; t < 4u; t++) {
                lo[t] += tile_dot(w, q, t);
                hi[t] += tile_dot(w, q, t + 4u);
            }
        }
        workgroupBarrier();
    }
    if r < p.chunk_rows {
        for (var t = 0u; t < 4u; t++) {
            if t < nt {
                store(t0 + t, r, lo[t]);
            }
            if t + 4u < nt {
                store(t0 + t + 4u, r, hi[t]);
            }
        }
    }
}

// A unit against token t of the staged tile (`q`: the unit's runs as vec4 indices).
fn tile_dot(w: Unit, q: vec4<u32>, t: u32) -> f32 {
    let b = t * XT_VEC4;
    return dot(w.w0, xt[b + q.x]) + dot(w.w1, xt[b + q.y]) + dot(w.w2, xt[b + q.z])
        + dot(w.w3, xt[b + q.w]);
}

// One row per thread, one token (z) per dispatch layer: for software adapters (llvmpipe),
// which run a workgroup's invocations as SIMD lanes of one CPU thread. There, the activation
// loads are the same address in every lane (a cheap broadcast instead of a gather), there are
// no barriers, and nothing but one unit is live (a dequantized unit held across several dot
// products spills the CPU's vector registers). On a real GPU this reads rows uncoalesced;
// `matvec` and `matmul` are the kernels for those.
@compute @workgroup_size(64)
fn matmul_rows(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let r = group_index(wid, nwg) * WG + lid;
    if r >= p.chunk_rows {
        return;
    }
    let xb = wid.z * p.cols;
    let rw = r * p.row_words;
    let nu = units(p.cols);
    var acc = 0.0;
    for (var u = 0u; u < nu; u++) {
        acc += unit_dot(dequant_unit(rw, u, p.cols), xb);
    }
    store(wid.z, r, acc);
}
