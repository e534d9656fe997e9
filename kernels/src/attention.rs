//! Attention over a paged KV cache: the cache write, paged decode attention (vLLM's v2, with
//! partitions reduced at the end) and flash-style tiled prefill (FlashAttention-2's online
//! softmax), all in f32.
//!
//! # The cache layout
//!
//! Per layer there are two caches of the same shape, `k_cache` and `v_cache`, each
//! `[num_blocks, block_size, num_kv_heads, head_dim]` f32 row-major. A sequence owns a list of
//! blocks, its block table (`&[u32]`, in order): token position `p` of the sequence lives in
//! block `table[p / block_size]`, slot `p % block_size`, so its key for kv head `h` is the
//! `head_dim` values at float offset
//! `((table[p / block_size] · block_size + p % block_size) · num_kv_heads + h) · head_dim`
//! ([`KvLayout::offset`]). The blocks of a sequence need not be contiguous nor in order.
//!
//! Queries are `[num_tokens, num_heads, head_dim]`, with `num_heads = num_kv_heads · group`
//! (grouped-query attention): query head `h` reads kv head `h / group`. A query at position
//! `p` sees the keys at positions `0..=p` (causal), or with a sliding window of `w` the keys
//! in `(p - w, p]` (at most `w` of them). Logits are `scale · q·k`, the scale given by the
//! caller (`1/sqrt(head_dim)` for Llama).
//!
//! # The algorithms (the GPU's, in the same order)
//!
//! - [`write_kv`]: each new token's K and V rows are copied to the slot `slot_mapping` gives
//!   it (`block · block_size + offset`; negative means padding, skipped): vLLM's
//!   `reshape_and_cache`.
//! - [`decode`]: one query per sequence at position `context_len - 1`. The visible keys are
//!   cut into partitions of `partition_size` keys, counted from the first visible key; each
//!   partition computes its logits, their max `m_i`, `s_i = Σ exp(logit - m_i)` and the
//!   unnormalized `o_i = Σ exp(logit - m_i) · v`; the reduce takes `m = max m_i`,
//!   `w_i = exp(m_i - m)` and writes `Σ w_i o_i / Σ w_i s_i`. One partition is vLLM's v1.
//! - [`prefill`]: queries for consecutive positions `start..start + num_tokens` of one
//!   sequence whose K/V (the prefix and the new tokens) are already in the cache. Query tiles
//!   of [`PrefillTiles::query_rows`] rows walk key tiles of [`PrefillTiles::key_cols`] keys,
//!   from the first key any row of the tile sees to the tile's last position, keeping a
//!   running max `m`, a running sum `l` and an accumulator rescaled by `exp(m_old - m_new)`;
//!   the output is the accumulator divided by `l`.
//! - [`naive_attention`]: the textbook softmax over the visible keys, in f64, for the tests.

pub use crate::ShapeError;

/// The shape of one paged cache, `[num_blocks, block_size, num_kv_heads, head_dim]` (the
/// number of blocks comes from the cache's length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
	/// Token slots per block.
	pub block_size: usize,
	/// Key/value heads.
	pub num_kv_heads: usize,
	/// Values per head.
	pub head_dim: usize,
}

impl KvLayout {
	/// The values of one token (all kv heads) in one cache: `num_kv_heads · head_dim`.
	pub fn row_len(&self) -> usize {
		self.num_kv_heads * self.head_dim
	}

	/// The values of one block: `block_size · num_kv_heads · head_dim`.
	pub fn block_len(&self) -> usize {
		self.block_size * self.row_len()
	}

	/// How many blocks a cache of `cache_len` values holds, or an error when a dimension is
	/// zero or `cache_len` is not a whole number of blocks.
	pub fn num_blocks(&self, cache_len: usize) -> Result<usize, ShapeError> {
		if self.block_size == 0 || self.num_kv_heads == 0 || self.head_dim == 0 {
			return Err(ShapeError(format!("a zero dimension in the cache layout {self:?}")));
		}
		if !cache_len.is_multiple_of(self.block_len()) {
			return Err(ShapeError(format!(
				"a cache of {cache_len} values is not a whole number of blocks of {} ({self:?})",
				self.block_len()
			)));
		}
		Ok(cache_len / self.block_len())
	}

