// Rotary embedding, NeoX layout: in each head, pairs (i, i + head_dim/2) are rotated by the
// angle of position pos0 + t and frequency i. The cos/sin table is computed on the CPU (in
// f64, as the CPU backend does) once per (head_dim, freq_base): GPU sin/cos of large angles
// are not accurate enough, and a table makes both backends rotate by identical values.

struct Params {
    n_tokens: u32,
    n_heads: u32,
    head_dim: u32,
    pos0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// (cos, sin) at [position * head_dim/2 + i].
@group(0) @binding(1) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn rope(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let half = p.head_dim / 2u;
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    if idx >= p.n_tokens * p.n_heads * half {
        return;
    }
    let i = idx % half;
    let th = idx / half;
    let t = th / p.n_heads;
    let base = th * p.head_dim;
    let cs = table[(p.pos0 + t) * half + i];
    let a = Y[base + i];
    let b = Y[base + i + half];
    Y[base + i] = a * cs.x - b * cs.y;
    Y[base + i + half] = a * cs.y + b * cs.x;
}
