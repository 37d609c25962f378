// RMSNorm: Y[t, i] = X[t, i] * (1 / sqrt(mean(X[t, :]^2) + eps)) * G[i], one workgroup per row.

struct Params {
    width: u32,
    n_tokens: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> G: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn rms_norm(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let t = wid.x + wid.y * nwg.x;
    if t >= p.n_tokens {
        return;
    }
    let base = t * p.width;
    var sum = 0.0;
    for (var i = lid; i < p.width; i += WG) {
        let v = X[base + i];
        sum += v * v;
    }
    red[lid] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(red[0] / f32(p.width) + p.eps);
    for (var i = lid; i < p.width; i += WG) {
        Y[base + i] = X[base + i] * scale * G[i];
    }
}
