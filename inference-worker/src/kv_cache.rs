//! The paged key/value cache: one pool of fixed-size blocks per model, shared by every sequence.
//!
//! - Each layer's keys and values live in two pool tensors of `num_blocks * block_size` token
//!   slots (`[slots, kv_heads * head_dim]`), allocated once from a byte budget, on the model's
//!   device. A sequence owns no memory of its own: its [`BlockTable`] lists the blocks that hold
//!   its tokens, in order.
//! - The [`BlockAllocator`] hands out blocks and counts their references. A full block is
//!   registered under the hash of every token up to its end (and of the adapter, which changes
//!   keys and values), so a later request with the same prefix — the same prompt template —
//!   reuses those blocks instead of computing them again (prefix sharing). Blocks nobody
//!   references stay cached until their room is needed, least recently released first.
//! - A shared block is never written: a sequence about to append to a block it shares (after
//!   [`PagedKvCache::fork`]) gets its own copy first (copy on write).
//!
//! The bookkeeping is the same wherever the keys and values live (a [`KvStore`]): in candle
//! tensors ([`TensorStore`]), where attention gathers a sequence's slots into contiguous
//! tensors, or in a kernel backend's buffers, where the attention kernels read the block
//! tables directly. Both see the same pool layout.

use std::{
	collections::{BTreeMap, HashMap},
	hash::{Hash, Hasher},
};

use candle_core::{DType, Device, Tensor};

use crate::{
	config::LlamaConfig,
	error::{Error, Result},
};

/// Index of a block in the pool.
pub type BlockId = u32;

/// How big the pool is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheConfig {
	/// Tokens per block.
	pub block_size: usize,
	/// Blocks in the pool.
	pub num_blocks: usize,
}

impl KvCacheConfig {
	/// The default block size (tokens), as in vLLM.
	pub const DEFAULT_BLOCK_SIZE: usize = 16;

	/// Bytes one block takes over all layers (keys and values, f32).
	pub fn bytes_per_block(model: &LlamaConfig, block_size: usize) -> usize {
		model.num_layers
			* 2 * block_size
			* model.num_kv_heads
			* model.head_dim
			* DType::F32.size_in_bytes()
	}

	/// As many blocks of `block_size` tokens as fit in `budget_bytes`.
	pub fn for_budget(model: &LlamaConfig, block_size: usize, budget_bytes: usize) -> Result<Self> {
		if block_size == 0 {
			return Err(Error::Request("the KV cache block size must be at least 1".into()));
		}
		let per_block = Self::bytes_per_block(model, block_size);
		let num_blocks = budget_bytes / per_block.max(1);
		if num_blocks == 0 {
			return Err(Error::Request(format!(
				"a KV cache budget of {budget_bytes} bytes holds no block of {per_block} bytes"
			)));
		}
		Ok(Self { block_size, num_blocks })
	}

	/// Enough blocks for `tokens` tokens of one sequence.
	pub fn for_tokens(tokens: usize, block_size: usize) -> Self {
		let block_size = block_size.max(1);
		Self { block_size, num_blocks: tokens.div_ceil(block_size).max(1) }
	}
}

/// Hands out blocks, counts references, and remembers full blocks by the hash of their prefix.
#[derive(Debug)]
pub struct BlockAllocator {
	refs: Vec<u32>,
	/// Unreferenced blocks that hold nothing worth keeping.
	free: Vec<BlockId>,
	/// The prefix hash each full block is registered under.
	hash_of: Vec<Option<u64>>,
	/// Registered blocks by prefix hash.
	by_hash: HashMap<u64, BlockId>,
	/// Unreferenced registered blocks, by when they were released (oldest first).
	evictable: BTreeMap<u64, BlockId>,
	released_at: Vec<u64>,
	clock: u64,
	/// Blocks reused through their prefix hash.
	pub prefix_hits: u64,
}