	/// The float offset of kv head `kv_head` of the token in slot `slot` of block `block`.
	pub fn offset(&self, block: usize, slot: usize, kv_head: usize) -> usize {
		((block * self.block_size + slot) * self.num_kv_heads + kv_head) * self.head_dim
	}
}

/// One layer's K and V caches, checked against their layout.
#[derive(Clone, Copy, Debug)]
pub struct PagedKv<'a> {
	k: &'a [f32],
	v: &'a [f32],
	layout: KvLayout,
	num_blocks: usize,
}

impl<'a> PagedKv<'a> {
	/// The caches `k` and `v`, each `[num_blocks, block_size, num_kv_heads, head_dim]`.
	pub fn new(k: &'a [f32], v: &'a [f32], layout: KvLayout) -> Result<Self, ShapeError> {
		if k.len() != v.len() {
			return Err(ShapeError(format!(
				"the K cache has {} values, the V cache {}",
				k.len(),
				v.len()
			)));
		}
		let num_blocks = layout.num_blocks(k.len())?;
		Ok(Self { k, v, layout, num_blocks })
	}

	/// The layout.
	pub fn layout(&self) -> KvLayout {
		self.layout
	}

	/// The number of blocks.
	pub fn num_blocks(&self) -> usize {
		self.num_blocks
	}

	/// Fails unless `table` names a valid block for every position in `0..len`.
	fn check_table(&self, table: &[u32], len: usize) -> Result<(), ShapeError> {
		let needed = len.div_ceil(self.layout.block_size);
		if table.len() < needed {
			return Err(ShapeError(format!(
				"a block table of {} blocks for {len} positions in blocks of {} (needs {needed})",
				table.len(),
				self.layout.block_size
			)));
		}
		if let Some(&bad) = table[..needed].iter().find(|&&b| b as usize >= self.num_blocks) {
			return Err(ShapeError(format!(
				"block {bad} in a block table, of a cache of {} blocks",
				self.num_blocks
			)));
		}
		Ok(())
	}

	/// The offset of position `pos`'s row for `kv_head`, through a checked `table`.
	fn row(&self, table: &[u32], pos: usize, kv_head: usize) -> usize {
		let bs = self.layout.block_size;
		self.layout.offset(table[pos / bs] as usize, pos % bs, kv_head)
	}

	fn key(&self, table: &[u32], pos: usize, kv_head: usize) -> &[f32] {
		let at = self.row(table, pos, kv_head);
		&self.k[at..at + self.layout.head_dim]
	}

	fn value(&self, table: &[u32], pos: usize, kv_head: usize) -> &[f32] {
		let at = self.row(table, pos, kv_head);
		&self.v[at..at + self.layout.head_dim]
	}
}

/// What every attention call shares besides its buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
	/// Query heads, a multiple of the cache's kv heads.
	pub num_heads: usize,
	/// The factor on `q·k` (`1/sqrt(head_dim)` for Llama).
	pub scale: f32,
	/// A sliding window: a query at position `p` sees keys in `(p - w, p]`; `None` is causal.
	pub window: Option<usize>,
}

impl AttentionParams {
	/// The query heads per kv head, or an error when the heads do not divide or the window is
	/// empty.
	pub fn group(&self, layout: &KvLayout) -> Result<usize, ShapeError> {
		if self.num_heads == 0
			|| layout.num_kv_heads == 0
			|| !self.num_heads.is_multiple_of(layout.num_kv_heads)
		{
			return Err(ShapeError(format!(
				"{} query heads over {} kv heads",
				self.num_heads, layout.num_kv_heads
			)));
		}
		if self.window == Some(0) {
			return Err(ShapeError("a sliding window of 0 keys".into()));
		}
		if !self.scale.is_finite() {
			return Err(ShapeError(format!("a softmax scale of {}", self.scale)));
		}
		Ok(self.num_heads / layout.num_kv_heads)
	}

	/// The first key position a query at `pos` sees.
	pub fn first_visible(&self, pos: usize) -> usize {
		self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
	}
}

