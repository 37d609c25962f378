//! Four-block chunks: the CPU's decode layout of `Q4_0`, `Q5_0`, `Q8_0` (four blocks of 32)
//! and `Q4_K` (one super-block: two halves of four 32-weight groups), one definition shared by
//! the repacking, the SIMD kernels and their tests. `Q6_K` super-blocks are re-laid in steps
//! of 64 quants ([`StepsQ6K`]) and grouped like the others' rows ([`pack_rows`]).
//!
//! Why a second layout: in the GGUF layout a block's scale, fifth bits and quants sit side by
//! side, so a kernel spends most of its instructions picking scales out of 8 blocks and
//! reducing each block's sums horizontally. A chunk keeps 4 consecutive blocks (128 weights)
//! of a row so that one 512-bit register holds 16 weights of each block, one block per
//! 128-bit lane: the "low half" register has elements 0..16 of the 4 blocks, the "high half"
//! elements 16..32. Two byte dot products then leave each block's sum in its own lane, and one
//! per-lane scale finishes all four. A chunk has exactly the bytes of its 4 blocks, so
//! repacked rows take the bytes of the original ones; they are stored in groups of up to four
//! rows whose chunks alternate ([`pack_rows`], [`group_rows`]), so a row is not one contiguous
//! span any more, but a group is.
//!
//! Activations for chunked rows come in the same order ([`ActChunks`]).
//!
//! `Q5_0` rows in whole groups of four go one step further: the group's chunk `j` of each row
//! make one [`QuadQ5_0`], whose i32 lanes are (row, block) pairs rather than parts of one
//! row's blocks, so that the scale work is done once for four rows.

use crate::act::BlockQ8x32;
use crate::blocks::{
    as_blocks, as_blocks_mut, Block, BlockQ4K, BlockQ4_0, BlockQ5_0, BlockQ6K, BlockQ8K, BlockQ8_0,
    LeF16,
};
use crate::types::{GgmlType, QK32};

/// Blocks per chunk.
pub const CHUNK_BLOCKS: usize = 4;
/// Weights per chunk.
pub const CHUNK_LEN: usize = CHUNK_BLOCKS * QK32;

/// Four `Q4_0` blocks. Byte `p` of `qs` holds element `p % 16` of block `p / 16` in its low
/// nibble and element `16 + p % 16` in its high nibble: the 4 blocks' `qs`, concatenated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkQ4_0 {
    pub d: [LeF16; 4],
    pub qs: [u8; 64],
}

/// Four `Q5_0` blocks: `qs` as in [`ChunkQ4_0`]; the fifth bits in two little-endian words,
/// the one of the low-half weight `p` (block `p / 16`, element `p % 16`) where
/// [`q5_bit`]`(0, p)` says, of the high-half weight `p` (element `16 + p % 16`) where
/// `q5_bit(1, p)` says. Only groups shorter than four rows are packed so: whole groups of four
/// are [`QuadQ5_0`]s.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkQ5_0 {
    pub d: [LeF16; 4],
    pub qh: [[u8; 8]; 2],
    pub qs: [u8; 64],
}

/// Rows in a [`QuadQ5_0`]: a whole group of [`pack_rows`], the largest there is (so a run of
/// this many rows is always a whole group).
pub const QUAD_ROWS: usize = 4;
const _: () = assert!(QUAD_ROWS == ROW_GROUP);

/// Chunk `j` of four `Q5_0` rows, which is how a whole group of four `Q5_0` rows is packed
/// ([`pack_rows`]; shorter groups, the last rows of a matrix or long rows that go in twos or
/// alone, keep [`ChunkQ5_0`]s). The 512 weights go in 8 steps
/// of 64: step `s` holds elements `4s..4s+4` of the 16 (row, block) pairs, byte `16r + 4b + e`
/// being element `4s + e` of row `r`'s block `b`. Its low four bits are in the low nibbles of
/// `qs[s / 2]` for even `s` and in the high nibbles for odd `s`; its fifth bit is bit
/// `16r + 4b + e` of the little-endian word `qh[s]`. `d[4r + b]` is row `r`'s block `b` scale.
///
/// Why: a byte dot product of step `s` against activations that hold block `b`'s elements
/// `4s..4s+4` in i32 lane `b` of every 128-bit lane ([`ActChunks::steps`]) adds each pair's
/// four products into its own lane `4r + b`. After the 8 steps each lane holds one block's
/// whole integer dot, so one conversion, one multiply by the 16 scales and one FMA finish four
/// rows at once, where [`ChunkQ5_0`] needs them, a lane permute and a scale conversion per
/// row; and a step's fifth bits are one 64-bit mask, for one masked byte add. The kernel
/// (`chunks512::q5_0_quads` in the CPU backend) says what that saves.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuadQ5_0 {
    pub d: [LeF16; 16],
    pub qh: [[u8; 8]; 8],
    pub qs: [[u8; 64]; 4],
}

// SAFETY: repr(C) struct of u8 arrays and LeF16 only; the size is checked below.
// Unlike the other chunks', its source blocks come from four rows (row `r`'s block `b` is
// source block `4r + b`), so only `pack_rows`' own quad path gathers them, never
// `convert_rows`.
unsafe impl Chunk for QuadQ5_0 {
    type Src = BlockQ5_0;
    const SRC_BLOCKS: usize = 16;
    const OFFSET: i32 = 16;
    fn pack(src: &[BlockQ5_0]) -> Self {
        let mut quad = QuadQ5_0 {
            d: std::array::from_fn(|i| src[i].d),
            qh: [[0; 8]; 8],
            qs: [[0; 64]; 4],
        };
        let mut qh = [0u64; 8];
        // Four weights at a time: pair `i`'s elements 4s..4s+4 are the low (s < 4) or high
        // nibbles of its block's bytes 4(s % 4)..+4, and bits 4s..4s+4 of its fifth bits; in
        // the quad, bytes 4i..4i+4 of step s and bits 4i..4i+4 of its mask.
        for (i, blk) in src.iter().enumerate().take(16) {
            let fifth = u32::from_le_bytes(blk.qh);
            for (k, qs) in quad.qs.iter_mut().enumerate() {
                let nibbles = |s: usize| {
                    let at = 4 * (s % 4);
                    let word = u32::from_le_bytes(std::array::from_fn(|e| blk.qs[at + e]));
                    (word >> (4 * (s / 4))) & 0x0F0F_0F0F
                };
                let byte4 = nibbles(2 * k) | nibbles(2 * k + 1) << 4;
                qs[4 * i..4 * i + 4].copy_from_slice(&byte4.to_le_bytes());
            }
            for (s, mask) in qh.iter_mut().enumerate() {
                *mask |= (((fifth >> (4 * s)) & 0xF) as u64) << (4 * i);
            }
        }
        quad.qh = qh.map(u64::to_le_bytes);
        quad
    }
    fn unpack(&self, out: &mut [BlockQ5_0]) {
        let qh = self.qh.map(u64::from_le_bytes);
        for (i, o) in out.iter_mut().enumerate().take(16) {
            let step = |s: usize| {
                let word = &self.qs[s / 2][4 * i..4 * i + 4];
                let word = u32::from_le_bytes(std::array::from_fn(|e| word[e]));
                (word >> (4 * (s % 2))) & 0x0F0F_0F0F
            };
            let mut qs = [0u8; 16];
            for (c, four) in qs.as_chunks_mut::<4>().0.iter_mut().enumerate() {
                *four = (step(c) | step(c + 4) << 4).to_le_bytes();
            }
            let fifth = (0..8).fold(0u32, |f, s| {
                f | (((qh[s] >> (4 * i)) & 0xF) as u32) << (4 * s)
            });
            *o = BlockQ5_0 {
                d: self.d[i],
                qh: fifth.to_le_bytes(),
                qs,
            };
        }
    }
}

