//! Continuous batching: many requests, each with its own adapter or none, served together.
//!
//! Every [`Engine::step`] runs one batch through the model: the running sequences' next tokens
//! (one each at decode, a chunk of the prompt at prefill) in a single [`Decoder::step`]. The
//! model is any [`Decoder`]: the candle decoder ([`Llama`], the default) or the decoder
//! composed of kernel calls (`KernelLlama`, on the CPU references or a GPU), whose adapters
//! also have to be resident in its adapter pool. Requests join at any step, as soon as their adapter is in memory
//! and the paged KV cache has room for their prompt, and leave as soon as they finish.
//!
//! - **Admission**: waiting requests are taken in arrival order, skipping those whose adapter
//!   is still loading (a load runs on the loader thread and never holds up a step). A prompt
//!   whose first blocks are cached (the same prompt template, the same adapter, the same
//!   `cache_salt` or none) reuses them.
//!   Long prompts are prefilled in chunks of the step's token budget.
//! - **Preemption**: when a running sequence needs a block and none is free, the most recently
//!   admitted sequence gives its blocks back and waits again; when readmitted it recomputes its
//!   prompt and output so far (its full blocks are often still cached) and carries on exactly
//!   where it was, sampler state included.
//! - **Adapters**: an adapter is loaded (on the loader thread) the first time a request names
//!   it and kept in the adapter cache, least recently used out first. A decoder with an adapter
//!   pool uploads it the first step it serves and evicts others only for room; a request joins
//!   a batch only while the batch's adapters fit the pool together (and while one waits for
//!   room, later requests join only with adapters already in the batch, so it is not starved),
//!   and one whose adapter could never fit fails with a clear error.
//! - **Overload**: at most `max_waiting` requests wait; more get [`Error::Overloaded`] at once.
//! - **Cancellation**: [`Engine::cancel`] drops a waiting or running request (its client went
//!   away) and gives its blocks back at once.
//! - **Failure**: a step that fails ends the requests of that batch with the error and frees
//!   their blocks; the engine and every other request carry on.

use std::{
	collections::{HashMap, VecDeque},
	hash::{Hash, Hasher},
	sync::{mpsc, Arc},
};

use crate::{
	adapter_cache::AdapterCache,
	decoder::{Decoder, Next, Want},
	error::{Error, Result},
	generate::{validate, Generation, GenerationRequest, Progress},
	kv_cache::{BlockTable, KvCacheConfig, PagedKvCache},
	lora::{AdapterSource, LoraAdapter},
	model::{Llama, SequenceInput},
	tokenizer::Tokenizer,
};

/// Identifies a request submitted to an [`Engine`].
pub type RequestId = u64;

/// The most prompt tokens one step runs, together, of the sequences whose prompt's
/// log-probabilities are asked for, from the first position whose log-probability is wanted:
/// every row's logits come back (`[tokens, vocab]` floats), so the rows one step brings back
/// stay few (a running one gets at least one token a step). The prompt before that position
/// runs in chunks of its own, with no rows.
pub const PROMPT_LOGITS_CHUNK: usize = 128;

/// The engine's limits.
#[derive(Clone, Debug)]
pub struct EngineConfig {
	/// Bytes of the paged KV cache.
	pub kv_cache_bytes: usize,
	/// Tokens per KV block.
	pub block_size: usize,
	/// Most tokens one step runs (prompt chunks plus one per decoding sequence).
	pub max_batch_tokens: usize,
	/// Most sequences in one step.
	pub max_running: usize,
	/// Most requests waiting to start; beyond it requests are refused as overloaded.
	pub max_waiting: usize,
	/// Bytes of loaded adapter weights kept ready to serve: the device tier of the candle
	/// decoder, which serves from them; host memory for the kernel decoder, which uploads
	/// them to its adapter pool.
	pub adapter_bytes: usize,
	/// Bytes of the kernel decoder's adapter pool (device memory on a GPU), allocated up front;
	/// it must hold at least one page. An adapter takes its `f32` weights' bytes there and at
	/// most about 1% more for common widths (nothing more for SmolLM2; see
	/// `KernelLlama::page_len`). Decoders without a pool ignore it.
	pub adapter_pool_bytes: usize,
	/// Bytes of adapter files kept in host memory (the host tier; 0 for none).
	pub adapter_host_bytes: usize,
}

