//! Quantizers of the K-quants (`Q2_K` .. `Q6_K`, `Q8_K`), one 256-element super-block at a time.
//!
//! The `*_ref` functions follow ggml's `quantize_row_*_K_ref` (llama-quantize without an
//! imatrix); the `*_weighted` ones follow `quantize_row_*_K_impl` with `quant_weights`.

use super::search::{
    make_q3_quants, make_qkx_quants, make_qp_quants, make_qx_quants, nearest_int, QkxSearch,
    GROUP_MAX_EPS,
};
use crate::blocks::{
    get_scale_min_k4, q3k_scales, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, LeF16,
};
use crate::types::QK_K;

type Sb<'a> = &'a [f32; QK_K];

/// Pack 2-bit values: byte `l` of each 32-byte half `h` holds weights `128h + l + 32k` at
/// bits `2k` (shared by `Q2_K` and the low bits of `Q3_K`).
fn pack2(l: &[u8; QK_K]) -> [u8; QK_K / 4] {
    std::array::from_fn(|i| {
        let (h, j) = (i / 32, i % 32);
        let base = 128 * h + j;
        l[base] | (l[base + 32] << 2) | (l[base + 64] << 4) | (l[base + 96] << 6)
    })
}

/// Pack 4-bit values: byte `l` of 32-byte chunk `c` holds weight `64c + l` (low nibble) and
/// `64c + 32 + l` (high nibble).
fn pack4(l: &[u8; QK_K]) -> [u8; QK_K / 2] {
    std::array::from_fn(|i| {
        let (c, j) = (i / 32, i % 32);
        (l[64 * c + j] & 0xF) | (l[64 * c + 32 + j] << 4)
    })
}

/// Pack the fifth bits of `Q5_K`: weight `32s + l` goes to bit `s` of `qh[l]`.
fn pack_high5(l: &[u8; QK_K]) -> [u8; QK_K / 8] {
    std::array::from_fn(|j| (0..8).fold(0u8, |acc, s| acc | (((l[32 * s + j] >> 4) & 1) << s)))
}

/// Pack 8 six-bit scales and mins into the 12 bytes that `get_scale_min_k4` reads.
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    s[..4].copy_from_slice(&ls[..4]);
    s[4..8].copy_from_slice(&lm[..4]);
    for j in 4..8 {
        s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
        s[j - 4] |= (ls[j] >> 4) << 6;
        s[j] |= (lm[j] >> 4) << 6;
    }
    s
}

/// Pack 16 six-bit values (already offset to 0..64) as `Q3_K` scales (see `q3k_scales`).
fn pack_q3k_scales(ls: &[i32; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (j, &l) in ls.iter().enumerate() {
        if j < 8 {
            s[j] = (l & 0xF) as u8;
        } else {
            s[j - 8] |= ((l & 0xF) << 4) as u8;
        }
        s[8 + j % 4] |= ((l >> 4) << (2 * (j / 4))) as u8;
    }
    s
}

/// Re-quantize each 32-element sub-block of a `Q4_K`/`Q5_K` super-block against its final
/// (f16-rounded, 6-bit) scale and min, as ggml does after packing the scales.
fn requant_k4(x: Sb, d: LeF16, dmin: LeF16, scales: &[u8; 12], nmax: i32, l: &mut [u8; QK_K]) {
    let chunks = l
        .as_chunks_mut::<32>()
        .0
        .iter_mut()
        .zip(x.as_chunks::<32>().0);
    for (j, (lj, xj)) in chunks.enumerate() {
        let (sc, m) = get_scale_min_k4(j, scales);
        let d = d.to_f32() * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for (o, &xi) in lj.iter_mut().zip(xj) {
            *o = nearest_int((xi + dm) / d).clamp(0, nmax) as u8;
        }
    }
}

// ------------------------------------------------------------------------------------ Q2_K

/// ggml `quantize_row_q2_K_ref`.
pub(crate) fn q2_k_ref(x: Sb, y: &mut BlockQ2K) {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
    let p = QkxSearch {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
        qkx3: false,
    };
    for (j, (xj, lj)) in x
        .as_chunks::<16>()
        .0
        .iter()
        .zip(l.as_chunks_mut::<16>().0)
        .enumerate()
    {
        let w = xj.map(f32::abs);
        let mut aux = [0u8; 16];
        (scales[j], mins[j]) = make_qkx_quants(p, xj, &w, lj, &mut aux);
    }
    let max_scale = scales
        .iter()
        .fold(0.0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0.0f32, |m, &s| if s > m { s } else { m });

    let mut packed = [0u8; 16];
    y.d = LeF16::from_f32(0.0);
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for (p, &s) in packed.iter_mut().zip(&scales) {
            *p = nearest_int(iscale * s) as u8;
        }
        y.d = LeF16::from_f32(max_scale / 15.0);
    }
    y.dmin = LeF16::from_f32(0.0);
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for (p, &m) in packed.iter_mut().zip(&mins) {
            *p |= (nearest_int(iscale * m) << 4) as u8;
        }
        y.dmin = LeF16::from_f32(max_min / 15.0);
    }
    y.scales = packed;
    requant_q2k(x, y, &mut l);
    y.qs = pack2(&l);
}