/// Four `Q8_0` blocks: `qs[h][p]` is element `16·h + p % 16` of block `p / 16`, plus 128 (as
/// unsigned bytes, which the byte dot products take).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkQ8_0 {
    pub d: [LeF16; 4],
    pub qs: [[u8; 64]; 2],
}

/// One `Q4_K` super-block: scales as stored; `qs[h]` holds groups `4h..4h+4` as
/// [`ChunkQ4_0::qs`] holds its blocks (byte `p`: group `4h + p / 16`, element `p % 16` in
/// the low nibble and `16 + p % 16` in the high one), so each half is one chunk of 128
/// weights.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkQ4K {
    pub d: LeF16,
    pub dmin: LeF16,
    pub scales: [u8; 12],
    pub qs: [[u8; 64]; 2],
}

/// A chunk type: plain old data like [`Block`], with its source block type.
///
/// # Safety
/// As for [`Block`]: `#[repr(C)]`, no padding, alignment 1, valid for every bit pattern.
pub unsafe trait Chunk: Copy + 'static {
    /// The block type `SRC_BLOCKS` of which make a chunk.
    type Src: Block;
    const SRC_BLOCKS: usize;
    /// The quant offset `o` of `w = d·(q - o)` with `q` as stored in the chunk (unsigned),
    /// a power of two (1 for the K-quants, whose mins are a separate term).
    const OFFSET: i32;
    /// Packs `SRC_BLOCKS` blocks.
    fn pack(blocks: &[Self::Src]) -> Self;
    /// Unpacks into `SRC_BLOCKS` blocks.
    fn unpack(&self, out: &mut [Self::Src]);
}

macro_rules! chunk_pod {
    ($($c:ty => $n:literal $b:ty),*) => {$(
        const _: () = assert!(size_of::<$c>() == $n * size_of::<$b>());
        const _: () = assert!(align_of::<$c>() == 1);
    )*};
}
chunk_pod!(
    ChunkQ4_0 => 4 BlockQ4_0,
    ChunkQ5_0 => 4 BlockQ5_0,
    QuadQ5_0 => 16 BlockQ5_0,
    ChunkQ8_0 => 4 BlockQ8_0,
    ChunkQ4K => 1 BlockQ4K,
    StepsQ6K => 1 BlockQ6K
);

// SAFETY: repr(C) structs of u8 arrays and LeF16 only; the sizes are checked above.
unsafe impl Chunk for ChunkQ4_0 {
    type Src = BlockQ4_0;
    const SRC_BLOCKS: usize = 4;
    const OFFSET: i32 = 8;
    fn pack(b: &[BlockQ4_0]) -> Self {
        ChunkQ4_0 {
            d: std::array::from_fn(|i| b[i].d),
            qs: std::array::from_fn(|p| b[p / 16].qs[p % 16]),
        }
    }
    fn unpack(&self, out: &mut [BlockQ4_0]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = BlockQ4_0 {
                d: self.d[i],
                qs: std::array::from_fn(|j| self.qs[16 * i + j]),
            };
        }
    }
}

/// Where the fifth bit of half `h`'s weight `p` (0..64) sits: word `(p / 8) % 2` of
/// [`ChunkQ5_0::qh`], bit `8·(p % 8) + 4 + 4h + p / 16` mod 64. Why this order: a kernel
/// broadcasts the 16 bytes to every 128-bit lane (so 64-bit lane `k` holds word `k % 2`) and
/// rotates lane `k` right by `4h + k / 2`; then bit 4 of every byte `p` is the fifth bit of
/// weight `p`, ready to be OR-ed onto its nibble in one bitwise op, with one load for both
/// halves. (With the bits in weight order a per-row kernel goes through mask registers, which
/// streamed a third slower on AMD Zen 4 for these chunks; [`QuadQ5_0`], which shares its
/// scale work among four rows, takes its fifth bits that way.)
pub const fn q5_bit(h: usize, p: usize) -> (usize, u32) {
    (
        (p / 8) % 2,
        ((8 * (p % 8) + 4 + 4 * h + p / 16) % 64) as u32,
    )
}

// SAFETY: as above.
unsafe impl Chunk for ChunkQ5_0 {
    type Src = BlockQ5_0;
    const SRC_BLOCKS: usize = 4;
    const OFFSET: i32 = 16;
    fn pack(b: &[BlockQ5_0]) -> Self {
        let mut qh = [0u64; 2];
        for (i, blk) in b.iter().enumerate() {
            let bits = u32::from_le_bytes(blk.qh) as u64;
            for e in 0..16 {
                for h in 0..2 {
                    let (word, bit) = q5_bit(h, 16 * i + e);
                    qh[word] |= ((bits >> (16 * h + e)) & 1) << bit;
                }
            }
        }
        ChunkQ5_0 {
            d: std::array::from_fn(|i| b[i].d),
            qh: qh.map(u64::to_le_bytes),
            qs: std::array::from_fn(|p| b[p / 16].qs[p % 16]),
        }
    }
    fn unpack(&self, out: &mut [BlockQ5_0]) {
        let qh = self.qh.map(u64::from_le_bytes);
        for (i, o) in out.iter_mut().enumerate() {
            let mut bits = 0u32;
            for e in 0..16 {
                for h in 0..2 {
                    let (word, bit) = q5_bit(h, 16 * i + e);
                    bits |= (((qh[word] >> bit) & 1) as u32) << (16 * h + e);
                }
            }
            *o = BlockQ5_0 {
                d: self.d[i],
                qh: bits.to_le_bytes(),
                qs: std::array::from_fn(|j| self.qs[16 * i + j]),
            };
        }
    }
}

// SAFETY: as above.
unsafe impl Chunk for ChunkQ8_0 {
    type Src = BlockQ8_0;
    const SRC_BLOCKS: usize = 4;
    const OFFSET: i32 = 128;
    fn pack(b: &[BlockQ8_0]) -> Self {
        ChunkQ8_0 {
            d: std::array::from_fn(|i| b[i].d),
            qs: std::array::from_fn(|h| {
                std::array::from_fn(|p| (b[p / 16].qs[16 * h + p % 16] as u8) ^ 0x80)
            }),
        }
    }
    fn unpack(&self, out: &mut [BlockQ8_0]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = BlockQ8_0 {
                d: self.d[i],
                qs: std::array::from_fn(|j| (self.qs[j / 16][16 * i + j % 16] ^ 0x80) as i8),
            };
        }
    }
}

// SAFETY: as above.
unsafe impl Chunk for ChunkQ4K {
    type Src = BlockQ4K;
    const SRC_BLOCKS: usize = 1;
    const OFFSET: i32 = 1;
    fn pack(b: &[BlockQ4K]) -> Self {
        let b = &b[0];
        // GGUF: 32-byte run c holds groups 2c (low nibbles) and 2c+1 (high), element e at
        // byte e. Chunk: group g's 16 bytes at [g / 4][16·(g % 4)..], elements e and e + 16
        // in the low and high nibble of byte e.
        let mut qs = [[0u8; 64]; 2];
        for (c, run) in b.qs.as_chunks::<32>().0.iter().enumerate() {
            let (h, lane) = (c / 2, 32 * (c % 2));
            let (first, second) = run.split_at(16);
            for (e, (&lo, &hi)) in first.iter().zip(second).enumerate() {
                qs[h][lane + e] = (lo & 0x0F) | (hi & 0x0F) << 4;
                qs[h][lane + 16 + e] = (lo >> 4) | (hi & 0xF0);
            }
        }
        ChunkQ4K {
            d: b.d,
            dmin: b.dmin,
            scales: b.scales,
            qs,
        }
    }
    fn unpack(&self, out: &mut [BlockQ4K]) {
        let mut qs = [0u8; 128];
        for (c, run) in qs.as_chunks_mut::<32>().0.iter_mut().enumerate() {
            let (h, lane) = (c / 2, 32 * (c % 2));
            let (g0, g1) = (
                &self.qs[h][lane..lane + 16],
                &self.qs[h][lane + 16..lane + 32],
            );
            let (first, second) = run.split_at_mut(16);
            for (e, (&a, &b)) in g0.iter().zip(g1).enumerate() {
                first[e] = (a & 0x0F) | (b & 0x0F) << 4;
                second[e] = (a >> 4) | (b & 0xF0);
            }
        }
        out[0] = BlockQ4K {
            d: self.d,
            dmin: self.dmin,
            scales: self.scales,
            qs,
        };
    }
}