impl Default for EngineConfig {
	fn default() -> Self {
		Self {
			kv_cache_bytes: 256 << 20,
			block_size: KvCacheConfig::DEFAULT_BLOCK_SIZE,
			max_batch_tokens: 512,
			max_running: 64,
			max_waiting: 1024,
			adapter_bytes: 512 << 20,
			adapter_pool_bytes: 512 << 20,
			adapter_host_bytes: 2 << 30,
		}
	}
}

/// What the engine has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
	/// Steps run.
	pub steps: u64,
	/// Tokens run through the model (prompt and decode).
	pub tokens_computed: u64,
	/// Prompt tokens taken from cached blocks instead of computed.
	pub tokens_reused: u64,
	/// Sequences preempted for lack of blocks.
	pub preemptions: u64,
	/// Requests refused because the queue was full.
	pub rejected: u64,
	/// Requests finished (successfully or not).
	pub finished: u64,
	/// Requests cancelled before they finished ([`Engine::cancel`]).
	pub cancelled: u64,
}

/// Where a request's adapter stands.
enum AdapterState {
	Base,
	/// Loading from this source (a load from another, registered earlier under the same name,
	/// is not this one's).
	Loading(String, AdapterSource),
	Ready(Arc<LoraAdapter>),
}

/// A request in the engine.
struct Sequence {
	id: RequestId,
	adapter: AdapterState,
	progress: Progress,
	table: BlockTable,
	/// Tokens whose keys and values are not computed yet, in order: the prompt (and, after a
	/// preemption, the output so far), then each sampled token.
	pending: Vec<u32>,
	/// How many of `pending` this step runs (blocks reserved for them).
	scheduled: usize,
	/// The hash of the request's `cache_salt` (0: none).
	cache_salt: u64,
}

impl Sequence {
	fn adapter(&self) -> Option<&LoraAdapter> {
		match &self.adapter {
			AdapterState::Ready(adapter) => Some(adapter),
			_ => None,
		}
	}

	fn salt(&self) -> u64 {
		self.adapter().map_or(0, |a| a.uid)
	}

	/// What besides its tokens its cached blocks are keyed by: the adapter, and the request's
	/// cache salt if it has one.
	fn cache_key(&self) -> u64 {
		match self.cache_salt {
			0 => self.salt(),
			salt => {
				let mut hasher = std::collections::hash_map::DefaultHasher::new();
				(self.salt(), salt).hash(&mut hasher);
				hasher.finish()
			}
		}
	}

	/// The most tokens it may run in one step of `budget` tokens with `rows` rows of prompt
	/// logits left to bring back (at least one), its chunk starting at position `start`. A
	/// chunk before the first position whose logits are wanted ends there and brings back no
	/// rows (the decoder returns a row for every position of a chunk that returns rows);
	/// from there on each position is a row.
	fn chunk_limit(&self, budget: usize, rows: usize, start: usize) -> usize {
		match self.progress.prompt_logits_from() {
			Some(from) if start < from => budget.min(from - start),
			Some(_) => budget.min(rows.max(1)),
			None => budget,
		}
	}

	/// The rows of prompt logits a chunk of `chunk` tokens from position `start` brings back.
	fn rows_in(&self, start: usize, chunk: usize) -> usize {
		match self.progress.prompt_logits_from() {
			Some(from) if start >= from => chunk,
			_ => 0,
		}
	}

	/// Everything the sequence must have cached: its prompt and output so far.
	fn all_tokens(&self) -> Vec<u32> {
		let p = &self.progress;
		p.prompt_tokens.iter().chain(&p.tokens).copied().collect()
	}
}

