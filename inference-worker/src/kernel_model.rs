//! The Llama decoder composed of `openledger_kernels` calls, over any [`Backend`]: the CPU
//! references ([`openledger_kernels::backend::Cpu`]) or the CUDA kernels
//! ([`openledger_kernels::backend::Cuda`]), where weights, the paged KV cache and the adapter
//! pool all live on the device and only token ids, positions, block tables and the sampled
//! tokens cross the bus.
//!
//! The weights are the GGUF file's own quantized blocks, uploaded as they are stored (Q4_0,
//! Q4_1, Q8_0, Q4_K, Q6_K) and dequantized in registers by the GEMV kernels. A step is either
//! a prefill chunk of one sequence (flash-style attention over the paged cache) or one decode
//! token for each of a batch of sequences (paged decode attention), each sequence with its own
//! adapter or none (multi-LoRA over the paged adapter pool).

use std::{path::Path, sync::Arc};

use candle_core::quantized::GgmlDType;
use openledger_kernels::{
	adapter_pool::{self, LoraPlan, PagedAdapter},
	attention::{AttentionParams, KvLayout},
	backend::{Backend, KernelError},
	fused::RopeStyle,
	gpu::lora::MAX_RANK,
	quant::{self, Format},
	sampling::{Sampled, SamplingParams},
};

use crate::{
	config::{LlamaConfig, RopeLayout},
	error::{Error, Result},
	kv_cache::{BlockId, KvStore},
	lora::{AdapterFiles, LoraAdapter, Projection},
	model::GgufReader,
	tokenizer::Tokenizer,
};

/// A weight matrix as the GEMV kernels read it.
struct Weight<B: Backend> {
	format: Format,
	bytes: B::Bytes,
	rows: usize,
	cols: usize,
}

/// One transformer block's weights.
struct Layer<B: Backend> {
	attn_norm: B::Floats,
	ffn_norm: B::Floats,
	q: Weight<B>,
	k: Weight<B>,
	v: Weight<B>,
	o: Weight<B>,
	gate: Weight<B>,
	up: Weight<B>,
	down: Weight<B>,
}

impl<B: Backend> Layer<B> {
	fn weight(&self, projection: Projection) -> &Weight<B> {
		match projection {
			Projection::Q => &self.q,
			Projection::K => &self.k,
			Projection::V => &self.v,
			Projection::O => &self.o,
			Projection::Gate => &self.gate,
			Projection::Up => &self.up,
			Projection::Down => &self.down,
		}
	}
}

/// The kernel format of a GGUF tensor type, when the kernels read it.
pub(crate) fn format_of(dtype: GgmlDType) -> Option<Format> {
	Some(match dtype {
		GgmlDType::Q4_0 => Format::Q4_0,
		GgmlDType::Q4_1 => Format::Q4_1,
		GgmlDType::Q8_0 => Format::Q8_0,
		GgmlDType::Q4K => Format::Q4K,
		GgmlDType::Q6K => Format::Q6K,
		_ => return None,
	})
}

/// The Llama decoder over a kernel backend.
pub struct KernelLlama<B: Backend> {
	/// Its hyper-parameters.
	pub config: LlamaConfig,
	/// Shared with its caches, which copy blocks on the backend.
	backend: Arc<B>,
	/// The token embeddings as stored (rows are dequantized on the host when looked up).
	embeddings: (Format, Vec<u8>),
	layers: Vec<Layer<B>>,
	norm: B::Floats,
	lm_head: Weight<B>,
	cos: B::Floats,
	sin: B::Floats,
	rope_style: RopeStyle,
	max_positions: usize,
	/// Floats per adapter pool page ([`KernelLlama::page_len`]), worked out at load.
	page_len: usize,
}

/// The paged key/value cache of a [`KernelLlama`]: per layer, `[num_blocks, block_size,
/// kv_heads, head_dim]` keys and values on the backend. Which blocks a sequence owns is the
/// caller's (its block table); the kernels read and write through it.
pub struct KernelCache<B: Backend> {
	backend: Arc<B>,
	layout: KvLayout,
	num_blocks: usize,
	k: Vec<B::Floats>,
	v: Vec<B::Floats>,
}