impl BlockAllocator {
	/// An allocator of `num_blocks` blocks, all free.
	pub fn new(num_blocks: usize) -> Self {
		Self {
			refs: vec![0; num_blocks],
			free: (0..num_blocks as BlockId).rev().collect(),
			hash_of: vec![None; num_blocks],
			by_hash: HashMap::new(),
			evictable: BTreeMap::new(),
			released_at: vec![0; num_blocks],
			clock: 0,
			prefix_hits: 0,
		}
	}

	/// Blocks that can be allocated now (free, or cached and unreferenced).
	pub fn available(&self) -> usize {
		self.free.len() + self.evictable.len()
	}

	/// Blocks in the pool.
	pub fn capacity(&self) -> usize {
		self.refs.len()
	}

	/// References to `block`.
	pub fn refs(&self, block: BlockId) -> u32 {
		self.refs.get(block as usize).copied().unwrap_or(0)
	}

	/// A block for one owner: a free one, else the least recently released cached one.
	pub fn allocate(&mut self) -> Option<BlockId> {
		let block = match self.free.pop() {
			Some(block) => block,
			None => {
				let (_, block) = self.evictable.pop_first()?;
				if let Some(hash) = self.hash_of[block as usize].take() {
					self.by_hash.remove(&hash);
				}
				block
			}
		};
		self.refs[block as usize] = 1;
		Some(block)
	}

	/// One more owner of `block` (a fork, or a prefix reused).
	pub fn retain(&mut self, block: BlockId) {
		let i = block as usize;
		if self.refs[i] == 0 {
			self.evictable.remove(&self.released_at[i]);
		}
		self.refs[i] += 1;
	}

	/// One owner less; a block nobody owns becomes free, or evictable if it is registered.
	pub fn release(&mut self, block: BlockId) {
		let i = block as usize;
		if self.refs[i] == 0 {
			return;
		}
		self.refs[i] -= 1;
		if self.refs[i] == 0 {
			if self.hash_of[i].is_some() {
				self.clock += 1;
				self.released_at[i] = self.clock;
				self.evictable.insert(self.clock, block);
			} else {
				self.free.push(block);
			}
		}
	}

	/// Registers a full `block` under its prefix `hash` (unless another block already is).
	pub fn register(&mut self, block: BlockId, hash: u64) {
		if self.hash_of[block as usize].is_none() && !self.by_hash.contains_key(&hash) {
			self.hash_of[block as usize] = Some(hash);
			self.by_hash.insert(hash, block);
		}
	}

	/// The block registered under `hash`, retained for the caller.
	pub fn lookup(&mut self, hash: u64) -> Option<BlockId> {
		let block = *self.by_hash.get(&hash)?;
		self.retain(block);
		self.prefix_hits += 1;
		Some(block)
	}
}

/// The blocks holding one sequence's tokens.
#[derive(Clone, Debug, Default)]
pub struct BlockTable {
	blocks: Vec<BlockId>,
	/// Every token whose keys and values are cached, in order.
	tokens: Vec<u32>,
	/// Prefix hash at the end of each full block.
	hashes: Vec<u64>,
	/// What besides the tokens decides the keys and values (the adapter), hashed in.
	salt: u64,
}

impl BlockTable {
	/// An empty table for a sequence served with the adapter identified by `salt` (0: base).
	pub fn new(salt: u64) -> Self {
		Self { salt, ..Self::default() }
	}

	/// Tokens cached.
	pub fn len(&self) -> usize {
		self.tokens.len()
	}

	/// Whether nothing is cached.
	pub fn is_empty(&self) -> bool {
		self.tokens.is_empty()
	}

	/// The blocks, in token order.
	pub fn blocks(&self) -> &[BlockId] {
		&self.blocks
	}

	fn chain(previous: u64, salt: u64, tokens: &[u32]) -> u64 {
		let mut hasher = std::collections::hash_map::DefaultHasher::new();
		(previous, salt, tokens).hash(&mut hasher);
		hasher.finish()
	}
}

/// Where a [`PagedKvCache`]'s keys and values live: candle tensors ([`TensorStore`]) or a
/// kernel backend's buffers (`kernel_model::KernelCache`).
pub trait KvStore {
	/// Copies block `from` over block `to`, in every layer (copy on write of a shared block).
	fn copy_block(&mut self, from: BlockId, to: BlockId) -> Result<()>;
}

