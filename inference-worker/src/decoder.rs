//! What the [`crate::engine::Engine`] needs of a model, so that one scheduler serves both
//! decoders: the candle decoder ([`Llama`]) and the decoder composed of kernel calls
//! ([`KernelLlama`], on the CPU references or on a GPU).
//!
//! The engine keeps the bookkeeping (which blocks of the paged KV cache each sequence holds,
//! which adapters are in host memory); a [`Decoder`] owns where keys, values and adapters live
//! while it computes, and runs one batch step. For [`KernelLlama`] that means the adapter
//! pool: an adapter is uploaded into the pool the first step a request needs it, stays resident
//! while it is used, and is evicted (least recently used first) only when another needs its
//! pages — the pool is one allocation of a fixed size, so no adapter holds device memory of its
//! own.

use std::collections::HashMap;

use openledger_kernels::{backend::Backend, sampling::SamplingParams as KernelSampling};

use crate::{
	config::LlamaConfig,
	error::{Error, Result},
	kernel_model::{DecodeInput, KernelAdapter, KernelCache, KernelLlama},
	kv_cache::{KvCacheConfig, KvStore, PagedKvCache, TensorStore},
	lora::{AdapterFiles, LoraAdapter},
	model::{Llama, SequenceInput},
	sampling::Sampled,
};

/// What a step should give back for one sequence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Want {
	/// Nothing: a prompt chunk before the last, whose logits are not needed.
	Nothing,
	/// The logits of its last token, for the host's sampler.
	Logits,
	/// The logits of every token it runs (for a prompt's log-probabilities; the last row is
	/// also the host sampler's).
	Rows,
	/// A token sampled where the logits are, by the kernels' sampler with these parameters and
	/// this uniform draw (only asked of a decoder that [`Decoder::samples`]).
	Token(KernelSampling, f32),
}

/// What a step gave back for one sequence.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
	/// Nothing was asked.
	Nothing,
	/// The logits `[vocab]`.
	Logits(Vec<f32>),
	/// The logits of every token run, in order (each `[vocab]`).
	Rows(Vec<Vec<f32>>),
	/// The token the kernels' sampler picked, and its log-probability.
	Sampled(Sampled),
}

/// A model the [`crate::engine::Engine`] can serve with.
pub trait Decoder: Send + Sync + 'static {
	/// Where its KV cache's keys and values live.
	type Store: KvStore + Send;
	/// The adapters resident where it computes, beyond the engine's adapter cache (one per
	/// engine).
	type Residency: Send;

	/// Its hyper-parameters.
	fn config(&self) -> &LlamaConfig;
	/// The most tokens (prompt and output) one sequence may reach.
	fn max_sequence(&self) -> usize;
	/// A paged KV cache of `kv`'s size.
	fn kv_cache(&self, kv: KvCacheConfig) -> Result<PagedKvCache<Self::Store>>;
	/// Room for adapters where it computes, of about `budget_bytes`.
	fn residency(&self, budget_bytes: usize) -> Result<Self::Residency>;
	/// Builds the adapter `name` for this model from its files.
	fn adapter_from_files(&self, name: &str, files: &AdapterFiles) -> Result<LoraAdapter>;
	/// Whether `adapters` (distinct) can all be resident for one step.
	fn adapters_fit(&self, residency: &Self::Residency, adapters: &[&LoraAdapter]) -> bool;
	/// Whether it samples tokens where its logits are (then a step takes [`Want::Token`]).
	fn samples(&self) -> bool;
	/// Runs one step of a batch of sequences (each its next tokens: a prompt chunk, or one
	/// decoded token), caching their keys and values in `cache` (blocks reserved beforehand, or
	/// here while the pool has room). Returns for each sequence what `wants` asks of it (a
	/// decoder may give logits where nothing was asked).
	fn step(
		&self,
		cache: &mut PagedKvCache<Self::Store>,
		residency: &mut Self::Residency,
		batch: &mut [SequenceInput<'_>],
		wants: &[Want],
	) -> Result<Vec<Next>>;
}

impl Decoder for Llama {
	type Store = TensorStore;
	/// Adapters are ready as loaded: the engine's adapter cache is where they live.
	type Residency = ();

	fn config(&self) -> &LlamaConfig {
		&self.config
	}

	fn max_sequence(&self) -> usize {
		self.config.context_length
	}

	fn kv_cache(&self, kv: KvCacheConfig) -> Result<PagedKvCache> {
		PagedKvCache::new(&self.config, kv, self.device())
	}

	fn residency(&self, _budget_bytes: usize) -> Result<()> {
		Ok(())
	}

	fn adapter_from_files(&self, name: &str, files: &AdapterFiles) -> Result<LoraAdapter> {
		Llama::adapter_from_files(self, name, files)
	}

	fn adapters_fit(&self, _residency: &(), _adapters: &[&LoraAdapter]) -> bool {
		true
	}

	fn samples(&self) -> bool {
		false
	}