impl<B: Backend> KvStore for KernelCache<B> {
	fn copy_block(&mut self, from: BlockId, to: BlockId) -> Result<()> {
		let len = self.layout.block_len();
		for block in [from, to] {
			if block as usize >= self.num_blocks {
				return Err(Error::Request(format!(
					"block {block} of a cache of {}",
					self.num_blocks
				)));
			}
		}
		let (src, dst) = (from as usize * len, to as usize * len);
		for buffer in self.k.iter_mut().chain(&mut self.v) {
			self.backend.copy_within(buffer, src, dst, len)?;
		}
		Ok(())
	}
}

impl<B: Backend> KernelCache<B> {
	/// Tokens per block.
	pub fn block_size(&self) -> usize {
		self.layout.block_size
	}

	/// Blocks per layer.
	pub fn num_blocks(&self) -> usize {
		self.num_blocks
	}
}

/// An adapter resident in a backend's adapter pool: per layer, the pages of each targeted
/// projection.
pub struct KernelAdapter {
	layers: Vec<Vec<(Projection, PagedAdapter)>>,
}

impl KernelAdapter {
	fn get(&self, layer: usize, projection: Projection) -> Option<&PagedAdapter> {
		self.layers.get(layer)?.iter().find(|(p, _)| *p == projection).map(|(_, a)| a)
	}
}

/// One sequence of a decode step: its next token, that token's position, its block table and
/// its adapter.
pub struct DecodeInput<'a> {
	/// The token.
	pub token: u32,
	/// Its position (the tokens before it are in the cache).
	pub position: usize,
	/// The sequence's blocks, in order.
	pub table: &'a [u32],
	/// Its adapter, resident in the pool passed with the step.
	pub adapter: Option<&'a KernelAdapter>,
}

impl<B: Backend> KernelLlama<B> {
	/// Loads a GGUF Llama/Mistral file onto `backend`, with rotary tables for `max_positions`
	/// (`None`: the model's context length), and its tokenizer. Every projection must be stored
	/// in a format the kernels read; anything else (F16/F32 projections, biases, other block
	/// types) is refused with [`Error::Unsupported`].
	pub fn from_gguf(
		path: &Path,
		backend: B,
		max_positions: Option<usize>,
	) -> Result<(Self, Tokenizer)> {
		let (mut gguf, config, tokenizer) = GgufReader::open(path, &candle_core::Device::Cpu)?;
		let max_positions = max_positions.unwrap_or(config.context_length);
		if max_positions == 0 {
			return Err(Error::Request("rotary tables for 0 positions".into()));
		}
		if gguf.content.tensor_infos.keys().any(|name| name.ends_with(".bias")) {
			return Err(Error::Unsupported("the kernel path has no projection biases".into()));
		}
		let f32s = |gguf: &mut GgufReader, name: &str| -> Result<B::Floats> {
			Ok(backend.floats(&gguf.dense(name)?.flatten_all()?.to_vec1::<f32>()?)?)
		};
		let raw = |gguf: &mut GgufReader, name: &str| -> Result<(GgmlDType, Vec<usize>, Vec<u8>)> {
			let tensor = gguf.tensor(name)?;
			Ok((tensor.dtype(), tensor.shape().dims().to_vec(), tensor.data()?.into_owned()))
		};
		let weight = |gguf: &mut GgufReader, name: &str| -> Result<Weight<B>> {
			let (dtype, dims, bytes) = raw(gguf, name)?;
			let format = format_of(dtype).ok_or_else(|| {
				Error::Unsupported(format!("{name} is {dtype:?}, which the kernels do not read"))
			})?;
			let [rows, cols] = match dims[..] {
				[rows, cols] => [rows, cols],
				_ => return Err(Error::Format(format!("{name} has shape {dims:?}"))),
			};
			if quant::row_bytes(format, cols).map_err(KernelError::from)? * rows != bytes.len() {
				return Err(Error::Format(format!(
					"{name}: {} bytes for {rows}x{cols}",
					bytes.len()
				)));
			}
			Ok(Weight { format, bytes: backend.bytes(&bytes)?, rows, cols })
		};
		let mut layers = Vec::with_capacity(config.num_layers);
		for l in 0..config.num_layers {
			let p = |s: &str| format!("blk.{l}.{s}.weight");
			layers.push(Layer {
				attn_norm: f32s(&mut gguf, &p("attn_norm"))?,
				ffn_norm: f32s(&mut gguf, &p("ffn_norm"))?,
				q: weight(&mut gguf, &p("attn_q"))?,
				k: weight(&mut gguf, &p("attn_k"))?,
				v: weight(&mut gguf, &p("attn_v"))?,
				o: weight(&mut gguf, &p("attn_output"))?,
				gate: weight(&mut gguf, &p("ffn_gate"))?,
				up: weight(&mut gguf, &p("ffn_up"))?,
				down: weight(&mut gguf, &p("ffn_down"))?,
			});
		}
		let norm = f32s(&mut gguf, "output_norm.weight")?;
		let (dtype, _, embedding_bytes) = raw(&mut gguf, "token_embd.weight")?;
		let embedding_format = format_of(dtype).ok_or_else(|| {
			Error::Unsupported(format!("token_embd is {dtype:?}, which the kernels do not read"))
		})?;
		let lm_head = if gguf.content.tensor_infos.contains_key("output.weight") {
			weight(&mut gguf, "output.weight")?
		} else {
			weight(&mut gguf, "token_embd.weight")?
		};
		let (cos, sin) = rope_tables(&config, max_positions);
		let rope_style = match config.rope_layout {
			RopeLayout::Interleaved => RopeStyle::Gptj,
			RopeLayout::Halves => RopeStyle::Neox,
		};
		let page_len = page_len_for([
			config.hidden_size,
			config.intermediate_size,
			config.num_heads * config.head_dim,
			config.num_kv_heads * config.head_dim,
		]);
		let model = Self {
			cos: backend.floats(&cos)?,
			sin: backend.floats(&sin)?,
			config,
			embeddings: (embedding_format, embedding_bytes),
			layers,
			norm,
			lm_head,
			rope_style,
			max_positions,
			page_len,
			backend: Arc::new(backend),
		};
		Ok((model, tokenizer))
	}