/// Keys and values in candle tensors: per layer, `[num_blocks * block_size, kv_heads *
/// head_dim]` on the model's device.
#[derive(Debug)]
pub struct TensorStore {
	block_size: usize,
	width: usize,
	/// Per layer: keys and values.
	layers: Vec<(Tensor, Tensor)>,
}

impl KvStore for TensorStore {
	fn copy_block(&mut self, from: BlockId, to: BlockId) -> Result<()> {
		let bs = self.block_size;
		for (k, v) in &self.layers {
			for pool in [k, v] {
				let rows = pool.narrow(0, from as usize * bs, bs)?.copy()?;
				pool.slice_set(&rows, 0, to as usize * bs)?;
			}
		}
		Ok(())
	}
}

/// The pool of key/value blocks of every layer, and its allocator.
#[derive(Debug)]
pub struct PagedKvCache<S = TensorStore> {
	config: KvCacheConfig,
	store: S,
	allocator: BlockAllocator,
}

impl PagedKvCache<TensorStore> {
	/// Allocates the pool for `model` on `device`.
	pub fn new(model: &LlamaConfig, config: KvCacheConfig, device: &Device) -> Result<Self> {
		let width = model.num_kv_heads * model.head_dim;
		let slots = config.num_blocks * config.block_size;
		let layers = (0..model.num_layers)
			.map(|_| {
				Ok((
					Tensor::zeros((slots, width), DType::F32, device)?,
					Tensor::zeros((slots, width), DType::F32, device)?,
				))
			})
			.collect::<Result<Vec<_>>>()?;
		let store = TensorStore { block_size: config.block_size, width, layers };
		Self::with_store(config, store)
	}

	/// Writes the keys and values (`[t, kv_width]`) of tokens `start..start + t` of `table` in
	/// `layer` (the blocks must be reserved).
	pub fn write(
		&self,
		layer: usize,
		table: &BlockTable,
		start: usize,
		k: &Tensor,
		v: &Tensor,
	) -> Result<()> {
		let (t, width) = k.dims2()?;
		if width != self.store.width || start + t > table.blocks.len() * self.config.block_size {
			return Err(Error::Request(format!(
				"cannot write {t} tokens of width {width} at {start}: the table holds {} blocks",
				table.blocks.len()
			)));
		}
		let (pool_k, pool_v) = &self.store.layers[layer];
		let bs = self.config.block_size;
		let mut i = 0;
		while i < t {
			let pos = start + i;
			let run = (bs - pos % bs).min(t - i);
			let slot = table.blocks[pos / bs] as usize * bs + pos % bs;
			pool_k.slice_set(&k.narrow(0, i, run)?.contiguous()?, 0, slot)?;
			pool_v.slice_set(&v.narrow(0, i, run)?.contiguous()?, 0, slot)?;
			i += run;
		}
		Ok(())
	}

	/// The keys and values of `layer` at `slots` (see [`PagedKvCache::slots`]), `[n, kv_width]`.
	pub fn gather(&self, layer: usize, slots: &Tensor) -> Result<(Tensor, Tensor)> {
		let (k, v) = &self.store.layers[layer];
		Ok((k.index_select(slots, 0)?, v.index_select(slots, 0)?))
	}
}

impl<S: KvStore> PagedKvCache<S> {
	/// A pool of `config.num_blocks` blocks whose keys and values live in `store` (which must
	/// hold that many blocks of `config.block_size` tokens).
	pub fn with_store(config: KvCacheConfig, store: S) -> Result<Self> {
		if config.block_size == 0 || config.num_blocks == 0 {
			return Err(Error::Request(
				"the KV cache needs at least one block of one token".into(),
			));
		}
		Ok(Self { config, store, allocator: BlockAllocator::new(config.num_blocks) })
	}

	/// Where the keys and values live.
	pub fn store(&self) -> &S {
		&self.store
	}

	/// Where the keys and values live, to write them.
	pub fn store_mut(&mut self) -> &mut S {
		&mut self.store
	}