/// The block tables and context lengths of a decode batch, flat as the GPU reads them.
#[derive(Clone, Copy, Debug)]
pub struct BlockTables<'a> {
	/// `[num_seqs, max_blocks_per_seq]`: each sequence's blocks, in order (entries past what
	/// its context needs are not read).
	pub tables: &'a [u32],
	/// The width of a row of `tables`.
	pub max_blocks_per_seq: usize,
	/// `[num_seqs]`: each sequence's context length (its query is at position `len - 1`; a
	/// length of 0 gives an output of zeros).
	pub context_lens: &'a [u32],
}

/// Copies each token's K and V rows (`k`, `v`: `[num_tokens, num_kv_heads, head_dim]`) into
/// the caches at the slot `slot_mapping[token]` (`block · block_size + offset`); tokens with a
/// negative slot are skipped. Two tokens may not share a slot.
pub fn write_kv(
	k_cache: &mut [f32],
	v_cache: &mut [f32],
	layout: KvLayout,
	k: &[f32],
	v: &[f32],
	slot_mapping: &[i64],
) -> Result<(), ShapeError> {
	if k_cache.len() != v_cache.len() {
		return Err(ShapeError(format!(
			"the K cache has {} values, the V cache {}",
			k_cache.len(),
			v_cache.len()
		)));
	}
	let num_blocks = layout.num_blocks(k_cache.len())?;
	let row = layout.row_len();
	let tokens = slot_mapping.len();
	if k.len() != tokens * row || v.len() != tokens * row {
		return Err(ShapeError(format!(
			"K of {} and V of {} values for {tokens} tokens of {row}",
			k.len(),
			v.len()
		)));
	}
	let slots = num_blocks * layout.block_size;
	let mut seen = std::collections::HashSet::new();
	for &slot in slot_mapping.iter().filter(|&&s| s >= 0) {
		if slot as u64 >= slots as u64 {
			return Err(ShapeError(format!("slot {slot} of a cache of {slots} slots")));
		}
		if !seen.insert(slot) {
			return Err(ShapeError(format!("slot {slot} is written by two tokens")));
		}
	}
	for (t, &slot) in slot_mapping.iter().enumerate() {
		if slot < 0 {
			continue;
		}
		let at = slot as usize * row;
		k_cache[at..at + row].copy_from_slice(&k[t * row..(t + 1) * row]);
		v_cache[at..at + row].copy_from_slice(&v[t * row..(t + 1) * row]);
	}
	Ok(())
}

/// One partition's results: its max logit, its exp-sum and its unnormalized output.
struct Partition {
	max: f32,
	sum: f32,
	out: Vec<f32>,
}

/// Paged decode attention, vLLM's v2: `out[s, h]` (`[num_seqs, num_heads, head_dim]`) is the
/// attention of query `q[s, h]` (at position `context_lens[s] - 1`) over sequence `s`'s
/// visible keys, computed by partitions of `partition_size` keys and reduced.
pub fn decode(
	q: &[f32],
	params: &AttentionParams,
	cache: &PagedKv<'_>,
	tables: &BlockTables<'_>,
	partition_size: usize,
	out: &mut [f32],
) -> Result<(), ShapeError> {
	let layout = cache.layout;
	let group = params.group(&layout)?;
	let hd = layout.head_dim;
	let num_seqs = tables.context_lens.len();
	let width = tables.max_blocks_per_seq;
	if partition_size == 0 {
		return Err(ShapeError("a partition size of 0".into()));
	}
	if tables.tables.len() != num_seqs * width {
		return Err(ShapeError(format!(
			"block tables of {} entries for {num_seqs} sequences of {width}",
			tables.tables.len()
		)));
	}
	let q_len = num_seqs * params.num_heads * hd;
	if q.len() != q_len || out.len() != q_len {
		return Err(ShapeError(format!(
			"q of {} and out of {} values for {num_seqs} sequences, {} heads of {hd}",
			q.len(),
			out.len(),
			params.num_heads
		)));
	}
	for (s, &len) in tables.context_lens.iter().enumerate() {
		cache.check_table(&tables.tables[s * width..(s + 1) * width], len as usize)?;
	}
	let mut logits = vec![0f32; partition_size];
	let mut parts = Vec::new();
	for s in 0..num_seqs {
		let table = &tables.tables[s * width..(s + 1) * width];
		let len = tables.context_lens[s] as usize;
		let first = if len == 0 { 0 } else { params.first_visible(len - 1) };
		for h in 0..params.num_heads {
			let kv_head = h / group;
			let row = (s * params.num_heads + h) * hd;
			let q_row = &q[row..row + hd];
			parts.clear();
			let mut part_start = first;
			while part_start < len {
				let part_end = (part_start + partition_size).min(len);
				let logits = &mut logits[..part_end - part_start];
				for (i, logit) in logits.iter_mut().enumerate() {
					*logit = dot(q_row, cache.key(table, part_start + i, kv_head)) * params.scale;
				}
				let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
				let mut sum = 0f32;
				for logit in logits.iter_mut() {
					*logit = (*logit - max).exp();
					sum += *logit;
				}
				let mut acc = vec![0f32; hd];
				for (i, &e) in logits.iter().enumerate() {
					for (a, &v) in acc.iter_mut().zip(cache.value(table, part_start + i, kv_head)) {
						*a += e * v;
					}
				}
				parts.push(Partition { max, sum, out: acc });
				part_start = part_end;
			}
			reduce(&parts, &mut out[row..row + hd]);
		}
	}
	Ok(())
}

