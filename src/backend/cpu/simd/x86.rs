//! Pieces shared by the x86 kernels: plain-data helpers (no intrinsics, so they inline into
//! any kernel) and the block loops, stamped out per instruction set by a macro.

use marco_quantize::act::BlockQ8x32;
use marco_quantize::blocks::{Block, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, LeF16};

/// The x86 loops over blocks, stamped out once per instruction set (`$features`) with its
/// unsigned × signed byte dot `$idot` (i32 lanes). They cannot be shared as generic functions:
/// code compiled for AVX2 cannot inline AVX-512 code, so every piece of a hot loop must be
/// compiled with the features of its kernel.
macro_rules! x86_block_loops {
    ($features:literal, $idot:ident) => {
        /// The legacy kernels' shared loop: 8 blocks at a time, unpacked once for all `T`
        /// tokens and reduced to one vector of 8 block dots. `OFF` is the quant offset
        /// (Σ (q - OFF)·x = Σ q·x - OFF·Σ x), `MIN` adds `m·xd·Σx`, and `SIGNED` marks signed
        /// quants (`quant` then returns them as they are).
        #[inline]
        #[target_feature(enable = $features)]
        fn legacy<B, const T: usize, const OFF: i32, const MIN: bool, const SIGNED: bool>(
            w: &[B],
            xs: [&[BlockQ8x32]; T],
            quant: impl Fn(&B) -> __m256i,
        ) -> [f32; T]
        where
            B: $crate::backend::cpu::simd::x86::LegacyBlock,
        {
            use $crate::backend::cpu::simd::x86::{d8_padded, legacy_groups, m8_padded, x8_padded};
            let mut acc = zero_acc::<T>();
            // One call site, so the group code inlines into this loop.
            for (wb, xg, skip) in legacy_groups(w, xs) {
                legacy_group::<B, T, OFF, MIN, SIGNED>(&mut acc, wb, xg, &quant, skip);
            }
            let rest = w.as_chunks::<8>().1;
            if rest.is_empty() || w.len() >= 8 {
                return totals(&acc);
            }
            // A row of fewer than 8 blocks: one group padded with zero lanes.
            let mut u = legacy8(d8_padded(rest), m8_padded(rest), MIN);
            for (q, b) in u.q.iter_mut().zip(rest) {
                *q = quant(b);
            }
            for (a, x) in acc.iter_mut().zip(xs) {
                let x = &x[..rest.len()];
                let mut p = [_mm256_setzero_si256(); 8];
                for (i, (p, xb)) in p.iter_mut().zip(x).enumerate() {
                    *p = legacy_dot::<SIGNED>(u.q[i], xb);
                }
                let (xd, sums) = x8_padded(x);
                let (xd, sums) = (load_ps(&xd), load_i32x8(&sums));
                *a = legacy_apply::<OFF, MIN>(*a, &u, reduce8(&p), xd, sums);
            }
            totals(&acc)
        }

        /// 8 blocks unpacked once and applied to each token; the first `skip` blocks'
        /// lanes are dropped (their scales zeroed).
        #[inline]
        #[target_feature(enable = $features)]
        fn legacy_group<B, const T: usize, const OFF: i32, const MIN: bool, const SIGNED: bool>(
            acc: &mut [Acc; T],
            wb: &[B; 8],
            xg: [&[BlockQ8x32; 8]; T],
            quant: &impl Fn(&B) -> __m256i,
            skip: usize,
        ) where
            B: $crate::backend::cpu::simd::x86::LegacyBlock,
        {
            let mut u = legacy_scales(wb, MIN);
            if skip > 0 {
                let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let keep = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(skip as i32 - 1));
                u.d = _mm256_and_ps(u.d, _mm256_castsi256_ps(keep));
                u.m = _mm256_and_ps(u.m, _mm256_castsi256_ps(keep));
            }
            for (q, b) in u.q.iter_mut().zip(wb) {
                *q = quant(b);
            }
            for (a, x) in acc.iter_mut().zip(xg) {
                let mut p = [_mm256_setzero_si256(); 8];
                for (i, p) in p.iter_mut().enumerate() {
                    *p = legacy_dot::<SIGNED>(u.q[i], &x[i]);
                }
                let (xd, sums) = x_group(x);
                *a = legacy_apply::<OFF, MIN>(*a, &u, reduce8(&p), xd, sums);
            }
        }

        /// i32 lanes summing to Σ q·x of one block (q unsigned, or signed if `SIGNED`).
        #[inline]
        #[target_feature(enable = $features)]
        fn legacy_dot<const SIGNED: bool>(q: __m256i, x: &BlockQ8x32) -> __m256i {
            let xq = load_i8(&x.qs);
            if SIGNED {
                // |w| × (x with w's sign); |w| ≤ 128 keeps maddubs' i16 pair sums in range.
                $idot(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xq, q))
            } else {
                $idot(q, xq)
            }
        }

        /// The Q4_K/Q5_K loop: one super-block at a time, unpacked once for all `T` tokens.
        #[inline]
        #[target_feature(enable = $features)]
        fn kquant<B: Block, const T: usize>(
            w: &[B],
            xs: [&[BlockQ8x32]; T],
            unpack: impl Fn(&B) -> Kq8,
        ) -> [f32; T] {
            use $crate::backend::cpu::simd::x86::{at, groups_x};
            let x8 = groups_x(xs);
            let mut acc = zero_acc::<T>();
            for (i, b) in w.iter().enumerate() {
                let u = unpack(b);
                for (a, x) in acc.iter_mut().zip(at(&x8, i)) {
                    let mut p = [_mm256_setzero_si256(); 8];
                    for (g, p) in p.iter_mut().enumerate() {
                        *p = $idot(u.q[g], load_i8(&x[g].qs));
                    }
                    let (xd, sums) = x_group(x);
                    *a = kquant_apply(*a, &u, reduce8(&p), xd, sums);
                }
            }
            totals(&acc)
        }

        /// The Q6_K loop: one super-block at a time, unpacked once for all `T` tokens
        /// (maddubs/madd applies the i8 sub-block scales in the same step as the dot).
        #[inline]
        #[target_feature(enable = $features)]
        fn q6_k<const T: usize>(w: &[BlockQ6K], xs: [&[BlockQ8x32]; T]) -> [f32; T] {
            use $crate::backend::cpu::simd::x86::{at, groups_x};
            let x8 = groups_x(xs);
            let mut acc = zero_acc::<T>();
            for (i, b) in w.iter().enumerate() {
                let u = unpack_q6_k(b);
                for (a, x) in acc.iter_mut().zip(at(&x8, i)) {
                    let mut p = [_mm256_setzero_si256(); 8];
                    for (g, p) in p.iter_mut().enumerate() {
                        *p = q6k_dot(u.q[g], u.sc[g], load_i8(&x[g].qs));
                    }
                    let (xd, _) = x_group(x);
                    a.dot = fma_scaled(a.dot, reduce8(&p), _mm256_mul_ps(u.d, xd));
                }
            }
            totals(&acc)
        }
    };
}

