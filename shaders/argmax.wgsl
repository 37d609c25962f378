// Greedy decoding's argmax on the GPU, so only one u32 is read back instead of the logits.
// Pass 1: each workgroup reduces CHUNK floats to its best (value, index); pass 2: one
// workgroup reduces those. The first index wins ties, as on the CPU.

struct Params {
    offset: u32,
    len: u32,
    n_partials: u32,
}

struct Best {
    v: f32,
    i: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<Best>;
@group(0) @binding(3) var<storage, read_write> result: array<u32>;

const WG: u32 = 256u;
const CHUNK: u32 = 2048u;
const NONE: u32 = 0xFFFFFFFFu;

var<workgroup> red_v: array<f32, 256>;
var<workgroup> red_i: array<u32, 256>;

fn better(a: Best, b: Best) -> Best {
    if b.i != NONE && (a.i == NONE || b.v > a.v || (b.v == a.v && b.i < a.i)) {
        return b;
    }
    return a;
}

// Tree reduction of each thread's candidate; every thread returns the winner.
fn reduce(lid: u32, mine: Best) -> Best {
    red_v[lid] = mine.v;
    red_i[lid] = mine.i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let w = better(Best(red_v[lid], red_i[lid]), Best(red_v[lid + s], red_i[lid + s]));
            red_v[lid] = w.v;
            red_i[lid] = w.i;
        }
        workgroupBarrier();
    }
    return Best(red_v[0], red_i[0]);
}

@compute @workgroup_size(256)
fn partial(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = wid.x + wid.y * nwg.x;
    if g >= p.n_partials {
        return;
    }
    var best = Best(0.0, NONE);
    let end = min(p.len, (g + 1u) * CHUNK);
    for (var i = g * CHUNK + lid; i < end; i += WG) {
        best = better(best, Best(X[p.offset + i], i));
    }
    let w = reduce(lid, best);
    if lid == 0u {
        partials[g] = w;
    }
}

@compute @workgroup_size(256)
fn final_pass(@builtin(local_invocation_index) lid: u32) {
    var best = Best(0.0, NONE);
    for (var g = lid; g < p.n_partials; g += WG) {
        best = better(best, partials[g]);
    }
    let w = reduce(lid, best);
    if lid == 0u {
        // Only NaNs: index 0, as the CPU's strict `>` scan returns.
        result[0] = select(w.i, 0u, w.i == NONE);
    }
}