	/// Loads the PEFT adapter folder `dir` (named `name`, or after its folder), checking every
	/// tensor against this model's projections.
	pub fn load_adapter(&self, dir: &Path, name: Option<&str>) -> Result<LoraAdapter> {
		let adapter = LoraAdapter::load(
			dir,
			name,
			&self.config,
			|layer, p| self.widths(layer, p),
			&candle_core::Device::Cpu,
		)?;
		Self::check_ranks(&adapter)?;
		Ok(adapter)
	}

	/// Refuses an adapter with a module of a rank the kernels do not take (1 to [`MAX_RANK`]),
	/// so that it fails when it is loaded rather than in a step it would share with others.
	fn check_ranks(adapter: &LoraAdapter) -> Result<()> {
		match adapter.modules().find(|w| w.rank == 0 || w.rank > MAX_RANK) {
			Some(w) => Err(Error::Adapter {
				name: adapter.name.clone(),
				reason: format!("rank {} (the kernels take 1 to {MAX_RANK})", w.rank),
			}),
			None => Ok(()),
		}
	}

	/// Builds the adapter `name` for this model from its files (already in host memory),
	/// checking every tensor against this model's projections. Its weights stay on the host
	/// until [`KernelLlama::upload_adapter`] puts them in a pool.
	pub fn adapter_from_files(&self, name: &str, files: &AdapterFiles) -> Result<LoraAdapter> {
		let adapter = LoraAdapter::from_files(
			files,
			name,
			&self.config,
			|layer, p| self.widths(layer, p),
			&candle_core::Device::Cpu,
		)?;
		Self::check_ranks(&adapter)?;
		Ok(adapter)
	}

	/// The (input, output) widths of projection `p` of layer `layer`.
	fn widths(&self, layer: usize, p: Projection) -> Option<(usize, usize)> {
		let w = self.layers.get(layer)?.weight(p);
		Some((w.cols, w.rows))
	}

	/// Floats per adapter pool page: the multiple of 32 (so that every page starts on a
	/// 128-byte line) that cuts one row of each projection width (inputs and outputs) into the
	/// fewest pages while leaving at most 1% of their floats unused (SmolLM2-135M: 192, a third
	/// of a 576-wide row, nothing unused; Llama-2-7B: 1376, a row of 4096 on 3 pages, 0.4%
	/// unused); when none does, the one that leaves least unused.
	pub fn page_len(&self) -> usize {
		self.page_len
	}