/// One `Q6_K` super-block (the same 210 bytes) with its 256 quants in four steps of 64, step
/// `s` byte `p` being element `16·(p / 4) + 4s + p % 4`: i32 lane `l` of a byte dot product
/// then sums elements of sub-block `l` only, and after the four steps holds the sub-block's
/// whole integer dot. Steps 0-2 are the low six bits of `q[s]`; step 3's six bits are the top
/// two bits of `q[0]`, `q[1]` and `q[2]` (its bits 4-5, 2-3 and 0-1). `scales` and `d` are the
/// super-block's.
///
/// Why: as GGUF lays them, a sub-block's quants are 16 consecutive bytes, so a kernel widens
/// byte products to 16-bit pairs and spreads the sixteen scales over the lanes (a permute per
/// 64 weights) before it can add: about 35 vector instructions a super-block, which held these
/// rows to a little above the memory's speed from L2 (33 GB/s, one thread, AMD Zen 4). In
/// steps each 64 weights are one mask (or, for step 3, three shifts and two bit selects and a
/// mask) and one `vpdpbusd`, and the scales one multiply for the whole super-block: about 20.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepsQ6K {
    pub q: [[u8; 64]; 3],
    pub scales: [i8; 16],
    pub d: LeF16,
}

/// Steps in a [`StepsQ6K`] (and a [`Q8KSteps`]).
pub const Q6K_STEPS: usize = 4;

/// The 256 6-bit quants (0..64) of a GGUF `Q6_K` super-block in element order: the low four
/// bits in `ql`, the high two in `qh`, in ggml's order (element `128h + 32c + l` takes its low
/// bits from the low (`c` 0, 1) or high (`c` 2, 3) nibble of `ql[64h + 32·(c % 2) + l]` and
/// its high bits from bits `2c..2c + 2` of `qh[32h + l]`). Loops over whole runs, which the
/// compiler vectorizes: the prompt path unpacks these rows for every batch.
fn q6k_decode(b: &BlockQ6K) -> [u8; 256] {
    let mut q = [0u8; 256];
    for h in 0..2 {
        let (ql, qh) = (&b.ql[64 * h..64 * h + 64], &b.qh[32 * h..32 * h + 32]);
        for c in 0..4 {
            let out = &mut q[128 * h + 32 * c..128 * h + 32 * c + 32];
            let low = &ql[32 * (c % 2)..32 * (c % 2) + 32];
            for ((o, &l), &hi) in out.iter_mut().zip(low).zip(qh) {
                let nibble = if c < 2 { l & 0xF } else { l >> 4 };
                *o = nibble | ((hi >> (2 * c)) & 3) << 4;
            }
        }
    }
    q
}

/// The inverse of [`q6k_decode`]: `q` (256 quants, element order) into `b`'s `ql` and `qh`.
fn q6k_encode(q: &[u8; 256], b: &mut BlockQ6K) {
    for h in 0..2 {
        let q = &q[128 * h..128 * h + 128];
        for half in 0..2 {
            let ql = &mut b.ql[64 * h + 32 * half..64 * h + 32 * half + 32];
            for (l, o) in ql.iter_mut().enumerate() {
                *o = (q[32 * half + l] & 0xF) | (q[64 + 32 * half + l] & 0xF) << 4;
            }
        }
        for (l, o) in b.qh[32 * h..32 * h + 32].iter_mut().enumerate() {
            *o = (0..4).fold(0, |acc, c| acc | (q[32 * c + l] >> 4 & 3) << (2 * c));
        }
    }
}

/// Element of step `s`, byte `p` (see [`StepsQ6K`]).
pub const fn q6k_step_element(s: usize, p: usize) -> usize {
    16 * (p / 4) + 4 * s + p % 4
}

// SAFETY: a repr(C) struct of u8/i8 arrays and LeF16 only, the size of one source block
// (checked below).
unsafe impl Chunk for StepsQ6K {
    type Src = BlockQ6K;
    const SRC_BLOCKS: usize = 1;
    const OFFSET: i32 = 32;
    fn pack(b: &[BlockQ6K]) -> Self {
        let b = &b[0];
        let q = q6k_decode(b);
        // Four bytes at a time: lane l of step s is elements 16l + 4s.. (q6k_step_element).
        let word = |l: usize, s: usize| {
            let at = 16 * l + 4 * s;
            u32::from_le_bytes([q[at], q[at + 1], q[at + 2], q[at + 3]])
        };
        let mut steps = [[0u8; 64]; 3];
        for l in 0..16 {
            let last = word(l, 3);
            for (k, step) in steps.iter_mut().enumerate() {
                let top = (last >> (4 - 2 * k)) & 0x0303_0303;
                step[4 * l..4 * l + 4].copy_from_slice(&(word(l, k) | top << 6).to_le_bytes());
            }
        }
        StepsQ6K {
            q: steps,
            scales: b.scales,
            d: b.d,
        }
    }
    fn unpack(&self, out: &mut [BlockQ6K]) {
        let b = &mut out[0];
        b.scales = self.scales;
        b.d = self.d;
        let word = |k: usize, l: usize| {
            let w = &self.q[k][4 * l..4 * l + 4];
            u32::from_le_bytes([w[0], w[1], w[2], w[3]])
        };
        let mut q = [0u8; 256];
        for l in 0..16 {
            let w = [word(0, l), word(1, l), word(2, l)];
            let last = (0..3).fold(0, |acc, k| acc | (w[k] >> 6 & 0x0303_0303) << (4 - 2 * k));
            for (s, v) in [w[0], w[1], w[2], last].into_iter().enumerate() {
                let at = 16 * l + 4 * s;
                q[at..at + 4].copy_from_slice(&(v & 0x3F3F_3F3F).to_le_bytes());
            }
        }
        q6k_encode(&q, b);
    }
}

/// View `bytes` as chunks, or `None` if the length is not a whole number of them.
pub fn as_chunks<C: Chunk>(bytes: &[u8]) -> Option<&[C]> {
    let size = size_of::<C>();
    if !bytes.len().is_multiple_of(size) {
        return None;
    }
    // SAFETY: alignment 1, the length covers whole chunks of initialized bytes, and `Chunk`
    // guarantees every bit pattern is valid; the lifetime is `bytes`'.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<C>(), bytes.len() / size) })
}

fn as_chunks_mut<C: Chunk>(bytes: &mut [u8]) -> Option<&mut [C]> {
    let size = size_of::<C>();
    if !bytes.len().is_multiple_of(size) {
        return None;
    }
    // SAFETY: as in `as_chunks`, with the borrow exclusive; any chunk written is valid bytes.
    Some(unsafe {
        std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<C>(), bytes.len() / size)
    })
}

/// Four rows' run of a whole group of `Q5_0` rows (as [`pack_rows`] lays it) as its quads;
/// `None` unless the run is a whole number of them.
pub fn as_quads(run: &[ChunkQ5_0]) -> Option<&[QuadQ5_0]> {
    if !run.len().is_multiple_of(QUAD_ROWS) {
        return None;
    }
    // SAFETY: both types are plain bytes of alignment 1 and a quad is four chunks long, so
    // the same bytes are whole quads, for the lifetime of `run`.
    Some(unsafe { std::slice::from_raw_parts(run.as_ptr().cast(), run.len() / QUAD_ROWS) })
}