/// Re-quantize against the final packed scales and mins of a `Q2_K` block.
fn requant_q2k(x: Sb, y: &BlockQ2K, l: &mut [u8; QK_K]) {
    let (d_all, m_all) = (y.d.to_f32(), y.dmin.to_f32());
    let chunks = l
        .as_chunks_mut::<16>()
        .0
        .iter_mut()
        .zip(x.as_chunks::<16>().0);
    for ((lj, xj), &sc) in chunks.zip(&y.scales) {
        let d = d_all * (sc & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_all * (sc >> 4) as f32;
        for (o, &xi) in lj.iter_mut().zip(xj) {
            *o = nearest_int((xi + dm) / d).clamp(0, 3) as u8;
        }
    }
}

/// ggml `quantize_row_q2_K_impl` (one super-block; `qw` its importance).
pub(crate) fn q2_k_weighted(x: Sb, qw: Sb, y: &mut BlockQ2K) {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
    let sigma2 = sum_squares(x) / QK_K as f32;
    let p = QkxSearch {
        nmax: 3,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
        qkx3: true,
    };
    let subs = x.as_chunks::<16>().0.iter().zip(qw.as_chunks::<16>().0);
    for (j, ((xj, qj), lj)) in subs.zip(l.as_chunks_mut::<16>().0).enumerate() {
        let w: [f32; 16] = std::array::from_fn(|k| qj[k] * (sigma2 + xj[k] * xj[k]).sqrt());
        sw[j] = w.iter().fold(0.0f32, |a, &b| a + b);
        let mut aux = [0u8; 16];
        (scales[j], mins[j]) = make_qkx_quants(p, xj, &w, lj, &mut aux);
    }
    let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
    let dm = make_qp_quants(15, &scales, &mut ls, &sw);
    let mm = make_qp_quants(15, &mins, &mut lm, &sw);
    y.d = LeF16::from_f32(dm);
    y.dmin = LeF16::from_f32(mm);
    y.scales = std::array::from_fn(|j| ls[j] | (lm[j] << 4));
    requant_q2k(x, y, &mut l);
    y.qs = pack2(&l);
}

/// Σ x² in element order (ggml's `sumx2` loops).
fn sum_squares(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |s, &v| s + v * v)
}

// ------------------------------------------------------------------------------------ Q3_K

/// Re-quantize against the final scales of a `Q3_K` block and pack quants and high bits.
fn finish_q3k(x: Sb, y: &mut BlockQ3K, l: &mut [i8; QK_K]) {
    let d_all = y.d.to_f32();
    let scales = q3k_scales(&y.scales);
    let chunks = l
        .as_chunks_mut::<16>()
        .0
        .iter_mut()
        .zip(x.as_chunks::<16>().0);
    for ((lj, xj), &sc) in chunks.zip(&scales) {
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        for (o, &xi) in lj.iter_mut().zip(xj) {
            *o = (nearest_int(xi / d).clamp(-4, 3) + 4) as i8;
        }
    }
    // Values above 3 keep their third bit in hmask: weight j → bit j / 32 of byte j % 32.
    let mut hmask = [0u8; QK_K / 8];
    let mut low = [0u8; QK_K];
    for (j, (&v, o)) in l.iter().zip(&mut low).enumerate() {
        let mut v = v as u8;
        if v > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            v -= 4;
        }
        *o = v;
    }
    y.hmask = hmask;
    y.qs = pack2(&low);
}

/// ggml `quantize_row_q3_K_ref`.
pub(crate) fn q3_k_ref(x: Sb, y: &mut BlockQ3K) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let subs = x.as_chunks::<16>().0.iter().zip(l.as_chunks_mut::<16>().0);
    for (s, (xj, lj)) in scales.iter_mut().zip(subs) {
        *s = make_q3_quants(4, xj, lj);
    }
    let (mut amax, mut max_scale) = (0.0f32, 0.0f32);
    for &s in &scales {
        if s.abs() > amax {
            amax = s.abs();
            max_scale = s;
        }
    }
    y.scales = [0; 12];
    y.d = LeF16::from_f32(0.0);
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        // ggml stores nearest_int into an int8_t before clamping: keep that wrap.
        let ls = scales.map(|s| ((nearest_int(iscale * s) as i8).clamp(-32, 31) + 32) as i32);
        y.scales = pack_q3k_scales(&ls);
        y.d = LeF16::from_f32(1.0 / iscale);
    }
    finish_q3k(x, y, &mut l);
}