	/// Pool pages `adapter` takes once uploaded: each rank row of each `A` and `s·Bᵀ` on
	/// pages of its own (saturating at `usize::MAX`: such an adapter fits no pool).
	pub fn pages_of(&self, adapter: &LoraAdapter) -> usize {
		adapter
			.modules()
			.map(|w| adapter_pool::adapter_pages(w.rank, w.in_dim(), w.out_dim(), self.page_len))
			.fold(0, |sum, pages| pages.map_or(usize::MAX, |p| sum.saturating_add(p)))
	}

	/// An adapter pool on the backend of `num_pages` pages of [`KernelLlama::page_len`].
	pub fn pool(&self, num_pages: usize) -> Result<B::Pool> {
		let pages = u32::try_from(num_pages.max(1))
			.map_err(|_| Error::Request(format!("{num_pages} adapter pages are too many")))?;
		Ok(self.backend.pool(self.page_len(), pages)?)
	}

	/// Pool pages `adapters` take together ([`KernelLlama::pages_of`] each, saturating).
	pub fn pages_of_all(&self, adapters: &[&LoraAdapter]) -> usize {
		adapters.iter().fold(0, |sum, a| sum.saturating_add(self.pages_of(a)))
	}

	/// An adapter pool on the backend with room for `adapters`.
	pub fn pool_for(&self, adapters: &[&LoraAdapter]) -> Result<B::Pool> {
		self.pool(self.pages_of_all(adapters))
	}

	/// Columns of the logits (rows of the output projection).
	pub fn vocab(&self) -> usize {
		self.lm_head.rows
	}

	/// The most positions a sequence may reach (the rotary tables' length).
	pub fn max_positions(&self) -> usize {
		self.max_positions
	}

	/// The backend the model runs on.
	pub fn backend(&self) -> &B {
		&self.backend
	}

	/// A cache of `num_blocks` blocks of `block_size` tokens per layer.
	pub fn new_cache(&self, num_blocks: usize, block_size: usize) -> Result<KernelCache<B>> {
		if num_blocks == 0 || block_size == 0 {
			return Err(Error::Request(format!(
				"a cache of {num_blocks} blocks of {block_size} tokens"
			)));
		}
		let layout = KvLayout {
			block_size,
			num_kv_heads: self.config.num_kv_heads,
			head_dim: self.config.head_dim,
		};
		let len = num_blocks * layout.block_len();
		let mut k = Vec::with_capacity(self.config.num_layers);
		let mut v = Vec::with_capacity(self.config.num_layers);
		for _ in 0..self.config.num_layers {
			k.push(self.backend.zeros(len)?);
			v.push(self.backend.zeros(len)?);
		}
		Ok(KernelCache { backend: self.backend.clone(), layout, num_blocks, k, v })
	}

	/// Puts `adapter`'s weights into `pool` (each row of `A` and `s·Bᵀ` on pages of its own).
	pub fn upload_adapter(
		&self,
		pool: &mut B::Pool,
		adapter: &LoraAdapter,
	) -> Result<KernelAdapter> {
		// Everything that can fail on the host first, so an upload failure is the only one
		// that has pages to give back.
		Self::check_ranks(adapter)?;
		let mut pairs = Vec::new();
		for l in 0..self.config.num_layers {
			for p in Projection::ALL {
				let Some(w) = adapter.weights(l, p) else { continue };
				let (_, in_dim) = w.a.dims2()?;
				let (_, out_dim) = w.b_t.dims2()?;
				let a: Vec<f32> =
					w.a.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
				let b_t: Vec<f32> =
					w.b_t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
				pairs.push((l, p, a, in_dim, b_t, out_dim));
			}
		}
		let mut layers: Vec<Vec<(Projection, PagedAdapter)>> =
			(0..self.config.num_layers).map(|_| Vec::new()).collect();
		for (l, p, a, in_dim, b_t, out_dim) in pairs {
			match self.backend.upload_adapter(pool, &a, in_dim, &b_t, out_dim) {
				Ok(paged) => layers[l].push((p, paged)),
				Err(e) => {
					// Give back what this adapter already took, as far as that goes.
					for (_, paged) in layers.iter().flatten() {
						let _ = self.backend.release_adapter(pool, paged);
					}
					return Err(e.into());
				}
			}
		}
		Ok(KernelAdapter { layers })
	}