/// Each token's activations cut into groups of 8 blocks (for a super-block, or 8 legacy
/// blocks).
#[inline(always)]
pub(crate) fn groups_x<const T: usize>(xs: [&[BlockQ8x32]; T]) -> [&[[BlockQ8x32; 8]]; T] {
    xs.map(|x| x.as_chunks::<8>().0)
}

/// The groups of 8 blocks of a row of legacy blocks, with each token's activations for them
/// and how many leading blocks of the group to drop. A last, partial group is taken as the
/// row's last 8 blocks with the ones already counted dropped, so every group is a full one;
/// rows of fewer than 8 blocks have no groups.
#[inline(always)]
#[allow(clippy::type_complexity)]
pub(crate) fn legacy_groups<'a, B, const T: usize>(
    w: &'a [B],
    xs: [&'a [BlockQ8x32]; T],
) -> impl Iterator<Item = (&'a [B; 8], [&'a [BlockQ8x32; 8]; T], usize)> {
    let (full, rest) = w.as_chunks::<8>();
    let x8 = groups_x(xs);
    let last = match rest.len() {
        0 => None,
        n => last8(w, xs).map(|(wb, xg)| (wb, xg, 8 - n)),
    };
    full.iter()
        .enumerate()
        .map(move |(i, wb)| (wb, at(&x8, i), 0))
        .chain(last)
}