/// Combines partitions: `Σ w_i o_i / Σ w_i s_i` with `w_i = exp(m_i - max m)`; zeros for none.
fn reduce(parts: &[Partition], out: &mut [f32]) {
	if parts.is_empty() {
		out.fill(0.0);
		return;
	}
	let max = parts.iter().fold(f32::NEG_INFINITY, |m, p| m.max(p.max));
	let weights: Vec<f32> = parts.iter().map(|p| (p.max - max).exp()).collect();
	let total: f32 = parts.iter().zip(&weights).fold(0.0, |t, (p, &w)| t + p.sum * w);
	for (d, o) in out.iter_mut().enumerate() {
		let acc = parts.iter().zip(&weights).fold(0f32, |a, (p, &w)| a + w * p.out[d]);
		*o = acc / total;
	}
}

/// The tile sizes of [`prefill`]: query rows per tile and keys per key tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillTiles {
	/// Query rows per tile (`Br`).
	pub query_rows: usize,
	/// Keys per key tile (`Bc`).
	pub key_cols: usize,
}

/// Flash-style prefill: `out` (`[num_tokens, num_heads, head_dim]`) is the attention of the
/// queries `q` (same shape) at positions `start..start + num_tokens` of one sequence over the
/// keys the cache holds for it through `table` (the new tokens' included), computed by query
/// tiles and key tiles with an online softmax.
pub fn prefill(
	q: &[f32],
	params: &AttentionParams,
	cache: &PagedKv<'_>,
	table: &[u32],
	start: usize,
	tiles: PrefillTiles,
	out: &mut [f32],
) -> Result<(), ShapeError> {
	let layout = cache.layout;
	let group = params.group(&layout)?;
	let hd = layout.head_dim;
	let row_len = params.num_heads * hd;
	if tiles.query_rows == 0 || tiles.key_cols == 0 {
		return Err(ShapeError(format!("prefill tiles of {tiles:?}")));
	}
	if !q.len().is_multiple_of(row_len) || out.len() != q.len() {
		return Err(ShapeError(format!(
			"q of {} and out of {} values for rows of {} heads of {hd}",
			q.len(),
			out.len(),
			params.num_heads
		)));
	}
	let num_tokens = q.len() / row_len;
	let end = start + num_tokens;
	cache.check_table(table, end)?;
	let br = tiles.query_rows;
	let bc = tiles.key_cols;
	let mut scores = vec![0f32; bc];
	let mut acc = vec![0f32; hd];
	for h in 0..params.num_heads {
		let kv_head = h / group;
		for tile_start in (0..num_tokens).step_by(br) {
			let tile_end = (tile_start + br).min(num_tokens);
			let last_pos = start + tile_end - 1;
			let key_first = params.first_visible(start + tile_start);
			for r in tile_start..tile_end {
				let pos = start + r;
				let first = params.first_visible(pos);
				let q_row = &q[(r * params.num_heads + h) * hd..][..hd];
				let mut m = f32::NEG_INFINITY;
				let mut l = 0f32;
				acc.fill(0.0);
				for key_start in (key_first..=last_pos).step_by(bc) {
					let keys = bc.min(last_pos + 1 - key_start);
					for (j, score) in scores[..keys].iter_mut().enumerate() {
						let key = key_start + j;
						*score = if key >= first && key <= pos {
							dot(q_row, cache.key(table, key, kv_head)) * params.scale
						} else {
							f32::NEG_INFINITY
						};
					}
					let tile_max = scores[..keys].iter().fold(f32::NEG_INFINITY, |a, &s| a.max(s));
					let m_new = m.max(tile_max);
					if m_new == f32::NEG_INFINITY {
						continue;
					}
					let alpha = if m == f32::NEG_INFINITY { 0.0 } else { (m - m_new).exp() };
					let mut tile_sum = 0f32;
					for score in &mut scores[..keys] {
						*score =
							if *score == f32::NEG_INFINITY { 0.0 } else { (*score - m_new).exp() };
						tile_sum += *score;
					}
					l = l * alpha + tile_sum;
					for a in acc.iter_mut() {
						*a *= alpha;
					}
					for (j, &p) in scores[..keys].iter().enumerate() {
						if p == 0.0 {
							continue;
						}
						for (a, &v) in
							acc.iter_mut().zip(cache.value(table, key_start + j, kv_head))
						{
							*a += p * v;
						}
					}
					m = m_new;
				}
				let out_row = &mut out[(r * params.num_heads + h) * hd..][..hd];
				for (o, &a) in out_row.iter_mut().zip(&acc) {
					*o = a / l;
				}
			}
		}
	}
	Ok(())
}