	/// Gives an adapter's pages back to `pool`: every module's, even after one fails (the
	/// first failure is returned).
	pub fn release_adapter(&self, pool: &mut B::Pool, adapter: &KernelAdapter) -> Result<()> {
		let mut first = Ok(());
		for (_, paged) in adapter.layers.iter().flatten() {
			if let Err(e) = self.backend.release_adapter(pool, paged) {
				if first.is_ok() {
					first = Err(e.into());
				}
			}
		}
		first
	}

	/// The cache slots of `positions` in a sequence with blocks `table`, after checking that
	/// every block holding positions `0..positions.end` is a block of `cache` (the attention
	/// kernels read all of them, not only the ones written).
	fn slots(
		cache: &KernelCache<B>,
		table: &[u32],
		positions: std::ops::Range<usize>,
	) -> Result<Vec<i64>> {
		let bs = cache.layout.block_size;
		let last = positions.end.saturating_sub(1);
		let blocks = table.get(..last / bs + 1).ok_or_else(|| {
			Error::Request(format!("position {last} is past the sequence's {} blocks", table.len()))
		})?;
		if let Some(block) = blocks.iter().find(|&&b| b as usize >= cache.num_blocks) {
			return Err(Error::Request(format!(
				"block {block} of a cache of {}",
				cache.num_blocks
			)));
		}
		Ok(positions.map(|p| blocks[p / bs] as i64 * bs as i64 + (p % bs) as i64).collect())
	}

	/// The embedding rows of `tokens`, on the backend.
	fn embed(&self, tokens: &[u32]) -> Result<B::Floats> {
		let hidden = self.config.hidden_size;
		let (format, bytes) = &self.embeddings;
		let row_bytes = quant::row_bytes(*format, hidden).map_err(KernelError::from)?;
		let mut x = vec![0f32; tokens.len() * hidden];
		for (row, &token) in x.chunks_mut(hidden).zip(tokens) {
			let at = token as usize * row_bytes;
			let src = bytes
				.get(at..at + row_bytes)
				.ok_or_else(|| Error::Request(format!("token {token} is not in the vocabulary")))?;
			quant::dequantize_row(*format, src, row).map_err(KernelError::from)?;
		}
		Ok(self.backend.floats(&x)?)
	}

	/// `y = x · Wᵀ` for `n` rows, plus, with `lora`, the adapters of the step's plan for
	/// layer `layer`'s projection `p`.
	fn project(
		&self,
		w: &Weight<B>,
		x: &B::Floats,
		n: usize,
		lora: &mut Option<(&B::Pool, B::Plans)>,
		layer: usize,
		p: Projection,
	) -> Result<B::Floats> {
		let mut y = self.backend.zeros(n * w.rows)?;
		self.backend.gemv(w.format, &w.bytes, w.rows, w.cols, x, n, &mut y)?;
		if let Some((pool, plans)) = lora {
			let which = plan_slot(layer, p);
			self.backend.add_lora(pool, plans, which, x, w.cols, &mut y, w.rows)?;
		}
		Ok(y)
	}