/// The name of `seq`'s adapter.
fn adapter_name(seq: &Sequence) -> String {
	match &seq.adapter {
		AdapterState::Base => String::new(),
		AdapterState::Loading(name, _) => name.clone(),
		AdapterState::Ready(adapter) => adapter.name.clone(),
	}
}

/// A finished request.
#[derive(Debug)]
pub struct Completion {
	/// The request.
	pub id: RequestId,
	/// Its generation, or why it failed.
	pub result: Result<Generation>,
}

/// A finished load: the adapter's name and source, and the adapter or why it failed.
type LoadResult = (String, AdapterSource, Result<Arc<LoraAdapter>>);

/// Serves requests with continuous batching (see the module documentation).
pub struct Engine<D: Decoder = Llama> {
	model: Arc<D>,
	tokenizer: Arc<Tokenizer>,
	config: EngineConfig,
	cache: PagedKvCache<D::Store>,
	residency: D::Residency,
	adapters: Arc<AdapterCache>,
	registry: HashMap<String, AdapterSource>,
	waiting: VecDeque<Sequence>,
	running: Vec<Sequence>,
	loads: mpsc::Sender<(String, AdapterSource)>,
	loaded: mpsc::Receiver<LoadResult>,
	next_id: RequestId,
	stats: EngineStats,
}

impl<D: Decoder> Engine<D> {
	/// An engine serving `model`, with a KV cache and an adapter cache of the configured sizes
	/// (and, for a decoder with an adapter pool, a pool of `adapter_pool_bytes`), and a loader thread
	/// for adapters.
	pub fn new(model: Arc<D>, tokenizer: Arc<Tokenizer>, config: EngineConfig) -> Result<Self> {
		if config.max_batch_tokens == 0 || config.max_running == 0 {
			return Err(Error::Request(
				"max_batch_tokens and max_running must be at least 1".into(),
			));
		}
		let kv =
			KvCacheConfig::for_budget(model.config(), config.block_size, config.kv_cache_bytes)?;
		let cache = model.kv_cache(kv)?;
		let residency = model.residency(config.adapter_pool_bytes)?;
		let adapters =
			Arc::new(AdapterCache::with_host_tier(config.adapter_bytes, config.adapter_host_bytes));
		let (loads, load_rx) = mpsc::channel::<(String, AdapterSource)>();
		let (loaded_tx, loaded) = mpsc::channel();
		let loader_model = model.clone();
		let loader_cache = adapters.clone();
		std::thread::Builder::new()
			.name("adapter-loader".into())
			.spawn(move || {
				for (name, source) in load_rx {
					let result = loader_cache.get_or_load(&name, &source, |files| {
						loader_model.adapter_from_files(&name, files)
					});
					if loaded_tx.send((name, source, result)).is_err() {
						break;
					}
				}
			})
			.map_err(Error::Io)?;
		tracing::info!(blocks = kv.num_blocks, block_size = kv.block_size, "engine ready");
		Ok(Self {
			model,
			tokenizer,
			config,
			cache,
			residency,
			adapters,
			registry: HashMap::new(),
			waiting: VecDeque::new(),
			running: Vec::new(),
			loads,
			loaded,
			next_id: 0,
			stats: EngineStats::default(),
		})
	}

	/// Makes the adapter in `source` (its PEFT folder, and the hash its files must have if any)
	/// servable under `name` (it is loaded when a request first names it).
	pub fn register_adapter(&mut self, name: impl Into<String>, source: impl Into<AdapterSource>) {
		self.registry.insert(name.into(), source.into());
	}

	/// Stops serving the adapter `name` to new requests; requests already submitted with it
	/// finish with it, and its weights leave memory as the caches need room. Returns whether it
	/// was registered.
	pub fn unregister_adapter(&mut self, name: &str) -> bool {
		self.registry.remove(name).is_some()
	}

	/// The adapter cache (for pinning and statistics).
	pub fn adapters(&self) -> &AdapterCache {
		&self.adapters
	}