/// The textbook attention, in f64: for each query row `i` (`q`: `[positions.len(), num_heads,
/// head_dim]`) at position `positions[i]`, the softmax of `scale · q·k` over the visible keys
/// (through `table`) times their values. A query sees at least its own position's key.
pub fn naive_attention(
	q: &[f32],
	params: &AttentionParams,
	cache: &PagedKv<'_>,
	table: &[u32],
	positions: &[usize],
) -> Result<Vec<f64>, ShapeError> {
	let layout = cache.layout;
	let group = params.group(&layout)?;
	let hd = layout.head_dim;
	if q.len() != positions.len() * params.num_heads * hd {
		return Err(ShapeError(format!(
			"q of {} values for {} positions, {} heads of {hd}",
			q.len(),
			positions.len(),
			params.num_heads
		)));
	}
	let end = positions.iter().map(|&p| p + 1).max().unwrap_or(0);
	cache.check_table(table, end)?;
	let mut out = vec![0f64; q.len()];
	for (i, &pos) in positions.iter().enumerate() {
		for h in 0..params.num_heads {
			let kv_head = h / group;
			let q_row = &q[(i * params.num_heads + h) * hd..][..hd];
			let keys = params.first_visible(pos)..pos + 1;
			let logits: Vec<f64> = keys
				.clone()
				.map(|key| {
					let k = cache.key(table, key, kv_head);
					let dot: f64 = q_row.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
					dot * params.scale as f64
				})
				.collect();
			let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l));
			let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
			let total: f64 = weights.iter().sum();
			let o = &mut out[(i * params.num_heads + h) * hd..][..hd];
			for (key, w) in keys.zip(&weights) {
				for (o, &v) in o.iter_mut().zip(cache.value(table, key, kv_head)) {
					*o += w / total * v as f64;
				}
			}
		}
	}
	Ok(out)
}

/// A dot product in the GPU's order for one lane: sequential over the dimension.
fn dot(a: &[f32], b: &[f32]) -> f32 {
	a.iter().zip(b).fold(0f32, |s, (&x, &y)| s + x * y)
}

#[cfg(test)]
mod tests {
	use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

	use super::*;

	fn random(rng: &mut StdRng, n: usize, amplitude: f32) -> Vec<f32> {
		(0..n).map(|_| rng.random_range(-amplitude..amplitude)).collect()
	}

	/// Random caches of `num_blocks` blocks and, for each length, a table of distinct blocks in
	/// shuffled order covering it.
	fn caches(
		rng: &mut StdRng,
		layout: KvLayout,
		lens: &[usize],
	) -> (Vec<f32>, Vec<f32>, Vec<Vec<u32>>) {
		let per_seq: Vec<usize> = lens.iter().map(|l| l.div_ceil(layout.block_size)).collect();
		let num_blocks = per_seq.iter().sum::<usize>() + 3;
		let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
		ids.shuffle(rng);
		let mut tables = Vec::new();
		let mut next = 0;
		for n in per_seq {
			tables.push(ids[next..next + n].to_vec());
			next += n;
		}
		let len = num_blocks * layout.block_len();
		(random(rng, len, 1.0), random(rng, len, 1.0), tables)
	}