	/// Runs the blocks over `x` (`n` rows at `positions`, whose keys and values go to `slots`),
	/// with `attend` computing each layer's attention from its queries. Returns the final
	/// hidden states before the output norm.
	#[allow(clippy::too_many_arguments)]
	fn blocks(
		&self,
		cache: &mut KernelCache<B>,
		mut x: B::Floats,
		n: usize,
		positions: &[u32],
		slots: &[i64],
		plans: &[(usize, &KernelAdapter)],
		pool: Option<&B::Pool>,
		attend: impl Fn(&B::Floats, &KernelCache<B>, usize) -> Result<B::Floats>,
	) -> Result<B::Floats> {
		let c = &self.config;
		let eps = c.rms_norm_eps as f32;
		let positions = self.backend.words(positions)?;
		let slots = self.backend.slots(slots)?;
		let mut h = self.backend.zeros(n * c.hidden_size)?;
		// Every layer's and projection's plan for this step, made ready at once (one copy on a
		// GPU), in plan_slot order.
		let mut lora = match pool {
			Some(pool) if !plans.is_empty() => {
				let mut all = Vec::with_capacity(self.layers.len() * Projection::ALL.len());
				for l in 0..self.layers.len() {
					for p in Projection::ALL {
						let segments: Vec<_> = plans
							.iter()
							.filter_map(|&(row, adapter)| Some((row..row + 1, adapter.get(l, p)?)))
							.collect();
						all.push(
							LoraPlan::new(n, &coalesce(&segments)).map_err(KernelError::from)?,
						);
					}
				}
				Some((pool, self.backend.plans(pool, all)?))
			}
			_ => None,
		};
		for (l, layer) in self.layers.iter().enumerate() {
			self.backend.rms_norm(&x, &layer.attn_norm, eps, &mut h)?;
			let mut q = self.project(&layer.q, &h, n, &mut lora, l, Projection::Q)?;
			let mut k = self.project(&layer.k, &h, n, &mut lora, l, Projection::K)?;
			let v = self.project(&layer.v, &h, n, &mut lora, l, Projection::V)?;
			let d = c.head_dim;
			self.backend.rope(
				&mut q,
				c.num_heads,
				d,
				&positions,
				&self.cos,
				&self.sin,
				self.rope_style,
			)?;
			self.backend.rope(
				&mut k,
				c.num_kv_heads,
				d,
				&positions,
				&self.cos,
				&self.sin,
				self.rope_style,
			)?;
			let layout = cache.layout;
			self.backend.write_kv(&mut cache.k[l], &mut cache.v[l], layout, &k, &v, &slots)?;
			let attn = attend(&q, cache, l)?;
			let o = self.project(&layer.o, &attn, n, &mut lora, l, Projection::O)?;
			self.backend.add_rms_norm(&mut x, &o, &layer.ffn_norm, eps, &mut h)?;
			let gate = self.project(&layer.gate, &h, n, &mut lora, l, Projection::Gate)?;
			let up = self.project(&layer.up, &h, n, &mut lora, l, Projection::Up)?;
			let mut act = self.backend.zeros(n * c.intermediate_size)?;
			self.backend.silu_mul(&gate, &up, &mut act)?;
			let down = self.project(&layer.down, &act, n, &mut lora, l, Projection::Down)?;
			self.backend.add_assign(&mut x, &down)?;
		}
		Ok(x)
	}

	/// The logits of the `n` rows of final hidden states `x`.
	fn logits(&self, x: &B::Floats, n: usize) -> Result<B::Floats> {
		let mut h = self.backend.zeros(n * self.config.hidden_size)?;
		self.backend.rms_norm(x, &self.norm, self.config.rms_norm_eps as f32, &mut h)?;
		self.project(&self.lm_head, &h, n, &mut None, 0, Projection::Q)
	}

	fn attention_params(&self) -> AttentionParams {
		AttentionParams {
			num_heads: self.config.num_heads,
			scale: 1.0 / (self.config.head_dim as f32).sqrt(),
			window: self.config.sliding_window,
		}
	}

	fn check_positions(&self, last: usize) -> Result<()> {
		if last >= self.max_positions {
			return Err(Error::Request(format!(
				"position {last} is past the {} the model was loaded for",
				self.max_positions
			)));
		}
		Ok(())
	}

	/// Prefills `tokens` at positions `start..` of one sequence (blocks `table`; the tokens
	/// before `start` are already cached), with `adapter` (resident in `pool`) or none. Returns
	/// the logits of the last token, `[vocab]`, on the backend.
	pub fn prefill(
		&self,
		cache: &mut KernelCache<B>,
		tokens: &[u32],
		start: usize,
		table: &[u32],
		adapter: Option<(&B::Pool, &KernelAdapter)>,
	) -> Result<B::Floats> {
		let x = self.prefill_hidden(cache, tokens, start, table, adapter)?;
		// Only the last row's logits: bring its hidden state over (one row of floats).
		let hidden = self.config.hidden_size;
		let all = self.backend.read(&x)?;
		let last = self.backend.floats(&all[(tokens.len() - 1) * hidden..])?;
		self.logits(&last, 1)
	}

	/// [`KernelLlama::prefill`], returning the logits of every position, one row `[vocab]` per
	/// token, on the host (a prompt's log-probabilities).
	pub fn prefill_rows(
		&self,
		cache: &mut KernelCache<B>,
		tokens: &[u32],
		start: usize,
		table: &[u32],
		adapter: Option<(&B::Pool, &KernelAdapter)>,
	) -> Result<Vec<Vec<f32>>> {
		let x = self.prefill_hidden(cache, tokens, start, table, adapter)?;
		let all = self.backend.read(&self.logits(&x, tokens.len())?)?;
		Ok(all.chunks(self.vocab()).map(<[f32]>::to_vec).collect())
	}