/// The last 8 weight blocks of a row and each token's matching activations, if the row has
/// 8 blocks.
#[inline(always)]
pub(crate) fn last8<'a, B, const T: usize>(
    w: &'a [B],
    xs: [&'a [BlockQ8x32]; T],
) -> Option<(&'a [B; 8], [&'a [BlockQ8x32; 8]; T])> {
    const EMPTY: [BlockQ8x32; 8] = [BlockQ8x32 {
        d: 0.0,
        sum: 0,
        qs: [0; 32],
    }; 8];
    let start = w.len().checked_sub(8)?;
    let wb = w[start..].first_chunk::<8>()?;
    let mut xg = [&EMPTY; T];
    for (g, x) in xg.iter_mut().zip(xs) {
        *g = x.get(start..)?.first_chunk::<8>()?;
    }
    Some((wb, xg))
}

/// Each token's activations for group (or super-block) `i`.
#[inline(always)]
pub(crate) fn at<'a, const T: usize>(
    x8: &[&'a [[BlockQ8x32; 8]]; T],
    i: usize,
) -> [&'a [BlockQ8x32; 8]; T] {
    x8.map(|x| &x[i])
}

/// A legacy (32-element) block's f16 scale and, where it has one, min.
pub(crate) trait LegacyBlock: Block {
    fn d(&self) -> LeF16;
    fn m(&self) -> LeF16 {
        LeF16::default()
    }
}

macro_rules! legacy_block {
    ($($b:ty: $($m:ident)?;)*) => {$(
        impl LegacyBlock for $b {
            #[inline(always)]
            fn d(&self) -> LeF16 {
                self.d
            }
            $(
            #[inline(always)]
            fn m(&self) -> LeF16 {
                self.$m
            })?
        }
    )*};
}

legacy_block!(BlockQ4_0: ; BlockQ4_1: m; BlockQ5_0: ; BlockQ5_1: m; BlockQ8_0: ;);

/// The scales of 8 legacy blocks.
#[inline(always)]
pub(crate) fn d8<B: LegacyBlock>(w: &[B; 8]) -> [LeF16; 8] {
    std::array::from_fn(|i| w[i].d())
}

/// The mins of 8 legacy blocks.
#[inline(always)]
pub(crate) fn m8<B: LegacyBlock>(w: &[B; 8]) -> [LeF16; 8] {
    std::array::from_fn(|i| w[i].m())
}

/// The scales of up to 8 legacy blocks, zero for missing ones.
#[inline(always)]
pub(crate) fn d8_padded<B: LegacyBlock>(w: &[B]) -> [LeF16; 8] {
    std::array::from_fn(|i| w.get(i).map_or(LeF16::default(), B::d))
}

/// The mins of up to 8 legacy blocks, zero for missing ones.
#[inline(always)]
pub(crate) fn m8_padded<B: LegacyBlock>(w: &[B]) -> [LeF16; 8] {
    std::array::from_fn(|i| w.get(i).map_or(LeF16::default(), B::m))
}

/// Scales and sums of up to 8 activation blocks, zero for missing ones.
#[inline(always)]
pub(crate) fn x8_padded(x: &[BlockQ8x32]) -> ([f32; 8], [i32; 8]) {
    (
        std::array::from_fn(|i| x.get(i).map_or(0.0, |b| b.d)),
        std::array::from_fn(|i| x.get(i).map_or(0, |b| b.sum)),
    )
}

/// Fills `out` four tokens at a time with `quad(first token)` where it has a kernel (else, and
/// for the last `len % 4` tokens, one at a time with `single(token)`).
#[inline(always)]
pub(crate) fn in_quads(
    out: &mut [f32],
    quad: impl Fn(usize) -> Option<[f32; 4]>,
    single: impl Fn(usize) -> f32,
) {
    let full = out.len() / 4 * 4;
    let (quads, rest) = out.split_at_mut(full);
    for (c, o) in quads.as_chunks_mut::<4>().0.iter_mut().enumerate() {
        match quad(4 * c) {
            Some(r) => *o = r,
            None => {
                for (i, v) in o.iter_mut().enumerate() {
                    *v = single(4 * c + i);
                }
            }
        }
    }
    for (i, v) in rest.iter_mut().enumerate() {
        *v = single(full + i);
    }
}