/// Whether rows of `cols` weights of type `ty` have a chunked layout.
pub fn supports(ty: GgmlType, cols: usize) -> bool {
    cols > 0
        && cols.is_multiple_of(ty.block_size().max(CHUNK_LEN))
        && matches!(
            ty,
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K
        )
}

/// The most rows in a group of [`pack_rows`] ([`group_rows`]); every group size divides it,
/// so runs of rows that start at a multiple of it start at a group whatever the rows' length.
pub const ROW_GROUP: usize = 4;

/// The most weight bytes in one pass over a group's rows (see [`group_rows`]).
pub const GROUP_BYTES: usize = 7 << 10;

/// Rows per group of [`pack_rows`] for rows of `row_bytes` bytes: a group's chunks alternate,
/// so a kernel decodes its rows together from one sequential stream and loads each chunk of
/// activations once for all of them. Four rows, or fewer where four would pass more than
/// [`GROUP_BYTES`] of weights through L1 between two uses of the same activations.
///
/// Why four: per weight byte, every load counts when streaming from memory (even one that
/// hits L1, it holds a slot of the core's load queue that a miss could use), and the
/// activation loads shrink with the group. Measured here with a `Q5_0`-shaped kernel on rows
/// in 2 MiB pages: 22-24 GB/s in pairs, 25-27 in fours (a plain read loop: 27), 18-27 in
/// eights (the eight accumulators and their operands no longer fit in the registers); in the
/// default model, one-thread decoding read its `Q5_0` gate and up rows at 24 GB/s in fours
/// against 19-20 in pairs.
///
/// Why fewer for long rows: the streamed weights go through L1 (32 KiB here) too, and push the
/// activations (about 8 KB for rows of 4864 weights) out of it when a group's pass is long.
/// Measured with the AVX-512 kernels, one thread, default model, as a share of the speed of
/// its `Q8_0` output rows in the same run: its `Q4_K` rows of 4864 weights (2.7 KB) read at
/// 79-85% in pairs against 74-80% in fours and 74-78% alone; its `Q6_K` rows of 4864 (4 KB)
/// at 88-96% alone against 83-88% in pairs. In the 1.5B model, `Q4_K` rows of 8960 (5 KB)
/// read at 15-16 GB/s alone against 14-15 in pairs. Token speed, twelve alternating pairs:
/// +3% on one thread (12 KiB before).
pub fn group_rows(row_bytes: usize) -> usize {
    let mut rows = ROW_GROUP;
    while rows > 1 && rows * row_bytes > GROUP_BYTES {
        rows /= 2;
    }
    rows
}

/// The first row of the group that holds row `r`, for rows of `row_bytes` bytes.
pub fn group_start(row_bytes: usize, r: usize) -> usize {
    r - r % group_rows(row_bytes)
}

/// Packs whole rows of `row_bytes` bytes in the GGUF layout (`src`, starting at a group
/// boundary) into chunks (`dst`, as long): rows go in groups of [`group_rows`], each one run
/// whose chunks alternate (chunk `j` of each of the group's rows in turn, then chunk `j + 1`;
/// for a whole group of four `Q5_0` rows, their chunks `j` merged into one [`QuadQ5_0`]),
/// so a kernel decoding the group's rows at once reads one sequential stream; the last rows
/// (fewer than a group) make one shorter group. Why groups and not separate rows: two
/// streams a row apart read from memory at half the speed of one here (the prefetchers see
/// each row's run restart), while one interleaved stream keeps the speed of a plain read
/// loop. `false` if the lengths do not fit the type.
pub fn pack_rows(ty: GgmlType, row_bytes: usize, src: &[u8], dst: &mut [u8]) -> bool {
    match ty {
        GgmlType::Q4_0 => convert_rows::<ChunkQ4_0>(row_bytes, src, dst, true),
        GgmlType::Q5_0 => convert_q5_0_rows(row_bytes, src, dst, true),
        GgmlType::Q8_0 => convert_rows::<ChunkQ8_0>(row_bytes, src, dst, true),
        GgmlType::Q4_K => convert_rows::<ChunkQ4K>(row_bytes, src, dst, true),
        GgmlType::Q6_K => convert_rows::<StepsQ6K>(row_bytes, src, dst, true),
        _ => false,
    }
}

/// The inverse of [`pack_rows`]: packed rows (from a group boundary) back in the GGUF layout.
pub fn unpack_rows(ty: GgmlType, row_bytes: usize, src: &[u8], dst: &mut [u8]) -> bool {
    match ty {
        GgmlType::Q4_0 => convert_rows::<ChunkQ4_0>(row_bytes, src, dst, false),
        GgmlType::Q5_0 => convert_q5_0_rows(row_bytes, src, dst, false),
        GgmlType::Q8_0 => convert_rows::<ChunkQ8_0>(row_bytes, src, dst, false),
        GgmlType::Q4_K => convert_rows::<ChunkQ4K>(row_bytes, src, dst, false),
        GgmlType::Q6_K => convert_rows::<StepsQ6K>(row_bytes, src, dst, false),
        _ => false,
    }
}

fn convert_rows<C: Chunk>(row_bytes: usize, src: &[u8], dst: &mut [u8], to_chunks: bool) -> bool {
    convert_groups(row_bytes, size_of::<C>(), src, dst, |s, d, rows| {
        if to_chunks {
            pack_group::<C>(s, d, rows)
        } else {
            unpack_group::<C>(s, d, rows)
        }
    })
}

/// Checks the lengths (whole rows of whole chunks of `chunk_bytes`) and hands each group of
/// [`group_rows`] rows, or the shorter last one, to `convert(src, dst, rows)`.
fn convert_groups(
    row_bytes: usize,
    chunk_bytes: usize,
    src: &[u8],
    dst: &mut [u8],
    mut convert: impl FnMut(&[u8], &mut [u8], usize) -> bool,
) -> bool {
    if src.len() != dst.len()
        || row_bytes == 0
        || !row_bytes.is_multiple_of(chunk_bytes)
        || !src.len().is_multiple_of(row_bytes)
    {
        return false;
    }
    let group = group_rows(row_bytes) * row_bytes;
    src.chunks(group)
        .zip(dst.chunks_mut(group))
        .all(|(s, d)| convert(s, d, s.len() / row_bytes))
}

/// Whether a group of `rows` rows of type `ty`, `row_bytes` each, is packed as [`QuadQ5_0`]s:
/// whole groups of four `Q5_0` rows (a group has four rows only where [`group_rows`] says
/// four).
pub fn is_quad_group(ty: GgmlType, row_bytes: usize, rows: usize) -> bool {
    ty == GgmlType::Q5_0 && rows == QUAD_ROWS && group_rows(row_bytes) == QUAD_ROWS
}

/// [`convert_rows`] for `Q5_0`: whole groups of four rows as [`QuadQ5_0`]s, a shorter
/// group (the last, or any where long rows make the groups smaller) as [`ChunkQ5_0`]s.
fn convert_q5_0_rows(row_bytes: usize, src: &[u8], dst: &mut [u8], to_chunks: bool) -> bool {
    convert_groups(
        row_bytes,
        size_of::<ChunkQ5_0>(),
        src,
        dst,
        |s, d, rows| match (is_quad_group(GgmlType::Q5_0, row_bytes, rows), to_chunks) {
            (true, true) => pack_quads(s, d),
            (true, false) => unpack_quads(s, d),
            (false, true) => pack_group::<ChunkQ5_0>(s, d, rows),
            (false, false) => unpack_group::<ChunkQ5_0>(s, d, rows),
        },
    )
}