	/// Always logits (the host samples): every row's for [`Want::Rows`], else the last one's.
	fn step(
		&self,
		cache: &mut PagedKvCache,
		_residency: &mut (),
		batch: &mut [SequenceInput<'_>],
		wants: &[Want],
	) -> Result<Vec<Next>> {
		for (seq, want) in batch.iter_mut().zip(wants) {
			seq.all_logits = *want == Want::Rows;
		}
		self.forward_batch(cache, batch)?
			.into_iter()
			.zip(wants)
			.map(|(logits, want)| match want {
				Want::Rows => Ok(Next::Rows(logits.to_vec2::<f32>()?)),
				_ => Ok(Next::Logits(logits.squeeze(0)?.to_vec1::<f32>()?)),
			})
			.collect()
	}
}

/// The adapters resident in a [`KernelLlama`]'s adapter pool.
pub struct KernelAdapters<B: Backend> {
	pool: B::Pool,
	num_pages: usize,
	/// By [`LoraAdapter::uid`].
	resident: HashMap<u64, Resident>,
	/// Counts steps; a resident adapter records the last step that used it.
	clock: u64,
	uploads: u64,
	evictions: u64,
}

struct Resident {
	adapter: KernelAdapter,
	last_used: u64,
}

impl<B: Backend> KernelAdapters<B> {
	/// Pages in the pool.
	pub fn num_pages(&self) -> usize {
		self.num_pages
	}

	/// Adapters resident now.
	pub fn resident(&self) -> usize {
		self.resident.len()
	}

	/// Adapters uploaded into the pool so far.
	pub fn uploads(&self) -> u64 {
		self.uploads
	}

	/// Adapters evicted from the pool so far to make room for others.
	pub fn evictions(&self) -> u64 {
		self.evictions
	}
}

impl<B: Backend> KernelLlama<B> {
	/// What `wants` asks of each row of `logits` (`[rows, vocab]`, on the backend). Tokens are
	/// always sampled on the backend (the rows that want none are sampled greedily alongside and
	/// dropped), so a row's token never depends on what shares its batch; only the rows that
	/// want their logits bring them back.
	fn next_tokens(&self, logits: &B::Floats, wants: &[Want]) -> Result<Vec<Next>> {
		let mut out = vec![Next::Nothing; wants.len()];
		if wants.iter().any(|w| matches!(w, Want::Token(..))) {
			let (params, uniform): (Vec<KernelSampling>, Vec<f32>) = wants
				.iter()
				.map(|w| match *w {
					Want::Token(params, u) => (params, u),
					_ => (KernelSampling::GREEDY, 0.0),
				})
				.unzip();
			let sampled = self.sample(logits, &params, &uniform)?;
			for ((slot, want), s) in out.iter_mut().zip(wants).zip(sampled) {
				if matches!(want, Want::Token(..)) {
					*slot = Next::Sampled(s.into());
				}
			}
		}
		let vocab = self.vocab();
		for (row, (slot, want)) in out.iter_mut().zip(wants).enumerate() {
			// Only the rows that want them cross the bus.
			match want {
				Want::Logits => {
					*slot = Next::Logits(self.backend().read_range(logits, row * vocab, vocab)?)
				}
				Want::Rows => {
					let row = self.backend().read_range(logits, row * vocab, vocab)?;
					*slot = Next::Rows(vec![row]);
				}
				Want::Nothing | Want::Token(..) => {}
			}
		}
		Ok(out)
	}