	/// Its size.
	pub fn config(&self) -> KvCacheConfig {
		self.config
	}

	/// The allocator (for statistics).
	pub fn allocator(&self) -> &BlockAllocator {
		&self.allocator
	}

	/// Blocks a sequence of `tokens` tokens occupies.
	pub fn blocks_for(&self, tokens: usize) -> usize {
		tokens.div_ceil(self.config.block_size)
	}

	/// Reuses cached blocks for the longest block-aligned prefix of `prompt` (always leaving at
	/// least its last token to compute, whose logits are needed). `table` must be empty.
	/// Returns how many tokens are now cached.
	pub fn reuse_prefix(&mut self, table: &mut BlockTable, prompt: &[u32]) -> usize {
		if !table.is_empty() {
			return table.len();
		}
		let bs = self.config.block_size;
		let mut previous = 0;
		for chunk in prompt[..prompt.len().saturating_sub(1)].chunks_exact(bs) {
			let hash = BlockTable::chain(previous, table.salt, chunk);
			let Some(block) = self.allocator.lookup(hash) else { break };
			table.blocks.push(block);
			table.tokens.extend_from_slice(chunk);
			table.hashes.push(hash);
			previous = hash;
		}
		table.len()
	}

	/// Blocks that `table` still needs to take `new_tokens` more tokens (a copy of a shared
	/// last block counts as one).
	pub fn blocks_needed(&self, table: &BlockTable, new_tokens: usize) -> usize {
		let bs = self.config.block_size;
		let needed = self.blocks_for(table.len() + new_tokens).saturating_sub(table.blocks.len());
		let copy = !table.len().is_multiple_of(bs)
			&& new_tokens > 0
			&& table.blocks.last().is_some_and(|&b| self.allocator.refs(b) > 1);
		needed + usize::from(copy)
	}

	/// Blocks that can be allocated now.
	pub fn available_blocks(&self) -> usize {
		self.allocator.available()
	}

	/// Makes room in `table` for `new_tokens` more tokens: copies a shared last block that
	/// would be written (copy on write) and allocates new blocks. Either all of it happens or,
	/// when the pool runs out, nothing does.
	pub fn reserve(&mut self, table: &mut BlockTable, new_tokens: usize) -> Result<()> {
		let needed = self.blocks_needed(table, new_tokens);
		if needed == 0 {
			return Ok(());
		}
		if needed > self.allocator.available() {
			return Err(Error::CacheFull { needed, available: self.allocator.available() });
		}
		let bs = self.config.block_size;
		if !table.len().is_multiple_of(bs) && new_tokens > 0 {
			if let Some(last) = table.blocks.last_mut() {
				if self.allocator.refs(*last) > 1 {
					let copy = self
						.allocator
						.allocate()
						.ok_or(Error::CacheFull { needed, available: 0 })?;
					if let Err(e) = self.store.copy_block(*last, copy) {
						self.allocator.release(copy);
						return Err(e);
					}
					self.allocator.release(*last);
					*last = copy;
				}
			}
		}
		while table.blocks.len() < self.blocks_for(table.len() + new_tokens) {
			let block =
				self.allocator.allocate().ok_or(Error::CacheFull { needed, available: 0 })?;
			table.blocks.push(block);
		}
		Ok(())
	}

	/// Pool slots of tokens `from..to` of `table`.
	pub fn slots(&self, table: &BlockTable, from: usize, to: usize) -> Vec<u32> {
		let bs = self.config.block_size;
		(from..to).map(|i| table.blocks[i / bs] * bs as u32 + (i % bs) as u32).collect()
	}

	/// Records that `tokens` were written at the end of `table`, registering each block they
	/// fill for prefix sharing.
	pub fn commit(&mut self, table: &mut BlockTable, tokens: &[u32]) {
		let bs = self.config.block_size;
		table.tokens.extend_from_slice(tokens);
		while table.hashes.len() < table.tokens.len() / bs {
			let n = table.hashes.len();
			let previous = table.hashes.last().copied().unwrap_or(0);
			let hash = BlockTable::chain(previous, table.salt, &table.tokens[n * bs..(n + 1) * bs]);
			table.hashes.push(hash);
			self.allocator.register(table.blocks[n], hash);
		}
	}