	/// Runs `tokens` through the blocks (see [`KernelLlama::prefill`]); returns their hidden
	/// states `[tokens, hidden]` before the final norm.
	fn prefill_hidden(
		&self,
		cache: &mut KernelCache<B>,
		tokens: &[u32],
		start: usize,
		table: &[u32],
		adapter: Option<(&B::Pool, &KernelAdapter)>,
	) -> Result<B::Floats> {
		let n = tokens.len();
		if n == 0 {
			return Err(Error::Request("an empty prefill".into()));
		}
		let last = start
			.checked_add(n - 1)
			.ok_or_else(|| Error::Request(format!("a prefill at position {start}")))?;
		self.check_positions(last)?;
		let slots = Self::slots(cache, table, start..last + 1)?;
		let positions: Vec<u32> = (start..start + n).map(|p| p as u32).collect();
		let table_buf = self.backend.words(table)?;
		let params = self.attention_params();
		let plans: Vec<(usize, &KernelAdapter)> = match adapter {
			Some((_, a)) => (0..n).map(|row| (row, a)).collect(),
			None => Vec::new(),
		};
		let x = self.embed(tokens)?;
		let x = self.blocks(
			cache,
			x,
			n,
			&positions,
			&slots,
			&plans,
			adapter.map(|(p, _)| p),
			|q, cache, l| {
				Ok(self.backend.prefill(
					q,
					&params,
					&cache.k[l],
					&cache.v[l],
					cache.layout,
					&table_buf,
					start,
				)?)
			},
		)?;
		Ok(x)
	}

