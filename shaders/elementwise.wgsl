// Elementwise ops over `len` floats, one thread per element.

struct Params {
    len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;

const WG: u32 = 256u;

fn index(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// Y = silu(A) * B, with A the gate and B the up projection.
@compute @workgroup_size(256)
fn swiglu(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = index(lid, wid, nwg);
    if i < p.len {
        let g = A[i];
        Y[i] = g / (1.0 + exp(-g)) * B[i];
    }
}
