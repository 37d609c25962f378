// Causal grouped-query attention of new tokens over one layer's KV cache (already holding
// them): for token t (at position pos0 + t) and head h, softmax(q . K[0..=pos0+t] * scale) . V.
//
// One workgroup per (token, head), walking the cache in tiles of WG positions with an online
// softmax (running max and sum, rescaling the output): no score buffer sized by the context,
// so any context length fits in a few hundred bytes of workgroup memory. Thread j scores
// position j of the tile; thread d accumulates output dimensions d, d + WG, ...

struct Params {
    n_tokens: u32,
    pos0: u32,
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    // Floats per cache position (n_head_kv * head_dim).
    kv_dim: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> Q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> K: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> V: array<f32>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;

const WG: u32 = 64u;
// Most head dimensions supported (the host checks): 4 output dims per thread.
const MAX_HD: u32 = 256u;

var<workgroup> q_tile: array<vec4<f32>, 64>; // MAX_HD / 4
var<workgroup> probs: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    // Nobody may overwrite `red` before everyone has read the result.
    workgroupBarrier();
    return r;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// q . K[j] for the kv head at float offset kv_off (a multiple of 4).
fn score(j: u32, kv_off: u32) -> f32 {
    let n4 = p.head_dim / 4u;
    let kb = (j * p.kv_dim + kv_off) / 4u;
    var s = 0.0;
    for (var i = 0u; i < n4; i++) {
        s += dot(q_tile[i], K[kb + i]);
    }
    return s * p.scale;
}

@compute @workgroup_size(64)
fn attention(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let task = wid.x + wid.y * nwg.x;
    if task >= p.n_tokens * p.n_head {
        return;
    }
    let t = task / p.n_head;
    let h = task % p.n_head;
    let n_ctx = p.pos0 + t + 1u;
    let kv_off = (h / (p.n_head / p.n_head_kv)) * p.head_dim;
    let q_width = p.n_head * p.head_dim;
    let q_base = (t * q_width + h * p.head_dim) / 4u;
    for (var i = lid; i < p.head_dim / 4u; i += WG) {
        q_tile[i] = Q[q_base + i];
    }
    workgroupBarrier();

    var m = -3.4028235e38; // running max (finite, so exp(m - m_new) never sees inf - inf)
    var sum = 0.0;
    var o = vec4<f32>(0.0);
    for (var j0 = 0u; j0 < n_ctx; j0 += WG) {
        let j = j0 + lid;
        let valid = j < n_ctx;
        var s = -3.4028235e38;
        if valid {
            s = score(j, kv_off);
        }
        let m_new = max(m, reduce_max(lid, s));
        var pj = 0.0;
        if valid {
            pj = exp(s - m_new);
        }
        probs[lid] = pj;
        let alpha = exp(m - m_new);
        sum = sum * alpha + reduce_sum(lid, pj);
        let n = min(WG, n_ctx - j0);
        for (var k = 0u; k < 4u; k++) {
            let d = lid + k * WG;
            if d < p.head_dim {
                var acc = o[k] * alpha;
                for (var jj = 0u; jj < n; jj++) {
                    acc += probs[jj] * V[(j0 + jj) * p.kv_dim + kv_off + d];
                }
                o[k] = acc;
            }
        }
        m = m_new;
        // `probs` is rewritten by the next tile.
        workgroupBarrier();
    }
    let inv = 1.0 / sum;
    let out_base = t * q_width + h * p.head_dim;
    for (var k = 0u; k < 4u; k++) {
        let d = lid + k * WG;
        if d < p.head_dim {
            O[out_base + d] = o[k] * inv;
        }
    }
}