	/// Makes every adapter of `adapters` resident in `residency`'s pool, evicting the least
	/// recently used adapters that this step does not use while pages are short.
	fn make_resident(
		&self,
		residency: &mut KernelAdapters<B>,
		adapters: &[&LoraAdapter],
	) -> Result<()> {
		residency.clock += 1;
		let now = residency.clock;
		// Mark first what this step uses, so that no upload below evicts it.
		for adapter in adapters {
			if let Some(resident) = residency.resident.get_mut(&adapter.uid) {
				resident.last_used = now;
			}
		}
		for adapter in adapters {
			if residency.resident.contains_key(&adapter.uid) {
				continue;
			}
			let needed = self.pages_of(adapter);
			while self.backend().free_pages(&residency.pool) < needed {
				let victim = residency
					.resident
					.iter()
					.filter(|(_, r)| r.last_used < now)
					.min_by_key(|(_, r)| r.last_used)
					.map(|(&uid, _)| uid);
				let Some(evicted) = victim.and_then(|uid| residency.resident.remove(&uid)) else {
					return Err(Error::Adapter {
						name: adapter.name.clone(),
						reason: format!(
							"needs {needed} pages of the adapter pool; {} are free and every \
							 resident adapter serves this step",
							self.backend().free_pages(&residency.pool)
						),
					});
				};
				self.release_adapter(&mut residency.pool, &evicted.adapter)?;
				residency.evictions += 1;
			}
			let uploaded = self.upload_adapter(&mut residency.pool, adapter)?;
			tracing::debug!(adapter = %adapter.name, pages = needed, "adapter uploaded to the pool");
			residency.resident.insert(adapter.uid, Resident { adapter: uploaded, last_used: now });
			residency.uploads += 1;
		}
		Ok(())
	}
}

impl<B> Decoder for KernelLlama<B>
where
	B: Backend + Send + Sync + 'static,
	KernelLlama<B>: Send + Sync,
	KernelCache<B>: Send,
	B::Pool: Send,
{
	type Store = KernelCache<B>;
	type Residency = KernelAdapters<B>;

	fn config(&self) -> &LlamaConfig {
		&self.config
	}

	fn max_sequence(&self) -> usize {
		self.config.context_length.min(self.max_positions())
	}

	fn kv_cache(&self, kv: KvCacheConfig) -> Result<PagedKvCache<KernelCache<B>>> {
		PagedKvCache::with_store(kv, self.new_cache(kv.num_blocks, kv.block_size)?)
	}

	fn residency(&self, budget_bytes: usize) -> Result<KernelAdapters<B>> {
		let num_pages = budget_bytes / (self.page_len() * std::mem::size_of::<f32>());
		if num_pages == 0 {
			return Err(Error::Request(format!(
				"an adapter budget of {budget_bytes} bytes holds no page of {} floats",
				self.page_len()
			)));
		}
		Ok(KernelAdapters {
			pool: self.pool(num_pages)?,
			num_pages,
			resident: HashMap::new(),
			clock: 0,
			uploads: 0,
			evictions: 0,
		})
	}

	fn adapter_from_files(&self, name: &str, files: &AdapterFiles) -> Result<LoraAdapter> {
		KernelLlama::adapter_from_files(self, name, files)
	}

	fn adapters_fit(&self, residency: &KernelAdapters<B>, adapters: &[&LoraAdapter]) -> bool {
		self.pages_of_all(adapters) <= residency.num_pages
	}

	fn samples(&self) -> bool {
		true
	}

	/// Sequences with one new token decode together in one batch (paged decode attention,
	/// multi-LoRA BGMV); each prompt chunk is a prefill of its own (flash attention over the
	/// cache, SGMV). Tokens are sampled on the backend, and logits come back only for the
	/// sequences that want them (see `next_tokens`).
	fn step(
		&self,
		cache: &mut PagedKvCache<KernelCache<B>>,
		residency: &mut KernelAdapters<B>,
		batch: &mut [SequenceInput<'_>],
		wants: &[Want],
	) -> Result<Vec<Next>> {
		if batch.iter().any(|s| s.tokens.is_empty()) {
			return Err(Error::Request("a sequence has no tokens to run".into()));
		}
		if wants.len() != batch.len() {
			return Err(Error::Request(format!(
				"{} wants for {} sequences",
				wants.len(),
				batch.len()
			)));
		}
		let mut adapters: Vec<&LoraAdapter> = Vec::new();
		for adapter in batch.iter().filter_map(|s| s.adapter) {
			if !adapters.iter().any(|a| a.uid == adapter.uid) {
				adapters.push(adapter);
			}
		}
		self.make_resident(residency, &adapters)?;
		for seq in batch.iter_mut() {
			cache.reserve(seq.table, seq.tokens.len())?;
		}
		let resident = |seq: &SequenceInput<'_>| -> Option<&KernelAdapter> {
			seq.adapter.and_then(|a| residency.resident.get(&a.uid)).map(|r| &r.adapter)
		};
		let mut out = vec![Next::Nothing; batch.len()];
		let decoding: Vec<usize> =
			(0..batch.len()).filter(|&i| batch[i].tokens.len() == 1).collect();
		if !decoding.is_empty() {
			let inputs: Vec<DecodeInput<'_>> = decoding
				.iter()
				.map(|&i| DecodeInput {
					token: batch[i].tokens[0],
					position: batch[i].table.len(),
					table: batch[i].table.blocks(),
					adapter: resident(&batch[i]),
				})
				.collect();
			let logits = self.decode(cache.store_mut(), &inputs, Some(&residency.pool))?;
			let rows: Vec<Want> = decoding.iter().map(|&i| wants[i]).collect();
			for (&i, next) in decoding.iter().zip(self.next_tokens(&logits, &rows)?) {
				out[i] = next;
			}
		}
		for (i, seq) in batch.iter().enumerate() {
			if seq.tokens.len() > 1 {
				let adapter = resident(seq).map(|a| (&residency.pool, a));
				let (store, start, blocks) =
					(cache.store_mut(), seq.table.len(), seq.table.blocks());
				out[i] = match wants[i] {
					Want::Rows => {
						Next::Rows(self.prefill_rows(store, seq.tokens, start, blocks, adapter)?)
					}
					want => {
						let logits = self.prefill(store, seq.tokens, start, blocks, adapter)?;
						self.next_tokens(&logits, &[want])?.remove(0)
					}
				};
			}
		}
		for seq in batch.iter_mut() {
			cache.commit(seq.table, seq.tokens);
		}
		Ok(out)
	}
}