/// ggml `quantize_row_q3_K_impl` (one super-block; `qw` its importance).
pub(crate) fn q3_k_weighted(x: Sb, qw: Sb, y: &mut BlockQ3K) {
    let mut l = [0i8; QK_K];
    let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let subs = x.as_chunks::<16>().0.iter().zip(qw.as_chunks::<16>().0);
    for (j, ((xj, qj), lj)) in subs.zip(l.as_chunks_mut::<16>().0).enumerate() {
        let w: [f32; 16] = std::array::from_fn(|k| qj[k] * (sigma2 + xj[k] * xj[k]).sqrt());
        sw[j] = w.iter().fold(0.0f32, |a, &b| a + b);
        scales[j] = make_qx_quants(4, xj, lj, &w);
    }
    let mut ls = [0i8; 16];
    let d_block = make_qx_quants(32, &scales, &mut ls, &sw);
    y.scales = pack_q3k_scales(&ls.map(|v| v as i32));
    y.d = LeF16::from_f32(d_block);
    finish_q3k(x, y, &mut l);
}

// ------------------------------------------------------------------------------- Q4_K, Q5_K

/// The ggml `_ref` scale/min quantization shared by `Q4_K` and `Q5_K`: returns the packed
/// scales, `d` and `dmin`.
fn ref_scales_k4(scales: &[f32; 8], mins: &[f32; 8]) -> ([u8; 12], LeF16, LeF16) {
    let max_scale = scales
        .iter()
        .fold(0.0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0.0f32, |m, &s| if s > m { s } else { m });
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // ggml stores nearest_int into a uint8_t, then clamps to 63: keep the wrap.
    let ls = scales.map(|s| (nearest_int(inv_scale * s) as u8).min(63));
    let lm = mins.map(|m| (nearest_int(inv_min * m) as u8).min(63));
    let d = LeF16::from_f32(max_scale / 63.0);
    let dmin = LeF16::from_f32(max_min / 63.0);
    (pack_scale_min_k4(&ls, &lm), d, dmin)
}

/// The `_ref` sub-block search of `Q4_K` (`nmax` 15) and `Q5_K` (`nmax` 31).
fn ref_subblocks_k4(x: Sb, p: QkxSearch, l: &mut [u8; QK_K]) -> ([f32; 8], [f32; 8]) {
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let subs = x.as_chunks::<32>().0.iter().zip(l.as_chunks_mut::<32>().0);
    for (j, (xj, lj)) in subs.enumerate() {
        let av_x = (sum_squares(xj) / 32.0).sqrt();
        let w = xj.map(|v| av_x + v.abs());
        let mut aux = [0u8; 32];
        (scales[j], mins[j]) = make_qkx_quants(p, xj, &w, lj, &mut aux);
    }
    (scales, mins)
}

/// The `_impl` sub-block search of `Q4_K`/`Q5_K` and the quantization of the scales.
fn weighted_k4(x: Sb, qw: Sb, nmax: i32, l: &mut [u8; QK_K]) -> ([u8; 12], LeF16, LeF16) {
    let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let p = QkxSearch {
        nmax,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
        qkx3: true,
    };
    let subs = x.as_chunks::<32>().0.iter().zip(qw.as_chunks::<32>().0);
    for (j, ((xj, qj), lj)) in subs.zip(l.as_chunks_mut::<32>().0).enumerate() {
        let w: [f32; 32] = std::array::from_fn(|k| qj[k] * (sigma2 + xj[k] * xj[k]).sqrt());
        sw[j] = w.iter().fold(0.0f32, |a, &b| a + b);
        let mut aux = [0u8; 32];
        (scales[j], mins[j]) = make_qkx_quants(p, xj, &w, lj, &mut aux);
    }
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    let packed = pack_scale_min_k4(&ls.map(|v| v.min(63)), &lm.map(|v| v.min(63)));
    (packed, LeF16::from_f32(d_block), LeF16::from_f32(m_block))
}

/// ggml `quantize_row_q4_K_ref`.
pub(crate) fn q4_k_ref(x: Sb, y: &mut BlockQ4K) {
    let mut l = [0u8; QK_K];
    let p = QkxSearch {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
        qkx3: false,
    };
    let (scales, mins) = ref_subblocks_k4(x, p, &mut l);
    (y.scales, y.d, y.dmin) = ref_scales_k4(&scales, &mins);
    requant_k4(x, y.d, y.dmin, &y.scales, 15, &mut l);
    y.qs = pack4(&l);
}