	/// One decode step for a batch of sequences: each one's next token through the model, its
	/// keys and values cached. Returns the logits `[batch, vocab]` on the backend.
	pub fn decode(
		&self,
		cache: &mut KernelCache<B>,
		batch: &[DecodeInput<'_>],
		pool: Option<&B::Pool>,
	) -> Result<B::Floats> {
		let n = batch.len();
		if n == 0 {
			return Err(Error::Request("an empty decode batch".into()));
		}
		let max_blocks = batch.iter().map(|s| s.table.len()).max().unwrap_or(0).max(1);
		let mut tables = vec![u32::MAX; n * max_blocks];
		let mut tokens = Vec::with_capacity(n);
		let mut positions = Vec::with_capacity(n);
		let mut slots = Vec::with_capacity(n);
		let mut lens = Vec::with_capacity(n);
		let mut plans = Vec::new();
		for (i, s) in batch.iter().enumerate() {
			self.check_positions(s.position)?;
			tables[i * max_blocks..i * max_blocks + s.table.len()].copy_from_slice(s.table);
			tokens.push(s.token);
			positions.push(s.position as u32);
			slots.extend(Self::slots(cache, s.table, s.position..s.position + 1)?);
			lens.push(s.position as u32 + 1);
			if let Some(adapter) = s.adapter {
				if pool.is_none() {
					return Err(Error::Request("an adapter without its pool".into()));
				}
				plans.push((i, adapter));
			}
		}
		let tables = self.backend.words(&tables)?;
		let lens = self.backend.words(&lens)?;
		let params = self.attention_params();
		let x = self.embed(&tokens)?;
		let x = self.blocks(cache, x, n, &positions, &slots, &plans, pool, |q, cache, l| {
			Ok(self.backend.decode(
				q,
				&params,
				&cache.k[l],
				&cache.v[l],
				cache.layout,
				&tables,
				max_blocks,
				&lens,
			)?)
		})?;
		self.logits(&x, n)
	}

	/// Samples a token for each row of `logits` (`[rows, vocab]`) on the backend: only the
	/// chosen tokens and their log-probabilities come back.
	pub fn sample(
		&self,
		logits: &B::Floats,
		params: &[SamplingParams],
		uniform: &[f32],
	) -> Result<Vec<Sampled>> {
		Ok(self.backend.sample(logits, self.vocab(), params, uniform)?)
	}
}

/// Where layer `layer`'s plan for projection `p` is among a step's plans: layer by layer, in
/// [`Projection::ALL`] order.
fn plan_slot(layer: usize, p: Projection) -> usize {
	let index = match p {
		Projection::Q => 0,
		Projection::K => 1,
		Projection::V => 2,
		Projection::O => 3,
		Projection::Gate => 4,
		Projection::Up => 5,
		Projection::Down => 6,
	};
	layer * Projection::ALL.len() + index
}

/// Merges consecutive one-row segments that share an adapter into one segment, so a prefill's
/// rows form SGMV tiles instead of one-row BGMV tiles.
fn coalesce<'a>(
	rows: &[(std::ops::Range<usize>, &'a PagedAdapter)],
) -> Vec<(std::ops::Range<usize>, &'a PagedAdapter)> {
	let mut out: Vec<(std::ops::Range<usize>, &'a PagedAdapter)> = Vec::with_capacity(rows.len());
	for (range, adapter) in rows {
		match out.last_mut() {
			Some((last, a)) if last.end == range.start && std::ptr::eq(*a, *adapter) => {
				last.end = range.end
			}
			_ => out.push((range.clone(), adapter)),
		}
	}
	out
}

/// The rotary tables `[max_positions, head_dim / 2]`, with the model's linear scaling: angle
/// `(p / scale) · θ^(-2i/d)`, computed in f64.
fn rope_tables(config: &LlamaConfig, max_positions: usize) -> (Vec<f32>, Vec<f32>) {
	let d = config.head_dim;
	let half = d / 2;
	let mut cos = Vec::with_capacity(max_positions * half);
	let mut sin = Vec::with_capacity(max_positions * half);
	let inv_freq: Vec<f64> =
		(0..half).map(|i| (config.rope_theta as f64).powf(-((2 * i) as f64) / d as f64)).collect();
	for p in 0..max_positions {
		let p = p as f64 / config.rope_scale as f64;
		for &inv_freq in &inv_freq {
			let angle = p * inv_freq;
			cos.push(angle.cos() as f32);
			sin.push(angle.sin() as f32);
		}
	}
	(cos, sin)
}

/// Floats per adapter pool page for projections of these widths: see [`KernelLlama::page_len`].
fn page_len_for(widths: [usize; 4]) -> usize {
	let total: usize = widths.iter().sum();
	let widest = widths.into_iter().max().unwrap_or(0);
	// (pages, unused floats) of one row of each width, for every multiple of 32 up to the
	// widest width rounded up.
	let candidates = (32..=widest.next_multiple_of(32)).step_by(32).map(|page| {
		let pages: usize = widths.iter().map(|w| w.div_ceil(page)).sum();
		let unused: usize = widths.iter().map(|w| w.div_ceil(page) * page - w).sum();
		(pages, unused, page)
	});
	let fitting = candidates.clone().filter(|&(_, unused, _)| unused * 100 <= total).min();
	match fitting {
		Some((_, _, page)) => page,
		None => candidates.min_by_key(|&(pages, unused, _)| (unused, pages)).map_or(32, |c| c.2),
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn pages_cut_a_row_of_each_width_into_the_fewest_pages_within_one_percent_unused() {
		// SmolLM2-135M: hidden 576, MLP 1536, 9 query heads and 3 key/value heads of 64: their
		// greatest common divisor, nothing unused, 15 pages for one row of each width.
		assert_eq!(page_len_for([576, 1536, 576, 192]), 192);
		// Llama-2-7B: 4096 and 11008 (43 × 256). Pages of 11008 / 8 leave 0.4% unused (a row
		// of 4096 takes 3 pages of 1376) where pages of 256 leave none but take 16 a row.
		assert_eq!(page_len_for([4096, 11008, 4096, 4096]), 1376);
		// With grouped-query attention (key/value rows of 1024) nothing better than 256 fits.
		assert_eq!(page_len_for([4096, 11008, 4096, 1024]), 256);
		// Qwen2-7B: 3584, 18944 and 512 share 512.
		assert_eq!(page_len_for([3584, 18944, 3584, 512]), 512);
		// No multiple of 32 within 1%: the one that leaves least unused.
		assert_eq!(page_len_for([70, 50, 70, 70]), 32);
		assert_eq!(page_len_for([16, 16, 16, 16]), 32);
	}

	#[test]
	fn plan_slots_follow_layers_then_projection_all_order() {
		for layer in [0, 1, 29] {
			for (i, &p) in Projection::ALL.iter().enumerate() {
				assert_eq!(plan_slot(layer, p), layer * Projection::ALL.len() + i);
			}
		}
	}
}