/// Source block `4r + b` of quad `j`: row `r`'s block `4j + b`, in rows of `per_row` quads.
fn quad_source(j: usize, i: usize, per_row: usize) -> usize {
    (i / CHUNK_BLOCKS) * per_row * CHUNK_BLOCKS + CHUNK_BLOCKS * j + i % CHUNK_BLOCKS
}

/// Four GGUF `Q5_0` rows into their quads.
fn pack_quads(src: &[u8], dst: &mut [u8]) -> bool {
    let (Some(b), Some(q)) = (as_blocks::<BlockQ5_0>(src), as_chunks_mut::<QuadQ5_0>(dst)) else {
        return false;
    };
    let per_row = q.len();
    for (j, quad) in q.iter_mut().enumerate() {
        let blocks: [BlockQ5_0; 16] = std::array::from_fn(|i| b[quad_source(j, i, per_row)]);
        *quad = QuadQ5_0::pack(&blocks);
    }
    true
}

/// Quads back into four GGUF `Q5_0` rows.
fn unpack_quads(src: &[u8], dst: &mut [u8]) -> bool {
    let (Some(q), Some(b)) = (as_chunks::<QuadQ5_0>(src), as_blocks_mut::<BlockQ5_0>(dst)) else {
        return false;
    };
    let per_row = q.len();
    let mut blocks = [BlockQ5_0 {
        d: LeF16([0; 2]),
        qh: [0; 4],
        qs: [0; 16],
    }; 16];
    for (j, quad) in q.iter().enumerate() {
        quad.unpack(&mut blocks);
        for (i, blk) in blocks.iter().enumerate() {
            b[quad_source(j, i, per_row)] = *blk;
        }
    }
    true
}

/// Where group chunk `i` comes from in a group of `rows` rows of `per_row` chunks: the
/// index of its first source block (row `i % rows`, chunk `i / rows` of that row).
fn source_block<C: Chunk>(i: usize, rows: usize, per_row: usize) -> usize {
    ((i % rows) * per_row + i / rows) * C::SRC_BLOCKS
}

/// `rows` GGUF rows into one run of alternating chunks.
fn pack_group<C: Chunk>(src: &[u8], dst: &mut [u8], rows: usize) -> bool {
    let (Some(b), Some(c)) = (as_blocks::<C::Src>(src), as_chunks_mut::<C>(dst)) else {
        return false;
    };
    let per_row = c.len() / rows;
    for (i, c) in c.iter_mut().enumerate() {
        let first = source_block::<C>(i, rows, per_row);
        *c = C::pack(&b[first..first + C::SRC_BLOCKS]);
    }
    true
}

/// One run of alternating chunks back into `rows` GGUF rows.
fn unpack_group<C: Chunk>(src: &[u8], dst: &mut [u8], rows: usize) -> bool {
    let (Some(c), Some(b)) = (as_chunks::<C>(src), as_blocks_mut::<C::Src>(dst)) else {
        return false;
    };
    let per_row = c.len() / rows;
    for (i, c) in c.iter().enumerate() {
        let first = source_block::<C>(i, rows, per_row);
        c.unpack(&mut b[first..first + C::SRC_BLOCKS]);
    }
    true
}

/// A value on cache lines of its own. Why: the kernels load activations 64 bytes at a time,
/// and a load that straddles two lines takes two of L1's accesses; arrays of bytes come from
/// the allocator 16-byte aligned, which put every such load across two lines (with the quads'
/// steps at a 16-byte offset, the default model's gate and up rows read 6-13% slower on one
/// thread).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aligned<T>(pub T);

const _: () = assert!(align_of::<Aligned<[[i8; 64]; 2]>>() == 64);
const _: () = assert!(
    size_of::<Aligned<[[i8; 64]; 8]>>() == 512,
    "no padding between steps"
);

impl<T> std::ops::Deref for Aligned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// Sixteen i32 lanes on a cache line of their own, so the kernels load them in one piece.
pub type Lanes16 = Aligned<[i32; 16]>;

/// One token's activation blocks in chunk order: per chunk the low halves of its 4 blocks
/// (elements 0..16 of each, 64 bytes), then the high halves; per block the scale `d`; per chunk
/// 16 i32 lanes, lane `l` holding `-Σq` over bytes `4l..4l+4` of both halves (the ones a byte
/// dot product sums into i32 lane `l`): shifted by the log2 of the weights' offset, the start
/// that cancels the offset exactly, lane by lane (so no lane holds more than its true partial
/// dot, and the float sum of the lanes loses no more than the reference's); and per block
/// `d·Σq`, for the K-quants' min terms.
///
/// Also the same token as `Q8_K` blocks ([`fill_q8k`](Self::fill_q8k)), which the K-quant
/// one-token kernels take, and those blocks in steps for [`StepsQ6K`] rows
/// ([`q8k_steps`](Self::q8k_steps)).
#[derive(Default, Clone)]
pub struct ActChunks {
    pub q: Vec<Aligned<[[i8; 64]; 2]>>,
    pub d: Vec<f32>,
    pub neg_sums: Vec<Lanes16>,
    pub dsum: Vec<f32>,
    /// Per chunk, for [`QuadQ5_0`] rows ([`fill_steps`](Self::fill_steps)): step `s`'s
    /// activations, i32 lane `4r + b` holding block `b`'s elements `4s..4s+4` (the same 16
    /// bytes in each 128-bit lane `r`: a plain load, where a broadcast one costs a shuffle).
    steps: Vec<Aligned<[[i8; 64]; 8]>>,
    /// Per chunk, with `steps`: lane `4r + b` holds `-Σq` over block `b`.
    block_sums: Vec<Lanes16>,
    /// Whether `steps` and `block_sums` were derived from the chunks held now.
    steps_ready: bool,
    q8k: Vec<u8>,
    q8k_steps: Vec<Q8KSteps>,
}

/// One `Q8_K` block in the steps of [`StepsQ6K`]: step `s` byte `p` is quant
/// [`q6k_step_element`]`(s, p)`; lane `l` of `start` is `-32` times the sum of sub-block `l`'s
/// quants (the block's `bsums[l]`), the start that takes the weights' offset of 32 out of
/// lane `l`'s dot exactly; `d` the block's scale.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct Q8KSteps {
    pub q: [[i8; 64]; Q6K_STEPS],
    pub start: Lanes16,
    pub d: f32,
}

impl Q8KSteps {
    const ZERO: Q8KSteps = Q8KSteps {
        q: [[0; 64]; Q6K_STEPS],
        start: Aligned([0; 16]),
        d: 0.0,
    };

    fn fill(&mut self, b: &BlockQ8K) {
        for (s, step) in self.q.iter_mut().enumerate() {
            // Whole words: lane l's four bytes are elements 16l + 4s.. of the block.
            for (l, four) in step.as_chunks_mut::<4>().0.iter_mut().enumerate() {
                let at = 16 * l + 4 * s;
                four.copy_from_slice(&b.qs[at..at + 4]);
            }
        }
        for (lane, sum) in self.start.0.iter_mut().zip(&b.bsums) {
            *lane = -32 * i16::from_le_bytes(*sum) as i32;
        }
        self.d = b.d();
    }
}