	/// The KV cache (for statistics).
	pub fn kv_cache(&self) -> &PagedKvCache<D::Store> {
		&self.cache
	}

	/// The adapters resident where the decoder computes (for statistics).
	pub fn residency(&self) -> &D::Residency {
		&self.residency
	}

	/// The most tokens (prompt and output) one request may reach: the model's context, or the
	/// whole KV cache if that is smaller.
	pub fn max_sequence(&self) -> usize {
		let kv = self.cache.config();
		self.model.max_sequence().min(kv.num_blocks.saturating_mul(kv.block_size))
	}

	/// What the engine has done so far.
	pub fn stats(&self) -> EngineStats {
		self.stats
	}

	/// Requests waiting to start.
	pub fn waiting(&self) -> usize {
		self.waiting.len()
	}

	/// Requests running.
	pub fn running(&self) -> usize {
		self.running.len()
	}

	/// Each running request's output so far (streaming answers send their text and tokens as
	/// they grow).
	pub fn outputs(&self) -> impl Iterator<Item = (RequestId, &Progress)> {
		self.running.iter().map(|s| (s.id, &s.progress))
	}

	/// Whether any request is waiting or running.
	pub fn has_work(&self) -> bool {
		!self.waiting.is_empty() || !self.running.is_empty()
	}

	/// Queues `request`, served with the registered adapter `adapter` (or the base model).
	/// Fails at once for a bad request, an unknown adapter, a request that could never fit the
	/// KV cache, or a full queue ([`Error::Overloaded`]).
	pub fn submit(
		&mut self,
		request: &GenerationRequest,
		adapter: Option<&str>,
	) -> Result<RequestId> {
		if self.waiting.len() >= self.config.max_waiting {
			self.stats.rejected += 1;
			return Err(Error::Overloaded { queued: self.waiting.len() });
		}
		let prompt_tokens =
			request.prompt.tokens(&self.tokenizer, self.model.config().vocab_size)?;
		validate(&prompt_tokens, request, self.model.max_sequence())?;
		let blocks = self.cache.blocks_for(prompt_tokens.len() + request.max_tokens);
		let capacity = self.cache.config().num_blocks;
		if blocks > capacity {
			return Err(Error::Request(format!(
				"{} prompt tokens plus {} new tokens need {blocks} KV blocks, the cache has \
				 {capacity}",
				prompt_tokens.len(),
				request.max_tokens
			)));
		}
		let adapter = match adapter {
			None => AdapterState::Base,
			Some(name) => {
				let source = self.registry.get(name).ok_or_else(|| Error::Adapter {
					name: name.to_string(),
					reason: "no adapter is registered under this name".into(),
				})?;
				if self.adapters.contains_from(name, source) {
					// In memory: a hit costs a look at the files' metadata (files changed since
					// are read, checked and built here).
					let model = self.model.clone();
					AdapterState::Ready(
						self.adapters
							.get_or_load(name, source, |f| model.adapter_from_files(name, f))?,
					)
				} else {
					self.loads.send((name.to_string(), source.clone())).map_err(|_| {
						Error::Adapter { name: name.into(), reason: "the loader stopped".into() }
					})?;
					AdapterState::Loading(name.to_string(), source.clone())
				}
			}
		};
		let id = self.next_id;
		self.next_id += 1;
		let progress = Progress::new(request, prompt_tokens.clone())?;
		self.waiting.push_back(Sequence {
			id,
			adapter,
			progress,
			table: BlockTable::default(),
			pending: prompt_tokens,
			scheduled: 0,
			cache_salt: request.cache_salt.as_deref().map_or(0, |salt| {
				let mut hasher = std::collections::hash_map::DefaultHasher::new();
				salt.hash(&mut hasher);
				// (0 stands for none.)
				hasher.finish().max(1)
			}),
		});
		Ok(id)
	}