	fn assert_close(got: &[f32], want: &[f64], what: &str) {
		assert_eq!(got.len(), want.len(), "{what}");
		for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
			let err = (g as f64 - w).abs();
			assert!(err <= 1e-5 * (1.0 + w.abs()), "{what}: element {i} is {g}, expected {w}");
		}
	}

	#[test]
	fn decode_matches_the_textbook_softmax_over_many_shapes() {
		let mut rng = StdRng::seed_from_u64(11);
		for head_dim in [16, 64, 80, 128] {
			for group in [1, 3, 4] {
				for block_size in [1, 16] {
					let layout = KvLayout { block_size, num_kv_heads: 2, head_dim };
					let mut lens = vec![1, block_size + 1, 37, 1000];
					if block_size > 1 {
						lens.extend([block_size - 1, block_size]);
					}
					let (k, v, seq_tables) = caches(&mut rng, layout, &lens);
					let cache = PagedKv::new(&k, &v, layout).unwrap();
					let width = seq_tables.iter().map(Vec::len).max().unwrap() + 1;
					let mut flat = vec![u32::MAX; lens.len() * width];
					for (s, t) in seq_tables.iter().enumerate() {
						flat[s * width..s * width + t.len()].copy_from_slice(t);
					}
					let context_lens: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
					let tables = BlockTables {
						tables: &flat,
						max_blocks_per_seq: width,
						context_lens: &context_lens,
					};
					let num_heads = 2 * group;
					let q = random(&mut rng, lens.len() * num_heads * head_dim, 2.0);
					for window in [None, Some(1), Some(7), Some(300)] {
						let params = AttentionParams {
							num_heads,
							scale: 1.0 / (head_dim as f32).sqrt(),
							window,
						};
						for partition_size in [16, 256, 4096] {
							let mut out = vec![f32::NAN; q.len()];
							decode(&q, &params, &cache, &tables, partition_size, &mut out).unwrap();
							for (s, &len) in lens.iter().enumerate() {
								let row = num_heads * head_dim;
								let want = naive_attention(
									&q[s * row..(s + 1) * row],
									&params,
									&cache,
									&seq_tables[s],
									&[len - 1],
								)
								.unwrap();
								assert_close(
									&out[s * row..(s + 1) * row],
									&want,
									&format!(
										"decode hd {head_dim} group {group} bs {block_size} len \
										 {len} window {window:?} partition {partition_size}"
									),
								);
							}
						}
					}
				}
			}
		}
	}

	#[test]
	fn decode_of_an_empty_context_is_zero_and_the_window_changes_the_result() {
		let mut rng = StdRng::seed_from_u64(5);
		let layout = KvLayout { block_size: 4, num_kv_heads: 1, head_dim: 8 };
		let (k, v, seq_tables) = caches(&mut rng, layout, &[20]);
		let cache = PagedKv::new(&k, &v, layout).unwrap();
		let mut flat = seq_tables[0].clone();
		flat.extend(seq_tables[0].iter());
		let q = random(&mut rng, 16, 1.0);
		let tables = BlockTables { tables: &flat, max_blocks_per_seq: 5, context_lens: &[0, 20] };
		let causal = AttentionParams { num_heads: 1, scale: 0.3, window: None };
		let windowed = AttentionParams { window: Some(5), ..causal };
		let mut a = vec![f32::NAN; 16];
		let mut b = vec![f32::NAN; 16];
		decode(&q, &causal, &cache, &tables, 8, &mut a).unwrap();
		decode(&q, &windowed, &cache, &tables, 8, &mut b).unwrap();
		assert_eq!(a[..8], [0.0; 8]);
		assert_eq!(b[..8], [0.0; 8]);
		assert!(a[8..].iter().zip(&b[8..]).any(|(x, y)| (x - y).abs() > 1e-3));
	}

	#[test]
	fn prefill_matches_the_textbook_softmax_over_many_shapes() {
		let mut rng = StdRng::seed_from_u64(13);
		for head_dim in [16, 64, 80, 128] {
			for group in [1, 3, 4] {
				for block_size in [1, 16] {
					let layout = KvLayout { block_size, num_kv_heads: 2, head_dim };
					let num_heads = 2 * group;
					for (start, num_tokens) in [(0, 1), (0, 33), (5, 7), (40, 100), (17, 16)] {
						let end = start + num_tokens;
						let (k, v, tables) = caches(&mut rng, layout, &[end]);
						let cache = PagedKv::new(&k, &v, layout).unwrap();
						let q = random(&mut rng, num_tokens * num_heads * head_dim, 2.0);
						let positions: Vec<usize> = (start..end).collect();
						for window in [None, Some(1), Some(6), Some(50)] {
							let params = AttentionParams {
								num_heads,
								scale: 1.0 / (head_dim as f32).sqrt(),
								window,
							};
							let want = naive_attention(&q, &params, &cache, &tables[0], &positions)
								.unwrap();
							for (query_rows, key_cols) in [(16, 32), (3, 5), (1, 1), (64, 64)] {
								let tiles = PrefillTiles { query_rows, key_cols };
								let mut out = vec![f32::NAN; q.len()];
								prefill(&q, &params, &cache, &tables[0], start, tiles, &mut out)
									.unwrap();
								assert_close(
									&out,
									&want,
									&format!(
										"prefill hd {head_dim} group {group} bs {block_size} \
										 start {start} n {num_tokens} window {window:?} {tiles:?}"
									),
								);
							}
						}
					}
				}
			}
		}
	}

	#[test]
	fn prefill_last_row_equals_decode_of_the_same_context() {
		let mut rng = StdRng::seed_from_u64(17);
		let layout = KvLayout { block_size: 16, num_kv_heads: 2, head_dim: 64 };
		let (k, v, tables) = caches(&mut rng, layout, &[70]);
		let cache = PagedKv::new(&k, &v, layout).unwrap();
		let params = AttentionParams { num_heads: 8, scale: 0.125, window: Some(40) };
		let q = random(&mut rng, 30 * 8 * 64, 2.0);
		let mut full = vec![0f32; q.len()];
		let tiles = PrefillTiles { query_rows: 16, key_cols: 32 };
		prefill(&q, &params, &cache, &tables[0], 40, tiles, &mut full).unwrap();
		let last = &q[29 * 512..];
		let mut one = vec![0f32; 512];
		let bt = BlockTables { tables: &tables[0], max_blocks_per_seq: 5, context_lens: &[70] };
		decode(last, &params, &cache, &bt, 32, &mut one).unwrap();
		for (a, b) in full[29 * 512..].iter().zip(&one) {
			assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
		}
	}

	#[test]
	fn write_kv_puts_rows_at_their_slots_and_skips_padding() {
		let mut rng = StdRng::seed_from_u64(19);
		let layout = KvLayout { block_size: 4, num_kv_heads: 3, head_dim: 5 };
		let num_blocks = 6;
		let mut k_cache = vec![0f32; num_blocks * layout.block_len()];
		let mut v_cache = vec![0f32; num_blocks * layout.block_len()];
		let slots = [9i64, -1, 0, 23, 5];
		let k = random(&mut rng, slots.len() * 15, 1.0);
		let v = random(&mut rng, slots.len() * 15, 1.0);
		write_kv(&mut k_cache, &mut v_cache, layout, &k, &v, &slots).unwrap();
		let mut written = 0;
		for (t, &slot) in slots.iter().enumerate() {
			if slot < 0 {
				continue;
			}
			let slot = slot as usize;
			for h in 0..3 {
				let at = layout.offset(slot / 4, slot % 4, h);
				assert_eq!(k_cache[at..at + 5], k[(t * 3 + h) * 5..][..5]);
				assert_eq!(v_cache[at..at + 5], v[(t * 3 + h) * 5..][..5]);
				written += 10;
			}
		}
		let nonzero = k_cache.iter().chain(&v_cache).filter(|&&x| x != 0.0).count();
		assert_eq!(nonzero, written, "nothing else written (the padding token included)");
	}

	#[test]
	fn shape_errors_are_reported() {
		let layout = KvLayout { block_size: 4, num_kv_heads: 2, head_dim: 8 };
		let k = vec![0f32; 3 * layout.block_len()];
		let cache = PagedKv::new(&k, &k, layout).unwrap();
		let params = AttentionParams { num_heads: 4, scale: 0.5, window: None };
		let q = vec![0f32; 4 * 8];
		let mut out = vec![0f32; 4 * 8];
		let table = [2u32, 0];
		let bt = |lens: &'static [u32]| BlockTables {
			tables: &table,
			max_blocks_per_seq: 2,
			context_lens: lens,
		};
		// The cache itself.
		assert!(PagedKv::new(&k[1..], &k[1..], layout).is_err());
		assert!(PagedKv::new(&k, &k[64..], layout).is_err());
		assert!(PagedKv::new(&k, &k, KvLayout { head_dim: 0, ..layout }).is_err());
		// Fine, then one thing wrong at a time.
		decode(&q, &params, &cache, &bt(&[8]), 4, &mut out).unwrap();
		assert!(decode(&q, &params, &cache, &bt(&[9]), 4, &mut out).is_err(), "table too short");
		let bad_heads = AttentionParams { num_heads: 3, ..params };
		assert!(decode(&q[..24], &bad_heads, &cache, &bt(&[8]), 4, &mut out[..24]).is_err());
		let no_window = AttentionParams { window: Some(0), ..params };
		assert!(decode(&q, &no_window, &cache, &bt(&[8]), 4, &mut out).is_err());
		assert!(decode(&q, &params, &cache, &bt(&[8]), 0, &mut out).is_err(), "partition 0");
		assert!(decode(&q[1..], &params, &cache, &bt(&[8]), 4, &mut out).is_err());
		assert!(decode(&q, &params, &cache, &bt(&[8]), 4, &mut out[1..]).is_err());
		assert!(decode(&q, &params, &cache, &bt(&[8, 8]), 4, &mut out).is_err(), "tables");
		let far = [2u32, 3];
		let bt_far = BlockTables { tables: &far, max_blocks_per_seq: 2, context_lens: &[8] };
		assert!(decode(&q, &params, &cache, &bt_far, 4, &mut out).is_err(), "block 3 of 3");
		let bt_near = BlockTables { tables: &far, max_blocks_per_seq: 2, context_lens: &[4] };
		decode(&q, &params, &cache, &bt_near, 4, &mut out).unwrap();

		let tiles = PrefillTiles { query_rows: 2, key_cols: 3 };
		prefill(&q, &params, &cache, &table, 7, tiles, &mut out).unwrap();
		assert!(prefill(&q, &params, &cache, &table, 8, tiles, &mut out).is_err(), "short");
		assert!(prefill(&q, &params, &cache, &table[..1], 0, tiles, &mut out).is_ok());
		assert!(prefill(&q, &params, &cache, &table[..1], 4, tiles, &mut out).is_err());
		let zero = PrefillTiles { query_rows: 0, key_cols: 3 };
		assert!(prefill(&q, &params, &cache, &table, 0, zero, &mut out).is_err());
		assert!(prefill(&q[..20], &params, &cache, &table, 0, tiles, &mut out[..20]).is_err());
		assert!(prefill(&q, &bad_heads, &cache, &table, 0, tiles, &mut out).is_err());
		assert!(naive_attention(&q, &params, &cache, &table, &[8]).is_err());
		assert!(naive_attention(&q, &params, &cache, &table, &[0, 1]).is_err());

		let mut kc = vec![0f32; 3 * layout.block_len()];
		let mut vc = kc.clone();
		let rows = vec![0f32; 2 * 16];
		write_kv(&mut kc, &mut vc, layout, &rows, &rows, &[11, -5]).unwrap();
		assert!(write_kv(&mut kc, &mut vc, layout, &rows, &rows, &[12, 0]).is_err(), "slot 12");
		assert!(write_kv(&mut kc, &mut vc, layout, &rows, &rows, &[3, 3]).is_err(), "twice");
		assert!(write_kv(&mut kc, &mut vc, layout, &rows, &rows, &[3]).is_err(), "rows");
		assert!(write_kv(&mut kc, &mut vc[1..], layout, &rows, &rows, &[1, 2]).is_err());
	}
}
