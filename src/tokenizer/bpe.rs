//! Byte-pair merging of one pre-tokenized piece.
//!
//! A piece starts as one symbol per byte. Repeatedly the adjacent pair with the lowest merge
//! rank is merged (leftmost first on equal rank), which is what Hugging Face `tokenizers` and
//! llama.cpp do. Symbols live in a doubly linked list over a vector and candidate pairs in a
//! min-heap, giving O(n log n) per piece instead of rescanning the piece after every merge.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// Merge table: `(left id, right id)` → `(rank, merged id)`.
pub(crate) struct Merges {
    map: HashMap<u64, (u32, u32), BuildHasherDefault<PairHasher>>,
}

fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

impl Merges {
    pub(crate) fn with_capacity(n: usize) -> Merges {
        let map = HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default());
        Merges { map }
    }

    /// Adds a merge unless the pair already has one: the earlier (lower) rank wins, as in
    /// llama.cpp, so a repeated merge line cannot change results.
    pub(crate) fn insert(&mut self, left: u32, right: u32, rank: u32, merged: u32) {
        self.map
            .entry(pair_key(left, right))
            .or_insert((rank, merged));
    }

    fn get(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        self.map.get(&pair_key(left, right)).copied()
    }
}

/// Pair keys are already well spread; a SipHash per lookup would dominate the merge loop, so
/// we use a cheap 64-bit mix (the splitmix64 finaliser) instead.
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

const NONE: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: usize,
    next: usize,
}

/// Heap entry: lowest rank first, then leftmost position. The ids record what the pair was
/// when pushed, so entries made stale by an earlier merge can be recognised and skipped.
type Candidate = Reverse<(u32, usize, u32, u32)>;

/// Reusable buffers, so that encoding a long text does not allocate per piece.
#[derive(Default)]
pub(crate) struct Scratch {
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Candidate>,
}

/// Appends the ids for one piece, given the id of each of its bytes.
pub(crate) fn merge_piece(
    merges: &Merges,
    byte_ids: impl Iterator<Item = u32>,
    scratch: &mut Scratch,
    out: &mut Vec<u32>,
) {
    let Scratch { symbols, heap } = scratch;
    symbols.clear();
    heap.clear();
    for (i, id) in byte_ids.enumerate() {
        let prev = if i == 0 { NONE } else { i - 1 };
        symbols.push(Symbol {
            id,
            prev,
            next: i + 1,
        });
    }
    if let Some(last) = symbols.last_mut() {
        last.next = NONE;
    }
    for i in 1..symbols.len() {
        push_candidate(merges, symbols, heap, i - 1);
    }
    while let Some(Reverse((_, left, left_id, right_id))) = heap.pop() {
        apply_merge(merges, symbols, heap, left, left_id, right_id);
    }
    let mut i = if symbols.is_empty() { NONE } else { 0 };
    while i != NONE {
        out.push(symbols[i].id);
        i = symbols[i].next;
    }
}

/// Queues the pair starting at symbol `left`, if it has a right neighbour and a merge.
fn push_candidate(
    merges: &Merges,
    symbols: &[Symbol],
    heap: &mut BinaryHeap<Candidate>,
    left: usize,
) {
    let right = symbols[left].next;
    if right == NONE {
        return;
    }
    let (l, r) = (symbols[left].id, symbols[right].id);
    if let Some((rank, _)) = merges.get(l, r) {
        heap.push(Reverse((rank, left, l, r)));
    }
}

/// Merges symbol `left` with its right neighbour if the pair is still `(left_id, right_id)`.
///
/// A merged symbol always covers more bytes than either part, so it never has the id of the
/// part it replaced; an unchanged left id therefore means the same right neighbour, and
/// comparing the two ids is enough to detect a stale entry.
fn apply_merge(
    merges: &Merges,
    symbols: &mut [Symbol],
    heap: &mut BinaryHeap<Candidate>,
    left: usize,
    left_id: u32,
    right_id: u32,
) {
    let right = symbols[left].next;
    if symbols[left].id != left_id || right == NONE || symbols[right].id != right_id {
        return;
    }
    let Some((_, merged)) = merges.get(left_id, right_id) else {
        return;
    };
    let after = symbols[right].next;
    symbols[left].id = merged;
    symbols[left].next = after;
    // The absorbed symbol is unlinked; giving it an impossible id keeps old entries stale.
    symbols[right].id = u32::MAX;
    if after != NONE {
        symbols[after].prev = left;
    }
    let before = symbols[left].prev;
    if before != NONE {
        push_candidate(merges, symbols, heap, before);
    }
    push_candidate(merges, symbols, heap, left);
}