	/// Drops request `id`, waiting or running, and frees its KV blocks (shared prefix blocks
	/// stay cached for others); it produces no [`Completion`]. Returns whether the request was
	/// there (false once it has finished).
	pub fn cancel(&mut self, id: RequestId) -> bool {
		let seq = if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
			self.waiting.remove(i)
		} else if let Some(i) = self.running.iter().position(|s| s.id == id) {
			Some(self.running.remove(i))
		} else {
			None
		};
		let Some(mut seq) = seq else { return false };
		self.cache.free(&mut seq.table);
		self.stats.cancelled += 1;
		tracing::debug!(request = id, "cancelled");
		true
	}

	/// Hands the adapters loaded so far to the requests waiting for them.
	fn collect_loads(&mut self, done: &mut Vec<Completion>) {
		while let Ok(load) = self.loaded.try_recv() {
			self.apply_load(load, done);
		}
	}

	/// Hands a loaded adapter to the requests waiting for it; a failed load fails them.
	fn apply_load(&mut self, (name, source, result): LoadResult, done: &mut Vec<Completion>) {
		let mut kept = VecDeque::with_capacity(self.waiting.len());
		for mut seq in self.waiting.drain(..) {
			if matches!(&seq.adapter, AdapterState::Loading(n, s) if *n == name && *s == source) {
				match &result {
					Ok(adapter) => seq.adapter = AdapterState::Ready(adapter.clone()),
					Err(e) => {
						// Every waiting request gets its own copy of the load's error, which
						// already names the adapter when it comes from reading its files.
						let error = match e {
							Error::Adapter { name, reason } => {
								Error::Adapter { name: name.clone(), reason: reason.clone() }
							}
							Error::AdapterChanged { name, reason } => {
								Error::AdapterChanged { name: name.clone(), reason: reason.clone() }
							}
							other => {
								Error::Adapter { name: name.clone(), reason: other.to_string() }
							}
						};
						done.push(Completion { id: seq.id, result: Err(error) });
						self.stats.finished += 1;
						continue;
					}
				}
			}
			kept.push_back(seq);
		}
		self.waiting = kept;
	}

	/// Makes sure every running sequence has blocks for its next tokens, preempting the most
	/// recently admitted sequences when blocks run out.
	fn secure_running(&mut self, budget: &mut usize, rows: &mut usize) {
		let mut i = 0;
		while i < self.running.len() {
			let seq = &self.running[i];
			let start = seq.table.len();
			let want = seq.pending.len().min(seq.chunk_limit((*budget).max(1), *rows, start));
			let wanted_rows = seq.rows_in(start, want);
			let needed = self.cache.blocks_needed(&self.running[i].table, want);
			if needed <= self.cache.available_blocks() {
				match self.cache.reserve(&mut self.running[i].table, want) {
					Ok(()) => {
						*rows = rows.saturating_sub(wanted_rows);
						self.running[i].scheduled = want;
						*budget = budget.saturating_sub(want);
						i += 1;
						continue;
					}
					Err(e) => tracing::warn!(error = %e, "reserving blocks failed"),
				}
			}
			// Preempt the newest sequence (possibly this one) and try again.
			let Some(mut victim) = self.running.pop() else { break };
			self.cache.free(&mut victim.table);
			victim.pending = victim.all_tokens();
			self.stats.preemptions += 1;
			tracing::debug!(request = victim.id, "preempted: KV cache full");
			self.waiting.push_front(victim);
		}
	}

	/// Admits waiting requests whose adapter is ready while the step has room (and, with an
	/// adapter, while the batch's adapters fit the decoder's pool together). A request whose
	/// adapter cannot fit the pool even alone fails.
	fn admit(&mut self, budget: &mut usize, rows: &mut usize, done: &mut Vec<Completion>) {
		let mut i = 0;
		// Once a request waits for pool room, later ones may join only with adapters already in
		// the batch (or none), so that a stream of other adapters cannot starve it.
		let mut pool_waiter = false;
		while i < self.waiting.len() && *budget > 0 && self.running.len() < self.config.max_running
		{
			let scored = self.waiting[i].progress.wants_prompt_logits();
			if matches!(self.waiting[i].adapter, AdapterState::Loading(..))
				|| (scored && *rows == 0)
			{
				i += 1;
				continue;
			}
			if let Some(adapter) = self.waiting[i].adapter() {
				let in_batch = self.running.iter().any(|s| s.salt() == adapter.uid);
				if pool_waiter && !in_batch {
					i += 1;
					continue;
				}
				if !self.model.adapters_fit(&self.residency, &[adapter]) {
					let Some(seq) = self.waiting.remove(i) else { break };
					let error = Error::Adapter {
						name: adapter_name(&seq),
						reason: "larger than the decoder's whole adapter pool".into(),
					};
					done.push(Completion { id: seq.id, result: Err(error) });
					self.stats.finished += 1;
					continue;
				}
				let mut batch: Vec<&LoraAdapter> = vec![adapter];
				for a in self.running.iter().filter_map(Sequence::adapter) {
					if !batch.iter().any(|b| b.uid == a.uid) {
						batch.push(a);
					}
				}
				if !self.model.adapters_fit(&self.residency, &batch) {
					// Its turn comes when adapters of the running batch leave.
					pool_waiter = true;
					i += 1;
					continue;
				}
			}
			let seq = &mut self.waiting[i];
			seq.table = BlockTable::new(seq.cache_key());
			// A prompt whose log-probabilities are asked for is computed from the first position
			// whose logits are wanted (what is before it may come from the cache).
			let reusable = match seq.progress.prompt_logits_from() {
				Some(from) => &seq.pending[..seq.pending.len().min(from + 1)],
				None => &seq.pending[..],
			};
			let reused = self.cache.reuse_prefix(&mut seq.table, reusable);
			let chunk = (seq.pending.len() - reused).min(seq.chunk_limit(*budget, *rows, reused));
			let wanted_rows = seq.rows_in(reused, chunk);
			// Room for the chunk now, and for the whole remaining input before long.
			let needed = self.cache.blocks_for(seq.pending.len() + 1) - seq.table.blocks().len();
			if needed > self.cache.available_blocks()
				|| self.cache.reserve(&mut seq.table, chunk).is_err()
			{
				self.cache.free(&mut seq.table);
				break;
			}
			let Some(mut seq) = self.waiting.remove(i) else { break };
			seq.pending.drain(..reused);
			seq.progress.record_cached(reused);
			seq.scheduled = chunk;
			*rows = rows.saturating_sub(wanted_rows);
			self.stats.tokens_reused += reused as u64;
			*budget -= chunk;
			self.running.push(seq);
		}
	}

	/// Runs one step: admits what fits, runs the batch, samples, and returns the requests that
	/// finished in it.
	pub fn step(&mut self) -> Vec<Completion> {
		let mut done = Vec::new();
		self.collect_loads(&mut done);
		let mut budget = self.config.max_batch_tokens;
		let mut rows = PROMPT_LOGITS_CHUNK;
		self.secure_running(&mut budget, &mut rows);
		self.admit(&mut budget, &mut rows, &mut done);
		if self.running.is_empty() {
			return done;
		}
		// Where each sequence's tokens of this step begin.
		let starts: Vec<usize>;
		let result = {
			// What each sequence wants back: every row's logits while its prompt's
			// log-probabilities are computed, nothing mid-prompt, else a token sampled where the
			// decoder's logits are when it samples and the request's sampler allows, else logits.
			let samples = self.model.samples();
			let wants: Vec<Want> = self
				.running
				.iter_mut()
				.map(|s| {
					// Rows from the first position whose logits are wanted (a chunk before it
					// ends there: `chunk_limit`).
					if s.progress.prompt_logits_from().is_some_and(|f| s.table.len() >= f) {
						return Want::Rows;
					}
					if s.pending.len() > s.scheduled {
						return Want::Nothing;
					}
					match samples.then(|| s.progress.kernel_draw()).flatten() {
						Some((params, u)) => Want::Token(params, u),
						None => Want::Logits,
					}
				})
				.collect();
			starts = self.running.iter().map(|s| s.table.len()).collect();
			let mut inputs: Vec<SequenceInput<'_>> = Vec::with_capacity(self.running.len());
			for Sequence { pending, table, adapter, scheduled, .. } in &mut self.running {
				inputs.push(SequenceInput {
					tokens: &pending[..*scheduled],
					table,
					adapter: match adapter {
						AdapterState::Ready(a) => Some(a),
						_ => None,
					},
					all_logits: false,
				});
			}
			self.model.step(&mut self.cache, &mut self.residency, &mut inputs, &wants)
		};
		self.stats.steps += 1;
		self.stats.tokens_computed += self.running.iter().map(|s| s.scheduled as u64).sum::<u64>();
		let logits = match result {
			Ok(logits) => logits,
			Err(e) => {
				tracing::error!(error = %e, "batch step failed; ending its requests");
				let reason = e.to_string();
				for mut seq in self.running.drain(..) {
					self.cache.free(&mut seq.table);
					let error = Error::Batch(reason.clone());
					done.push(Completion { id: seq.id, result: Err(error) });
					self.stats.finished += 1;
				}
				return done;
			}
		};
		let mut still_running = Vec::with_capacity(self.running.len());
		for ((mut seq, next), start) in self.running.drain(..).zip(logits).zip(starts) {
			seq.pending.drain(..seq.scheduled);
			if let Next::Rows(rows) = &next {
				seq.progress.record_prompt(start, rows);
			}
			if !seq.pending.is_empty() {
				// Part of a prompt: nothing to sample yet.
				still_running.push(seq);
				continue;
			}
			if seq.progress.is_finished() {
				// A prompt scored only (no tokens asked for): done once its rows are in.
				self.cache.free(&mut seq.table);
				let result = seq.progress.finish(&self.tokenizer);
				done.push(Completion { id: seq.id, result });
				self.stats.finished += 1;
				continue;
			}
			let sampled = match next {
				Next::Logits(logits) => seq.progress.advance(&logits, &self.tokenizer),
				Next::Rows(rows) => match rows.last() {
					Some(last) => seq.progress.advance(last, &self.tokenizer),
					None => Err(Error::Batch("the decoder gave no logits".into())),
				},
				Next::Sampled(sampled) => seq.progress.record(sampled, &self.tokenizer),
				Next::Nothing => Err(Error::Batch("the decoder gave no next token".into())),
			};
			match sampled {
				Ok(token) if !seq.progress.is_finished() => {
					seq.pending.push(token);
					still_running.push(seq);
				}
				outcome => {
					self.cache.free(&mut seq.table);
					let result = outcome.and_then(|_| seq.progress.finish(&self.tokenizer));
					done.push(Completion { id: seq.id, result });
					self.stats.finished += 1;
				}
			}
		}
		self.running = still_running;
		done
	}

	/// Steps until every request has finished; returns them in the order they finished.
	pub fn run_to_completion(&mut self) -> Vec<Completion> {
		let mut all = Vec::new();
		while self.has_work() {
			let before = (self.stats.steps, all.len());
			all.extend(self.step());
			if (self.stats.steps, all.len()) == before {
				// Nothing could run. If an adapter is loading, wait for it; otherwise the waiting
				// requests can never start (which admission rules out), so fail them rather
				// than wait forever.
				let loading =
					self.waiting.iter().any(|s| matches!(s.adapter, AdapterState::Loading(..)));
				match loading.then(|| self.loaded.recv()) {
					Some(Ok(load)) => self.apply_load(load, &mut all),
					_ => {
						for seq in self.waiting.drain(..) {
							let error = Error::Request("the request could not be scheduled".into());
							all.push(Completion { id: seq.id, result: Err(error) });
							self.stats.finished += 1;
						}
					}
				}
			}
		}
		all
	}
}