/// ggml `quantize_row_q4_K_impl` (one super-block; `qw` its importance).
pub(crate) fn q4_k_weighted(x: Sb, qw: Sb, y: &mut BlockQ4K) {
    let mut l = [0u8; QK_K];
    (y.scales, y.d, y.dmin) = weighted_k4(x, qw, 15, &mut l);
    requant_k4(x, y.d, y.dmin, &y.scales, 15, &mut l);
    y.qs = pack4(&l);
}

/// ggml `quantize_row_q5_K_ref`.
pub(crate) fn q5_k_ref(x: Sb, y: &mut BlockQ5K) {
    let mut l = [0u8; QK_K];
    let p = QkxSearch {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
        qkx3: false,
    };
    let (scales, mins) = ref_subblocks_k4(x, p, &mut l);
    (y.scales, y.d, y.dmin) = ref_scales_k4(&scales, &mins);
    requant_k4(x, y.d, y.dmin, &y.scales, 31, &mut l);
    y.qh = pack_high5(&l);
    y.qs = pack4(&l);
}

/// ggml `quantize_row_q5_K_impl` (one super-block; `qw` its importance).
pub(crate) fn q5_k_weighted(x: Sb, qw: Sb, y: &mut BlockQ5K) {
    let mut l = [0u8; QK_K];
    (y.scales, y.d, y.dmin) = weighted_k4(x, qw, 31, &mut l);
    requant_k4(x, y.d, y.dmin, &y.scales, 31, &mut l);
    y.qh = pack_high5(&l);
    y.qs = pack4(&l);
}

// ------------------------------------------------------------------------------------ Q6_K

/// ggml `quantize_row_q6_K_ref` (`qw == None`) and `quantize_row_q6_K_impl` (`qw` given: the
/// importance is used directly as the error weight, without ggml's other `_impl` factor).
pub(crate) fn q6_k(x: Sb, qw: Option<Sb>, y: &mut BlockQ6K) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_abs, mut max_scale) = (0.0f32, 0.0f32);
    let subs = x.as_chunks::<16>().0.iter().zip(l.as_chunks_mut::<16>().0);
    for (j, (xj, lj)) in subs.enumerate() {
        let w: [f32; 16] = match qw {
            Some(qw) => std::array::from_fn(|k| qw[16 * j + k]),
            None => xj.map(|v| v * v),
        };
        scales[j] = make_qx_quants(32, xj, lj, &w);
        if scales[j].abs() > max_abs {
            max_abs = scales[j].abs();
            max_scale = scales[j];
        }
    }
    if max_abs < GROUP_MAX_EPS {
        *y = BlockQ6K {
            ql: [0; 128],
            qh: [0; 64],
            scales: [0; 16],
            d: LeF16::from_f32(0.0),
        };
        return;
    }
    let iscale = -128.0 / max_scale;
    y.d = LeF16::from_f32(1.0 / iscale);
    y.scales = scales.map(|s| nearest_int(iscale * s).min(127) as i8);

    let d_all = y.d.to_f32();
    let chunks = l
        .as_chunks_mut::<16>()
        .0
        .iter_mut()
        .zip(x.as_chunks::<16>().0);
    for ((lj, xj), &sc) in chunks.zip(&y.scales) {
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        for (o, &xi) in lj.iter_mut().zip(xj) {
            *o = (nearest_int(xi / d).clamp(-32, 31) + 32) as i8;
        }
    }
    (y.ql, y.qh) = pack_q6k(&l.map(|v| v as u8));
}

/// Pack 6-bit values (0..64) as `Q6_K` `ql`/`qh` (the inverse of `q6k_quant` in dequant).
fn pack_q6k(l: &[u8; QK_K]) -> ([u8; 128], [u8; 64]) {
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for h in 0..2 {
        for j in 0..32 {
            let q: [u8; 4] = std::array::from_fn(|k| l[128 * h + 32 * k + j]);
            ql[64 * h + j] = (q[0] & 0xF) | ((q[2] & 0xF) << 4);
            ql[64 * h + 32 + j] = (q[1] & 0xF) | ((q[3] & 0xF) << 4);
            qh[32 * h + j] =
                (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
        }
    }
    (ql, qh)
}

// ------------------------------------------------------------------------------------ Q8_K

/// ggml `quantize_row_q8_K_ref`: `d = max / -127` of the signed extreme, `q = round(x / d)`.
pub(crate) fn q8_k_ref(x: Sb, y: &mut BlockQ8K) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        *y = BlockQ8K {
            d: [0; 4],
            qs: [0; QK_K],
            bsums: [[0; 2]; 16],
        };
        return;
    }
    let iscale = -127.0 / max;
    y.qs = x.map(|v| nearest_int(iscale * v).min(127) as i8);
    for (b, q) in y.bsums.iter_mut().zip(y.qs.as_chunks::<16>().0) {
        *b = (q.iter().map(|&v| v as i16).sum::<i16>()).to_le_bytes();
    }
    y.d = (1.0 / iscale).to_le_bytes();
}