	/// A second sequence sharing every block of `table` (for several completions of one
	/// prompt); the first write to a shared block copies it.
	pub fn fork(&mut self, table: &BlockTable) -> BlockTable {
		for &block in &table.blocks {
			self.allocator.retain(block);
		}
		table.clone()
	}

	/// Gives back every block of `table` and empties it.
	pub fn free(&mut self, table: &mut BlockTable) {
		for block in table.blocks.drain(..) {
			self.allocator.release(block);
		}
		table.tokens.clear();
		table.hashes.clear();
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	fn cache(blocks: usize, bs: usize) -> PagedKvCache {
		let cfg = LlamaConfig::tiny(crate::config::RopeLayout::Interleaved);
		PagedKvCache::new(&cfg, KvCacheConfig { block_size: bs, num_blocks: blocks }, &Device::Cpu)
			.unwrap()
	}

	fn rows(t: usize, width: usize, base: f32) -> Tensor {
		let data: Vec<f32> = (0..t * width).map(|i| base + i as f32).collect();
		Tensor::from_vec(data, (t, width), &Device::Cpu).unwrap()
	}

	#[test]
	fn allocator_reuses_released_blocks_and_evicts_cached_ones_oldest_first() {
		let mut a = BlockAllocator::new(3);
		let (b0, b1, b2) = (a.allocate().unwrap(), a.allocate().unwrap(), a.allocate().unwrap());
		assert_eq!(a.allocate(), None);
		a.register(b0, 10);
		a.register(b1, 11);
		a.release(b1);
		a.release(b0);
		assert_eq!(a.available(), 2);
		// b1 was released first: it is evicted first, and forgotten.
		assert_eq!(a.allocate(), Some(b1));
		assert_eq!(a.lookup(11), None);
		// b0 is still cached: looking it up takes it back out of the evictable set.
		assert_eq!(a.lookup(10), Some(b0));
		assert_eq!(a.refs(b0), 1);
		assert_eq!(a.available(), 0);
		a.release(b2);
		assert_eq!(a.allocate(), Some(b2));
	}

	#[test]
	fn reserve_is_all_or_nothing() {
		let mut c = cache(3, 4);
		let mut a = BlockTable::new(0);
		c.reserve(&mut a, 9).unwrap();
		assert_eq!(a.blocks().len(), 3);
		let mut b = BlockTable::new(0);
		let err = c.reserve(&mut b, 1).unwrap_err();
		assert!(matches!(err, Error::CacheFull { needed: 1, available: 0 }), "{err}");
		assert!(b.blocks().is_empty());
		c.free(&mut a);
		assert_eq!(c.available_blocks(), 3);
		c.reserve(&mut b, 12).unwrap();
		assert_eq!(c.available_blocks(), 0);
	}

	#[test]
	fn written_rows_are_gathered_back_across_block_boundaries() {
		let mut c = cache(4, 3);
		let width = c.store.width;
		let mut table = BlockTable::new(0);
		c.reserve(&mut table, 5).unwrap();
		let (k, v) = (rows(5, width, 0.0), rows(5, width, 1000.0));
		for layer in 0..2 {
			c.write(layer, &table, 0, &k, &v).unwrap();
		}
		c.commit(&mut table, &[1, 2, 3, 4, 5]);
		c.reserve(&mut table, 2).unwrap();
		let (k2, v2) = (rows(2, width, 500.0), rows(2, width, 1500.0));
		c.write(1, &table, 5, &k2, &v2).unwrap();
		let slots = Tensor::new(c.slots(&table, 0, 7).as_slice(), &Device::Cpu).unwrap();
		let (gk, gv) = c.gather(1, &slots).unwrap();
		let want_k = Tensor::cat(&[&k, &k2], 0).unwrap();
		let want_v = Tensor::cat(&[&v, &v2], 0).unwrap();
		assert_eq!(gk.to_vec2::<f32>().unwrap(), want_k.to_vec2::<f32>().unwrap());
		assert_eq!(gv.to_vec2::<f32>().unwrap(), want_v.to_vec2::<f32>().unwrap());
	}

	#[test]
	fn a_shared_prefix_is_reused_only_with_the_same_tokens_and_adapter() {
		let mut c = cache(8, 2);
		let prompt = [5, 6, 7, 8, 9];
		let mut first = BlockTable::new(7);
		c.reserve(&mut first, prompt.len()).unwrap();
		c.commit(&mut first, &prompt);
		// Two full blocks are registered; the last token is never taken from the cache.
		let mut same = BlockTable::new(7);
		assert_eq!(c.reuse_prefix(&mut same, &prompt), 4);
		assert_eq!(same.blocks(), &first.blocks()[..2]);
		assert_eq!(c.allocator().refs(first.blocks()[0]), 2);
		let mut exact = BlockTable::new(7);
		assert_eq!(c.reuse_prefix(&mut exact, &prompt[..4]), 2, "the last token is computed");
		let mut other_adapter = BlockTable::new(8);
		assert_eq!(c.reuse_prefix(&mut other_adapter, &prompt), 0);
		let mut other_start = BlockTable::new(7);
		assert_eq!(c.reuse_prefix(&mut other_start, &[5, 0, 7, 8, 9]), 0);
		let mut diverging = BlockTable::new(7);
		assert_eq!(c.reuse_prefix(&mut diverging, &[5, 6, 0, 8, 9]), 2);
		// Freed, the blocks stay cached for the next request.
		for t in [&mut first, &mut same, &mut exact, &mut diverging] {
			c.free(t);
		}
		let mut later = BlockTable::new(7);
		assert_eq!(c.reuse_prefix(&mut later, &prompt), 4);
	}

	#[test]
	fn a_forked_sequence_copies_the_shared_block_before_writing_it() {
		let mut c = cache(4, 4);
		let width = c.store.width;
		let mut parent = BlockTable::new(0);
		c.reserve(&mut parent, 3).unwrap();
		let k = rows(3, width, 0.0);
		c.write(0, &parent, 0, &k, &k).unwrap();
		c.commit(&mut parent, &[1, 2, 3]);
		let mut child = c.fork(&parent);
		assert_eq!(c.allocator().refs(parent.blocks()[0]), 2);
		assert_eq!(c.blocks_needed(&child, 1), 1);
		c.reserve(&mut child, 1).unwrap();
		assert_ne!(child.blocks()[0], parent.blocks()[0]);
		assert_eq!(c.allocator().refs(parent.blocks()[0]), 1);
		// The copy holds the parent's rows; writing the child's 4th token leaves the parent's
		// block alone.
		let new = rows(1, width, -1.0);
		c.write(0, &child, 3, &new, &new).unwrap();
		let slots = |t: &BlockTable| Tensor::new(c.slots(t, 0, 3).as_slice(), &Device::Cpu);
		let (pk, _) = c.gather(0, &slots(&parent).unwrap()).unwrap();
		let (ck, _) = c.gather(0, &slots(&child).unwrap()).unwrap();
		assert_eq!(pk.to_vec2::<f32>().unwrap(), k.to_vec2::<f32>().unwrap());
		assert_eq!(ck.to_vec2::<f32>().unwrap(), k.to_vec2::<f32>().unwrap());
		// The parent can still append in place: it is the only owner of its block now.
		assert_eq!(c.blocks_needed(&parent, 1), 0);
	}

	#[test]
	fn budgets_that_hold_no_block_are_refused() {
		let cfg = LlamaConfig::tiny(crate::config::RopeLayout::Interleaved);
		let per_block = KvCacheConfig::bytes_per_block(&cfg, 16);
		assert!(KvCacheConfig::for_budget(&cfg, 16, per_block - 1).is_err());
		assert!(KvCacheConfig::for_budget(&cfg, 0, 1 << 30).is_err());
		assert_eq!(KvCacheConfig::for_budget(&cfg, 16, 3 * per_block).unwrap().num_blocks, 3);
	}
}