impl ActChunks {
    /// Re-lays `x` (whole chunks of blocks; a last partial chunk is dropped), reusing the
    /// buffers.
    pub fn fill(&mut self, x: &[BlockQ8x32]) {
        let chunks = x.as_chunks::<CHUNK_BLOCKS>().0;
        // In place, 16 bytes at a time: built as arrays and pushed, the chunks cost a copy
        // each (1.6% of a one-thread token of the default model).
        self.resize(chunks.len());
        for ((c, q), lanes) in chunks.iter().zip(&mut self.q).zip(&mut self.neg_sums) {
            for (b, block) in c.iter().enumerate() {
                let (lo, hi) = block.qs.split_at(16);
                q[0][16 * b..16 * b + 16].copy_from_slice(lo);
                q[1][16 * b..16 * b + 16].copy_from_slice(hi);
            }
            let [lo, hi] = &q.0;
            for (lane, (l, h)) in lanes
                .0
                .iter_mut()
                .zip(lo.as_chunks::<4>().0.iter().zip(hi.as_chunks::<4>().0))
            {
                *lane = -l.iter().chain(h).map(|&v| v as i32).sum::<i32>();
            }
        }
        let blocks = chunks.iter().flatten();
        for ((d, dsum), b) in self.d.iter_mut().zip(&mut self.dsum).zip(blocks) {
            *d = b.d;
            *dsum = b.d * b.sum as f32;
        }
    }

    /// Derives [`steps`](Self::steps) and [`block_sums`](Self::block_sums) from the chunks
    /// held, for [`QuadQ5_0`] rows (a few hundred bytes per chunk, so only when such rows
    /// come).
    pub fn fill_steps(&mut self) {
        let n = self.q.len();
        self.steps_ready = true;
        self.steps.resize(n, Aligned([[0; 64]; 8]));
        self.block_sums.resize(n, Lanes16::default());
        let chunks = self.q.iter().zip(&self.neg_sums);
        let out = self.steps.iter_mut().zip(&mut self.block_sums);
        for ((q, lanes), (steps, sums)) in chunks.zip(out) {
            for (s, step) in steps.iter_mut().enumerate() {
                // Whole words: block b's four bytes are i32 lane b of the 16-byte pattern.
                let words = q[s / 4].as_chunks::<16>().0;
                let lane = words.iter().enumerate().fold(0u128, |lane, (b, block)| {
                    let at = 4 * (s % 4);
                    let four = [block[at], block[at + 1], block[at + 2], block[at + 3]];
                    lane | (u32::from_le_bytes(four.map(|v| v as u8)) as u128) << (32 * b)
                });
                let lane = lane.to_le_bytes().map(|v| v as i8);
                for r in step.as_chunks_mut::<16>().0 {
                    *r = lane;
                }
            }
            let block = |b: usize| lanes.0[4 * b..4 * b + 4].iter().sum();
            sums.0 = std::array::from_fn(|l| block(l % 4));
        }
    }

    /// The steps and block sums per chunk ([`fill_steps`](Self::fill_steps)), or `None` if
    /// they were not derived from the chunks held now.
    #[allow(clippy::type_complexity)]
    pub fn steps(&self) -> Option<(&[Aligned<[[i8; 64]; 8]>], &[Lanes16])> {
        self.steps_ready
            .then_some((self.steps.as_slice(), self.block_sums.as_slice()))
    }

    /// Sizes the buffers for `n` chunks, for a quantizer that writes [`fill`](Self::fill)'s
    /// result in place (what they held before is left for it to overwrite).
    pub fn resize(&mut self, n: usize) {
        // Steps belong to the chunks they were derived from: none until `fill_steps` again.
        self.steps_ready = false;
        self.q.resize(n, Aligned([[0; 64]; 2]));
        self.neg_sums.resize(n, Lanes16::default());
        self.d.resize(CHUNK_BLOCKS * n, 0.0);
        self.dsum.resize(CHUNK_BLOCKS * n, 0.0);
    }

    /// Quantizes `x` (whole `Q8_K` blocks of 256; a last partial block is dropped) as
    /// `Q8_K`, ggml's reference quantizer, reusing the buffer.
    /// The blocks in steps too ([`q8k_steps`](Self::q8k_steps)).
    pub fn fill_q8k(&mut self, x: &[f32]) {
        self.fill_q8k_with(x, true, |x, out| {
            crate::quants::quantize_row(GgmlType::Q8_K, x, out)
        });
    }

    /// [`fill_q8k`](Self::fill_q8k) through `quantize(values, row bytes)`: a faster
    /// quantizer with the same results; the blocks in steps only if `steps` (only
    /// [`StepsQ6K`] rows take them; without, [`q8k_steps`](Self::q8k_steps) is empty rather
    /// than left over from an earlier token).
    pub fn fill_q8k_with(
        &mut self,
        x: &[f32],
        steps: bool,
        quantize: impl FnOnce(&[f32], &mut [u8]),
    ) {
        let n = x.len() / crate::types::QK_K * crate::types::QK_K;
        let bytes = GgmlType::Q8_K.row_bytes(n as u64).unwrap_or(0) as usize;
        self.q8k.resize(bytes, 0);
        quantize(&x[..n], &mut self.q8k);
        let blocks = as_blocks::<BlockQ8K>(&self.q8k).unwrap_or(&[]);
        self.q8k_steps.clear();
        if steps {
            self.q8k_steps.resize(blocks.len(), Q8KSteps::ZERO);
            for (steps, b) in self.q8k_steps.iter_mut().zip(blocks) {
                steps.fill(b);
            }
        }
    }

    /// The `Q8_K` blocks in steps, for [`StepsQ6K`] rows (after [`fill_q8k`](Self::fill_q8k),
    /// or [`fill_q8k_with`](Self::fill_q8k_with) asked for them; empty otherwise).
    pub fn q8k_steps(&self) -> &[Q8KSteps] {
        &self.q8k_steps
    }

    /// The token as `Q8_K` blocks (after [`fill_q8k`](Self::fill_q8k); empty before).
    pub fn q8k(&self) -> &[BlockQ8K] {
        as_blocks::<BlockQ8K>(&self.q8k).unwrap_or(&[])
    }

    /// Chunks held.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::vec_dot_q8;
    use crate::quants::quantize_row;
    use crate::rng::SplitMix64;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = SplitMix64::new(seed);
        (0..n).map(|_| r.next_f32() * 2.0 - 1.0).collect()
    }

    #[test]
    fn pack_then_unpack_is_the_identity_and_keeps_the_length() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            // Rows of 512 go in fours; of 8960, alone (`group_rows`).
            for (cols, n) in [512, 8960]
                .into_iter()
                .flat_map(|c| [(c, 1), (c, 5), (c, 7)])
            {
                let rb = ty.row_bytes(cols as u64).unwrap() as usize;
                let x = random(cols * n, 7 + n as u64);
                let mut rows = vec![0u8; n * rb];
                quantize_row(ty, &x, &mut rows);
                let mut packed = vec![0u8; rows.len()];
                assert!(pack_rows(ty, rb, &rows, &mut packed), "{ty}");
                assert_ne!(packed, rows, "{ty}: packing must move bytes");
                let mut back = vec![0u8; rows.len()];
                assert!(unpack_rows(ty, rb, &packed, &mut back));
                assert_eq!(back, rows, "{ty}");
            }
        }
        let mut dst = [0u8; 18 * 4];
        assert!(!pack_rows(GgmlType::Q4_K, 72, &[0; 72], &mut dst[..72]));
        assert!(!pack_rows(GgmlType::Q4_0, 18, &[0; 72], &mut dst));
        assert!(!pack_rows(GgmlType::Q4_0, 72, &[0; 36], &mut dst[..36]));
        assert!(!supports(GgmlType::Q5_0, 96) && supports(GgmlType::Q5_0, 896));
        assert!(
            !pack_rows(GgmlType::Q5_0, 0, &[], &mut []),
            "rows of no bytes"
        );
    }

    #[test]
    fn long_rows_go_in_smaller_groups() {
        assert_eq!(group_rows(616), 4, "Q5_0 rows of 896");
        assert_eq!(group_rows(GROUP_BYTES / 4), 4);
        assert_eq!(group_rows(GROUP_BYTES / 4 + 1), 2);
        assert_eq!(group_rows(2736), 2, "Q4_K rows of 4864");
        assert_eq!(group_rows(3990), 1, "Q6_K rows of 4864");
        assert_eq!(group_rows(5040), 1, "Q4_K rows of 8960");
        assert_eq!(group_rows(1 << 20), 1);
        for rb in [1, 616, 2736, 3990, 5040] {
            assert!(ROW_GROUP.is_multiple_of(group_rows(rb)));
            assert_eq!(group_start(rb, 13), 13 - 13 % group_rows(rb));
        }
    }

    /// A group of rows alternates chunks: chunk `g·j + r` is row `r`'s chunk `j` (each packed
    /// as that row alone would be); the rows after the last whole group make a shorter one.
    #[test]
    fn grouped_rows_alternate_their_chunks() {
        let ty = GgmlType::Q8_0;
        let rb = ty.row_bytes(256).unwrap() as usize;
        let n = ROW_GROUP + 2;
        let mut rows = vec![0u8; n * rb];
        quantize_row(ty, &random(256 * n, 5), &mut rows);
        let mut grouped = vec![0u8; n * rb];
        assert!(pack_rows(ty, rb, &rows, &mut grouped));
        let mut alone = vec![0u8; n * rb];
        for r in 0..n {
            let span = r * rb..(r + 1) * rb;
            assert!(pack_rows(ty, rb, &rows[span.clone()], &mut alone[span]));
        }
        let grouped = as_chunks::<ChunkQ8_0>(&grouped).unwrap();
        let alone = as_chunks::<ChunkQ8_0>(&alone).unwrap();
        // Two chunks per row: row r's are alone[2r] and alone[2r + 1].
        let want: Vec<ChunkQ8_0> = [(0, 4), (4, 2)]
            .into_iter()
            .flat_map(|(first, g)| {
                (0..2).flat_map(move |j| (first..first + g).map(move |r| alone[2 * r + j]))
            })
            .collect();
        assert_eq!(grouped, want.as_slice());
    }

    #[test]
    fn q5_bit_places_each_weight_once() {
        let mut seen = [0u64; 2];
        for h in 0..2 {
            for p in 0..64 {
                let (word, bit) = q5_bit(h, p);
                assert_eq!(seen[word] >> bit & 1, 0, "h {h} p {p}");
                seen[word] |= 1 << bit;
            }
        }
        assert_eq!(seen, [u64::MAX; 2]);
    }

    /// The kernels' way to the fifth bits, modelled in scalar code: the two words broadcast to
    /// every 128-bit lane (64-bit lane `k` holds word `k % 2`), lane `k` rotated right by
    /// `4h + k / 2`, bit 4 of byte `i` of lane `k` is weight `8k + i`'s fifth bit.
    #[test]
    fn rotated_fifth_bit_words_give_each_weight_its_bit() {
        let x = random(128, 21);
        let mut row = vec![0u8; GgmlType::Q5_0.row_bytes(128).unwrap() as usize];
        quantize_row(GgmlType::Q5_0, &x, &mut row);
        let blocks = as_blocks::<BlockQ5_0>(&row).unwrap();
        let mut packed = vec![0u8; row.len()];
        assert!(pack_rows(GgmlType::Q5_0, row.len(), &row, &mut packed));
        let c = as_chunks::<ChunkQ5_0>(&packed).unwrap()[0];
        let words = c.qh.map(u64::from_le_bytes);
        let mut ones = 0;
        for h in 0..2 {
            for k in 0..8 {
                let lane = words[k % 2].rotate_right((4 * h + k / 2) as u32);
                for i in 0..8 {
                    let p = 8 * k + i;
                    let got = (lane >> (8 * i + 4)) & 1;
                    let qh = u32::from_le_bytes(blocks[p / 16].qh);
                    let want = (qh >> (16 * h + p % 16)) & 1;
                    assert_eq!(got, want as u64, "h {h} p {p}");
                    ones += want;
                }
            }
        }
        assert!(
            ones > 10 && ones < 118,
            "the row must have fifth bits of both values"
        );
    }

    /// The chunk fields mean what their docs say: weight `16h + e` of block `b` is read back
    /// from the documented place and equals the dequantized original.
    #[test]
    fn chunk_fields_follow_the_documented_order() {
        let x = random(128, 3);
        let mut row = vec![0u8; GgmlType::Q5_0.row_bytes(128).unwrap() as usize];
        quantize_row(GgmlType::Q5_0, &x, &mut row);
        let mut packed = vec![0u8; row.len()];
        pack_rows(GgmlType::Q5_0, row.len(), &row, &mut packed);
        let c = as_chunks::<ChunkQ5_0>(&packed).unwrap()[0];
        let mut deq = vec![0f32; 128];
        crate::dequant::dequantize_row(GgmlType::Q5_0, &row, &mut deq);
        let qh = c.qh.map(u64::from_le_bytes);
        for h in 0..2 {
            for p in 0..64 {
                let nib = if h == 0 { c.qs[p] & 15 } else { c.qs[p] >> 4 };
                let (word, bit) = q5_bit(h, p);
                let q = nib as i32 | (((qh[word] >> bit) & 1) as i32) << 4;
                let (b, e) = (p / 16, 16 * h + p % 16);
                let w = c.d[b].to_f32() * (q - ChunkQ5_0::OFFSET) as f32;
                assert_eq!(w, deq[32 * b + e], "h {h} p {p}");
            }
        }
    }

    /// A dot product through [`ActChunks`] (scalar, in chunk order) matches the reference.
    #[test]
    fn act_chunks_carry_the_blocks_in_chunk_order() {
        let xf = random(256, 11);
        let mut xq = vec![BlockQ8x32::default(); 8];
        crate::act::quantize_activations(&xf, &mut xq);
        let mut a = ActChunks::default();
        a.fill(&xq);
        assert_eq!(a.len(), 2);
        let wf = random(256, 12);
        let mut row = vec![0u8; GgmlType::Q8_0.row_bytes(256).unwrap() as usize];
        quantize_row(GgmlType::Q8_0, &wf, &mut row);
        let mut packed = vec![0u8; row.len()];
        pack_rows(GgmlType::Q8_0, row.len(), &row, &mut packed);
        let mut total = 0.0f32;
        for (ci, c) in as_chunks::<ChunkQ8_0>(&packed).unwrap().iter().enumerate() {
            for b in 0..4 {
                let lanes = &a.neg_sums[ci].0[4 * b..4 * b + 4];
                assert_eq!(lanes.iter().sum::<i32>(), -xq[4 * ci + b].sum);
                let mut s = lanes.iter().sum::<i32>() * ChunkQ8_0::OFFSET;
                for h in 0..2 {
                    for e in 0..16 {
                        let p = 16 * b + e;
                        s += c.qs[h][p] as i32 * a.q[ci][h][p] as i32;
                    }
                }
                let blk = 4 * ci + b;
                let dw = c.d[b].to_f32();
                total += dw * a.d[blk] * s as f32;
            }
        }
        let want = vec_dot_q8(GgmlType::Q8_0, &row, &xq);
        assert!(
            (total - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{total} vs {want}"
        );
    }

    /// Four random `Q5_0` rows of `cols` weights, packed by [`pack_rows`] (one group).
    fn four_q5_0_rows(cols: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let rb = GgmlType::Q5_0.row_bytes(cols as u64).unwrap() as usize;
        let mut rows = vec![0u8; QUAD_ROWS * rb];
        quantize_row(GgmlType::Q5_0, &random(QUAD_ROWS * cols, seed), &mut rows);
        let mut packed = vec![0u8; rows.len()];
        assert!(pack_rows(GgmlType::Q5_0, rb, &rows, &mut packed));
        (rows, packed)
    }

    /// Every weight of a quad is where [`QuadQ5_0`]'s docs put it: read back from there, it
    /// equals the dequantized original.
    #[test]
    fn quad_fields_follow_the_documented_order() {
        let cols = 256;
        let (rows, packed) = four_q5_0_rows(cols, 31);
        let mut deq = vec![0f32; rows.len() / 22 * 32];
        crate::dequant::dequantize_row(GgmlType::Q5_0, &rows, &mut deq);
        let quads = as_chunks::<QuadQ5_0>(&packed).unwrap();
        assert_eq!(quads.len(), cols / CHUNK_LEN);
        let mut fifths = 0;
        for (j, quad) in quads.iter().enumerate() {
            for s in 0..8 {
                let bits = u64::from_le_bytes(quad.qh[s]);
                for p in 0..64 {
                    let (r, b, e) = (p / 16, (p / 4) % 4, p % 4);
                    let nibble = (quad.qs[s / 2][p] >> (4 * (s % 2))) & 15;
                    let fifth = ((bits >> p) & 1) as i32;
                    fifths += fifth;
                    let q = nibble as i32 | fifth << 4;
                    let w = quad.d[4 * r + b].to_f32() * (q - QuadQ5_0::OFFSET) as f32;
                    let at = r * cols + j * CHUNK_LEN + 32 * b + 4 * s + e;
                    assert_eq!(w, deq[at], "quad {j} step {s} byte {p}");
                }
            }
        }
        assert!(
            fifths > 50 && fifths < 4 * cols as i32 - 50,
            "both fifth-bit values"
        );
    }

    /// A shorter last group keeps chunks: five rows are one quad group, then one row alone.
    #[test]
    fn only_whole_groups_of_four_q5_0_rows_become_quads() {
        let cols = 128;
        let rb = GgmlType::Q5_0.row_bytes(cols as u64).unwrap() as usize;
        let mut rows = vec![0u8; 5 * rb];
        quantize_row(GgmlType::Q5_0, &random(5 * cols, 41), &mut rows);
        let mut packed = vec![0u8; rows.len()];
        assert!(pack_rows(GgmlType::Q5_0, rb, &rows, &mut packed));
        let mut quad = vec![0u8; 4 * rb];
        assert!(pack_rows(GgmlType::Q5_0, rb, &rows[..4 * rb], &mut quad));
        assert_eq!(&packed[..4 * rb], &quad[..]);
        assert_eq!(
            as_chunks::<QuadQ5_0>(&quad).unwrap()[0],
            QuadQ5_0::pack(&as_blocks::<BlockQ5_0>(&rows[..4 * rb]).unwrap()[..16])
        );
        let alone = ChunkQ5_0::pack(&as_blocks::<BlockQ5_0>(&rows[4 * rb..]).unwrap()[..4]);
        assert_eq!(as_chunks::<ChunkQ5_0>(&packed[4 * rb..]).unwrap()[0], alone);
    }

    /// The steps hold what their docs say, and a quad's dot through them (scalar) matches the
    /// reference row by row; new chunks drop the steps until they are derived again.
    #[test]
    fn steps_carry_each_block_and_give_the_quads_their_dots() {
        let cols = 256;
        let xf = random(cols, 17);
        let mut xq = vec![BlockQ8x32::default(); cols / 32];
        crate::act::quantize_activations(&xf, &mut xq);
        let mut a = ActChunks::default();
        a.fill(&xq);
        assert!(a.steps().is_none(), "no steps before fill_steps");
        a.fill_steps();
        for (c, (steps, sums)) in a.steps.iter().zip(&a.block_sums).enumerate() {
            for (s, step) in steps.iter().enumerate() {
                for (p, &v) in step.iter().enumerate() {
                    let (b, e) = ((p / 4) % 4, p % 4);
                    assert_eq!(v, xq[4 * c + b].qs[4 * s + e], "chunk {c} step {s}");
                }
            }
            for (l, &v) in sums.0.iter().enumerate() {
                assert_eq!(v, -xq[4 * c + l % 4].sum, "chunk {c} lane {l}");
            }
        }
        let (rows, packed) = four_q5_0_rows(cols, 9);
        let rb = rows.len() / QUAD_ROWS;
        let mut total = [0f32; QUAD_ROWS];
        for (c, quad) in as_chunks::<QuadQ5_0>(&packed).unwrap().iter().enumerate() {
            let mut lanes = a.block_sums[c].0.map(|v| v * QuadQ5_0::OFFSET);
            for s in 0..8 {
                let bits = u64::from_le_bytes(quad.qh[s]);
                for p in 0..64 {
                    let nibble = (quad.qs[s / 2][p] >> (4 * (s % 2))) & 15;
                    let q = nibble as i32 | (((bits >> p) & 1) as i32) << 4;
                    lanes[p / 4] += q * a.steps[c][s][p] as i32;
                }
            }
            for (l, &v) in lanes.iter().enumerate() {
                let (r, b) = (l / 4, l % 4);
                total[r] += quad.d[l].to_f32() * a.d[4 * c + b] * v as f32;
            }
        }
        for (r, &got) in total.iter().enumerate() {
            let want = vec_dot_q8(GgmlType::Q5_0, &rows[r * rb..(r + 1) * rb], &xq);
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "row {r}: {got} vs {want}"
            );
        }
        a.fill(&xq);
        assert!(a.steps().is_none(), "stale steps dropped");
    }

    /// Every quant of a [`StepsQ6K`] is where its docs put it (step 3 put together from the
    /// top bits as the kernel does), and with the scales gives the dequantized original; the
    /// activations' steps hold their block in the same order, and a dot through both steps
    /// (scalar) matches the reference.
    #[test]
    fn q6_k_steps_follow_the_documented_order() {
        let cols = 512;
        let ty = GgmlType::Q6_K;
        let mut row = vec![0u8; ty.row_bytes(cols as u64).unwrap() as usize];
        quantize_row(ty, &random(cols, 51), &mut row);
        let mut deq = vec![0f32; cols];
        crate::dequant::dequantize_row(ty, &row, &mut deq);
        let mut packed = vec![0u8; row.len()];
        assert!(pack_rows(ty, row.len(), &row, &mut packed));
        let xf = random(cols, 52);
        let mut a = ActChunks::default();
        a.fill_q8k(&xf);
        let xb = a.q8k();
        let mut total = 0.0f32;
        for (sb, (w, x)) in as_chunks::<StepsQ6K>(&packed)
            .unwrap()
            .iter()
            .zip(a.q8k_steps())
            .enumerate()
        {
            let mut lanes = x.start.0;
            for s in 0..Q6K_STEPS {
                for p in 0..64 {
                    let q = match s {
                        3 => (0..3).fold(0, |q, k| q | (w.q[k][p] >> 6) << (4 - 2 * k)),
                        _ => w.q[s][p] & 0x3F,
                    };
                    let e = q6k_step_element(s, p);
                    let want = deq[256 * sb + e];
                    let sc = w.scales[e / 16] as f32;
                    assert_eq!(
                        w.d.to_f32() * sc * (q as i32 - 32) as f32,
                        want,
                        "{sb} {s} {p}"
                    );
                    assert_eq!(x.q[s][p], xb[sb].qs[e], "activation step {s} byte {p}");
                    lanes[p / 4] += q as i32 * x.q[s][p] as i32;
                }
            }
            let dot: i32 = lanes
                .iter()
                .zip(&w.scales)
                .map(|(&l, &sc)| l * sc as i32)
                .sum();
            total += w.d.to_f32() * x.d * dot as f32;
        }
        let want = crate::dot::vec_dot_q8k(ty, &row, xb).unwrap();
        assert!(
            (total - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{total} vs {want}"
        );
    }
}
