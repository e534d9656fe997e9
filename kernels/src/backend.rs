//! One interface over the two implementations of every kernel: [`Cpu`] (the references of this
//! crate, over host vectors) and [`Cuda`] (the CUDA kernels, over device buffers).
//!
//! A model written once against [`Backend`] runs on either; on the CPU it checks how the
//! kernels are put together (the layer loop, slot mappings, block tables, adapter plans), and
//! the GPU-against-CPU checks of each kernel (`kernels/tests/gpu`) carry that over to the GPU.

use cudarc::driver::CudaSlice;

use crate::{
	adapter_pool::{self, LoraPlan, PageAllocator, PagedAdapter},
	attention::{self, AttentionParams, BlockTables, KvLayout, PagedKv},
	fused::{self, RopeStyle},
	gpu::{self, Gpu, GpuError},
	quant::{self, Format},
	sampling::{self, Sampled, SamplingParams},
	ShapeError,
};

/// A kernel call that failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
	/// Shapes that do not fit (either backend).
	#[error(transparent)]
	Shape(#[from] ShapeError),
	/// The GPU or its driver.
	#[error(transparent)]
	Gpu(#[from] GpuError),
}

/// What a kernel call returns.
pub type KernelResult<T> = Result<T, KernelError>;

/// The kernels, over buffers of one place (host or device).
pub trait Backend {
	/// A buffer of `f32`.
	type Floats;
	/// A buffer of bytes (quantized weights).
	type Bytes;
	/// A buffer of `u32` (block tables, positions, lengths).
	type Words;
	/// A buffer of `i64` (cache slots).
	type Slots;
	/// The paged adapter pool.
	type Pool;
	/// A step's multi-LoRA plans, made ready together ([`Backend::plans`]).
	type Plans;

	/// A buffer holding `host`.
	fn floats(&self, host: &[f32]) -> KernelResult<Self::Floats>;
	/// A buffer of `len` zeros.
	fn zeros(&self, len: usize) -> KernelResult<Self::Floats>;
	/// A buffer holding `host`.
	fn bytes(&self, host: &[u8]) -> KernelResult<Self::Bytes>;
	/// A buffer holding `host`.
	fn words(&self, host: &[u32]) -> KernelResult<Self::Words>;
	/// A buffer holding `host`.
	fn slots(&self, host: &[i64]) -> KernelResult<Self::Slots>;
	/// `buffer`'s values, on the host.
	fn read(&self, buffer: &Self::Floats) -> KernelResult<Vec<f32>>;
	/// `len` of `buffer`'s values from `start`, on the host (one row of logits, say).
	fn read_range(&self, buffer: &Self::Floats, start: usize, len: usize)
		-> KernelResult<Vec<f32>>;
	/// Copies `len` values of `buffer` from `src` to `dst` (the ranges must not overlap): the
	/// copy of a shared KV cache block before it is written.
	fn copy_within(
		&self,
		buffer: &mut Self::Floats,
		src: usize,
		dst: usize,
		len: usize,
	) -> KernelResult<()>;

	/// `y [n, rows] = x [n, cols] · Wᵀ` for `W` `rows × cols` in `format`.
	#[allow(clippy::too_many_arguments)]
	fn gemv(
		&self,
		format: Format,
		weights: &Self::Bytes,
		rows: usize,
		cols: usize,
		x: &Self::Floats,
		n: usize,
		y: &mut Self::Floats,
	) -> KernelResult<()>;
	/// RMSNorm of each row of `x` (rows of `weight.len()`).
	fn rms_norm(
		&self,
		x: &Self::Floats,
		weight: &Self::Floats,
		eps: f32,
		out: &mut Self::Floats,
	) -> KernelResult<()>;
	/// `residual += x`, then `out` = RMSNorm of `residual`.
	fn add_rms_norm(
		&self,
		residual: &mut Self::Floats,
		x: &Self::Floats,
		weight: &Self::Floats,
		eps: f32,
		out: &mut Self::Floats,
	) -> KernelResult<()>;
	/// Rotary embeddings in place on `x` `[tokens, heads, head_dim]`.
	#[allow(clippy::too_many_arguments)]
	fn rope(
		&self,
		x: &mut Self::Floats,
		heads: usize,
		head_dim: usize,
		positions: &Self::Words,
		cos: &Self::Floats,
		sin: &Self::Floats,
		style: RopeStyle,
	) -> KernelResult<()>;
	/// `out = silu(gate) · up`.
	fn silu_mul(
		&self,
		gate: &Self::Floats,
		up: &Self::Floats,
		out: &mut Self::Floats,
	) -> KernelResult<()>;
	/// `a += b`.
	fn add_assign(&self, a: &mut Self::Floats, b: &Self::Floats) -> KernelResult<()>;
	/// Writes new tokens' keys and values (`[tokens, kv_heads, head_dim]`) at their cache slots.
	#[allow(clippy::too_many_arguments)]
	fn write_kv(
		&self,
		k_cache: &mut Self::Floats,
		v_cache: &mut Self::Floats,
		layout: KvLayout,
		k: &Self::Floats,
		v: &Self::Floats,
		slots: &Self::Slots,
	) -> KernelResult<()>;
	/// Paged decode attention for one query token per sequence: `q` `[seqs, heads, head_dim]`,
	/// `tables` `[seqs, max_blocks]`, `context_lens` `[seqs]`.
	#[allow(clippy::too_many_arguments)]
	fn decode(
		&self,
		q: &Self::Floats,
		params: &AttentionParams,
		k_cache: &Self::Floats,
		v_cache: &Self::Floats,
		layout: KvLayout,
		tables: &Self::Words,
		max_blocks: usize,
		context_lens: &Self::Words,
	) -> KernelResult<Self::Floats>;
	/// Flash-style prefill attention for `q` `[tokens, heads, head_dim]` at positions
	/// `start..start + tokens` of the sequence whose blocks are `table`.
	#[allow(clippy::too_many_arguments)]
	fn prefill(
		&self,
		q: &Self::Floats,
		params: &AttentionParams,
		k_cache: &Self::Floats,
		v_cache: &Self::Floats,
		layout: KvLayout,
		table: &Self::Words,
		start: usize,
	) -> KernelResult<Self::Floats>;
	/// Samples one token per row of `logits` (`[rows, vocab]`).
	fn sample(
		&self,
		logits: &Self::Floats,
		vocab: usize,
		params: &[SamplingParams],
		uniform: &[f32],
	) -> KernelResult<Vec<Sampled>>;

	/// A pool of `num_pages` adapter pages of `page_len` floats.
	fn pool(&self, page_len: usize, num_pages: u32) -> KernelResult<Self::Pool>;
	/// Puts one adapter pair (`a` `[rank, in_dim]`, `b_t` = `s·Bᵀ` `[rank, out_dim]`) into
	/// the pool.
	fn upload_adapter(
		&self,
		pool: &mut Self::Pool,
		a: &[f32],
		in_dim: usize,
		b_t: &[f32],
		out_dim: usize,
	) -> KernelResult<PagedAdapter>;
	/// Gives an adapter's pages back.
	fn release_adapter(&self, pool: &mut Self::Pool, adapter: &PagedAdapter) -> KernelResult<()>;
	/// Pages of `pool` not holding an adapter.
	fn free_pages(&self, pool: &Self::Pool) -> usize;
	/// Makes `plans` ready for [`Backend::add_lora`] over `pool`: on a GPU every plan of a step
	/// (one per layer and projection) goes over the bus in one copy, and one shrunk buffer serves
	/// them all.
	fn plans(&self, pool: &Self::Pool, plans: Vec<LoraPlan>) -> KernelResult<Self::Plans>;
	/// `y += x · Aᵀ · (s·Bᵀ)` on the rows plan `which` of `plans` names, each with its adapter.
	#[allow(clippy::too_many_arguments)]
	fn add_lora(
		&self,
		pool: &Self::Pool,
		plans: &mut Self::Plans,
		which: usize,
		x: &Self::Floats,
		in_dim: usize,
		y: &mut Self::Floats,
		out_dim: usize,
	) -> KernelResult<()>;
}

/// The plan `which` of a step's `count` plans, or a shape error.
fn plan_index(which: usize, count: usize) -> Result<usize, ShapeError> {
	if which < count {
		Ok(which)
	} else {
		Err(ShapeError(format!("plan {which} of {count}")))
	}
}

/// A step's plans on the GPU: their arrays in one device buffer, and the shrunk buffer they
/// share (sized for the largest).
pub struct CudaPlans {
	plans: Vec<gpu::lora::DevicePlan>,
	shrunk: CudaSlice<f32>,
}

/// Checks that `start..start + len` lies in a buffer of `buffer_len`.
fn check_range(buffer_len: usize, start: usize, len: usize) -> Result<(), ShapeError> {
	match start.checked_add(len) {
		Some(end) if end <= buffer_len => Ok(()),
		_ => Err(ShapeError(format!("{len} values from {start} of a buffer of {buffer_len}"))),
	}
}

/// Checks a [`Backend::copy_within`] of `len` values from `src` to `dst` in a buffer of
/// `buffer_len`: both ranges inside it, and apart.
fn check_copy(buffer_len: usize, src: usize, dst: usize, len: usize) -> Result<(), ShapeError> {
	let inside = |at: usize| check_range(buffer_len, at, len).is_ok();
	if !inside(src) || !inside(dst) || (src < dst + len && dst < src + len && len > 0) {
		return Err(ShapeError(format!(
			"copy of {len} values from {src} to {dst} in a buffer of {buffer_len}"
		)));
	}
	Ok(())
}

/// The CPU references, over host vectors.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

/// A host adapter pool.
#[derive(Clone, Debug)]
pub struct CpuPool {
	values: Vec<f32>,
	page_len: usize,
	pages: PageAllocator,
}

impl Backend for Cpu {
	type Floats = Vec<f32>;
	type Bytes = Vec<u8>;
	type Words = Vec<u32>;
	type Slots = Vec<i64>;
	type Pool = CpuPool;
	type Plans = Vec<LoraPlan>;

	fn floats(&self, host: &[f32]) -> KernelResult<Vec<f32>> {
		Ok(host.to_vec())
	}
	fn zeros(&self, len: usize) -> KernelResult<Vec<f32>> {
		Ok(vec![0.0; len])
	}
	fn bytes(&self, host: &[u8]) -> KernelResult<Vec<u8>> {
		Ok(host.to_vec())
	}
	fn words(&self, host: &[u32]) -> KernelResult<Vec<u32>> {
		Ok(host.to_vec())
	}
	fn slots(&self, host: &[i64]) -> KernelResult<Vec<i64>> {
		Ok(host.to_vec())
	}
	fn copy_within(
		&self,
		buffer: &mut Vec<f32>,
		src: usize,
		dst: usize,
		len: usize,
	) -> KernelResult<()> {
		check_copy(buffer.len(), src, dst, len)?;
		buffer.copy_within(src..src + len, dst);
		Ok(())
	}
	fn read_range(&self, buffer: &Vec<f32>, start: usize, len: usize) -> KernelResult<Vec<f32>> {
		check_range(buffer.len(), start, len)?;
		Ok(buffer[start..start + len].to_vec())
	}
	fn read(&self, buffer: &Vec<f32>) -> KernelResult<Vec<f32>> {
		Ok(buffer.clone())
	}

	fn gemv(
		&self,
		format: Format,
		weights: &Vec<u8>,
		rows: usize,
		cols: usize,
		x: &Vec<f32>,
		n: usize,
		y: &mut Vec<f32>,
	) -> KernelResult<()> {
		if x.len() != n * cols || y.len() != n * rows {
			return Err(ShapeError(format!(
				"gemv of {n} rows: x has {} values for {cols} columns, y {} for {rows}",
				x.len(),
				y.len()
			))
			.into());
		}
		Ok(quant::gemm(format, weights, rows, cols, x, y)?)
	}
	fn rms_norm(
		&self,
		x: &Vec<f32>,
		weight: &Vec<f32>,
		eps: f32,
		out: &mut Vec<f32>,
	) -> KernelResult<()> {
		Ok(fused::rms_norm(x, weight, eps, out)?)
	}
	fn add_rms_norm(
		&self,
		residual: &mut Vec<f32>,
		x: &Vec<f32>,
		weight: &Vec<f32>,
		eps: f32,
		out: &mut Vec<f32>,
	) -> KernelResult<()> {
		Ok(fused::add_rms_norm(residual, x, weight, eps, out)?)
	}
	fn rope(
		&self,
		x: &mut Vec<f32>,
		heads: usize,
		head_dim: usize,
		positions: &Vec<u32>,
		cos: &Vec<f32>,
		sin: &Vec<f32>,
		style: RopeStyle,
	) -> KernelResult<()> {
		Ok(fused::rope(x, heads, head_dim, positions, cos, sin, style)?)
	}
	fn silu_mul(&self, gate: &Vec<f32>, up: &Vec<f32>, out: &mut Vec<f32>) -> KernelResult<()> {
		Ok(fused::silu_mul_split(gate, up, out)?)
	}
	fn add_assign(&self, a: &mut Vec<f32>, b: &Vec<f32>) -> KernelResult<()> {
		Ok(fused::add_assign(a, b)?)
	}
	fn write_kv(
		&self,
		k_cache: &mut Vec<f32>,
		v_cache: &mut Vec<f32>,
		layout: KvLayout,
		k: &Vec<f32>,
		v: &Vec<f32>,
		slots: &Vec<i64>,
	) -> KernelResult<()> {
		Ok(attention::write_kv(k_cache, v_cache, layout, k, v, slots)?)
	}
	fn decode(
		&self,
		q: &Vec<f32>,
		params: &AttentionParams,
		k_cache: &Vec<f32>,
		v_cache: &Vec<f32>,
		layout: KvLayout,
		tables: &Vec<u32>,
		max_blocks: usize,
		context_lens: &Vec<u32>,
	) -> KernelResult<Vec<f32>> {
		let cache = PagedKv::new(k_cache, v_cache, layout)?;
		let tables = BlockTables { tables, max_blocks_per_seq: max_blocks, context_lens };
		let mut out = vec![0.0; q.len()];
		attention::decode(
			q,
			params,
			&cache,
			&tables,
			gpu::attention::DECODE_PARTITION_SIZE,
			&mut out,
		)?;
		Ok(out)
	}
	fn prefill(
		&self,
		q: &Vec<f32>,
		params: &AttentionParams,
		k_cache: &Vec<f32>,
		v_cache: &Vec<f32>,
		layout: KvLayout,
		table: &Vec<u32>,
		start: usize,
	) -> KernelResult<Vec<f32>> {
		let cache = PagedKv::new(k_cache, v_cache, layout)?;
		let mut out = vec![0.0; q.len()];
		let tiles = gpu::attention::prefill_tiles(layout.head_dim);
		attention::prefill(q, params, &cache, table, start, tiles, &mut out)?;
		Ok(out)
	}
	fn sample(
		&self,
		logits: &Vec<f32>,
		vocab: usize,
		params: &[SamplingParams],
		uniform: &[f32],
	) -> KernelResult<Vec<Sampled>> {
		Ok(sampling::sample(logits, vocab, params, uniform)?)
	}

	fn pool(&self, page_len: usize, num_pages: u32) -> KernelResult<CpuPool> {
		let len = page_len
			.checked_mul(num_pages as usize)
			.ok_or_else(|| ShapeError(format!("{num_pages} pages of {page_len}")))?;
		Ok(CpuPool { values: vec![0.0; len], page_len, pages: PageAllocator::new(num_pages) })
	}
	fn upload_adapter(
		&self,
		pool: &mut CpuPool,
		a: &[f32],
		in_dim: usize,
		b_t: &[f32],
		out_dim: usize,
	) -> KernelResult<PagedAdapter> {
		if in_dim == 0 || !a.len().is_multiple_of(in_dim) {
			return Err(ShapeError(format!("A of {} values for rows of {in_dim}", a.len())).into());
		}
		let rank = a.len() / in_dim;
		let adapter = pool.pages.allocate_adapter(rank, (in_dim, out_dim), pool.page_len)?;
		if let Err(e) = adapter_pool::write_rows(&mut pool.values, pool.page_len, &adapter, a, b_t)
		{
			pool.pages.release(adapter.pages())?;
			return Err(e.into());
		}
		Ok(adapter)
	}
	fn release_adapter(&self, pool: &mut CpuPool, adapter: &PagedAdapter) -> KernelResult<()> {
		Ok(pool.pages.release(adapter.pages())?)
	}
	fn free_pages(&self, pool: &CpuPool) -> usize {
		pool.pages.free_pages()
	}
	fn plans(&self, _pool: &CpuPool, plans: Vec<LoraPlan>) -> KernelResult<Vec<LoraPlan>> {
		Ok(plans)
	}

	fn add_lora(
		&self,
		pool: &CpuPool,
		plans: &mut Vec<LoraPlan>,
		which: usize,
		x: &Vec<f32>,
		in_dim: usize,
		y: &mut Vec<f32>,
		out_dim: usize,
	) -> KernelResult<()> {
		let plan = &plans[plan_index(which, plans.len())?];
		let mut shrunk = vec![0.0; plan.rows * plan.max_rank];
		adapter_pool::shrink(&pool.values, pool.page_len, plan, x, in_dim, &mut shrunk)?;
		Ok(adapter_pool::expand(&pool.values, pool.page_len, plan, &shrunk, y, out_dim)?)
	}
}

/// The CUDA kernels, over device buffers, on one [`Gpu`].
#[derive(Debug)]
pub struct Cuda {
	gpu: Gpu,
}

impl Cuda {
	/// Runs the kernels on `gpu`.
	pub fn new(gpu: Gpu) -> Self {
		Self { gpu }
	}

	/// The device.
	pub fn gpu(&self) -> &Gpu {
		&self.gpu
	}
}

impl Backend for Cuda {
	type Floats = CudaSlice<f32>;
	type Bytes = CudaSlice<u8>;
	type Words = CudaSlice<u32>;
	type Slots = CudaSlice<i64>;
	type Pool = gpu::lora::DeviceAdapterPool;
	type Plans = CudaPlans;

	fn floats(&self, host: &[f32]) -> KernelResult<CudaSlice<f32>> {
		Ok(self.gpu.upload(host)?)
	}
	fn zeros(&self, len: usize) -> KernelResult<CudaSlice<f32>> {
		Ok(self.gpu.zeros(len)?)
	}
	fn bytes(&self, host: &[u8]) -> KernelResult<CudaSlice<u8>> {
		Ok(self.gpu.upload(host)?)
	}
	fn words(&self, host: &[u32]) -> KernelResult<CudaSlice<u32>> {
		Ok(self.gpu.upload(host)?)
	}
	fn slots(&self, host: &[i64]) -> KernelResult<CudaSlice<i64>> {
		Ok(self.gpu.upload(host)?)
	}
	fn read(&self, buffer: &CudaSlice<f32>) -> KernelResult<Vec<f32>> {
		Ok(self.gpu.download(buffer)?)
	}
	fn read_range(
		&self,
		buffer: &CudaSlice<f32>,
		start: usize,
		len: usize,
	) -> KernelResult<Vec<f32>> {
		check_range(buffer.len(), start, len)?;
		let view = buffer.slice(start..start + len);
		Ok(self.gpu.stream().clone_dtoh(&view).map_err(GpuError::from)?)
	}
	fn copy_within(
		&self,
		buffer: &mut CudaSlice<f32>,
		src: usize,
		dst: usize,
		len: usize,
	) -> KernelResult<()> {
		check_copy(buffer.len(), src, dst, len)?;
		// Through a scratch buffer: a view to read and one to write of the same allocation
		// cannot be borrowed together. Only copy-on-write of a shared block comes here.
		let stream = self.gpu.stream();
		let scratch = stream.clone_dtod(&buffer.slice(src..src + len)).map_err(GpuError::from)?;
		stream
			.memcpy_dtod(&scratch, &mut buffer.slice_mut(dst..dst + len))
			.map_err(GpuError::from)?;
		Ok(())
	}

	fn gemv(
		&self,
		format: Format,
		weights: &CudaSlice<u8>,
		rows: usize,
		cols: usize,
		x: &CudaSlice<f32>,
		n: usize,
		y: &mut CudaSlice<f32>,
	) -> KernelResult<()> {
		Ok(gpu::quant::gemv(&self.gpu, format, weights, rows, cols, x, n, y)?)
	}
	fn rms_norm(
		&self,
		x: &CudaSlice<f32>,
		weight: &CudaSlice<f32>,
		eps: f32,
		out: &mut CudaSlice<f32>,
	) -> KernelResult<()> {
		Ok(gpu::fused::rms_norm(&self.gpu, x, weight, eps, out)?)
	}
	fn add_rms_norm(
		&self,
		residual: &mut CudaSlice<f32>,
		x: &CudaSlice<f32>,
		weight: &CudaSlice<f32>,
		eps: f32,
		out: &mut CudaSlice<f32>,
	) -> KernelResult<()> {
		Ok(gpu::fused::add_rms_norm(&self.gpu, residual, x, weight, eps, out)?)
	}
	fn rope(
		&self,
		x: &mut CudaSlice<f32>,
		heads: usize,
		head_dim: usize,
		positions: &CudaSlice<u32>,
		cos: &CudaSlice<f32>,
		sin: &CudaSlice<f32>,
		style: RopeStyle,
	) -> KernelResult<()> {
		Ok(gpu::fused::rope(&self.gpu, x, heads, head_dim, positions, cos, sin, style)?)
	}
	fn silu_mul(
		&self,
		gate: &CudaSlice<f32>,
		up: &CudaSlice<f32>,
		out: &mut CudaSlice<f32>,
	) -> KernelResult<()> {
		Ok(gpu::fused::silu_mul_split(&self.gpu, gate, up, out)?)
	}
	fn add_assign(&self, a: &mut CudaSlice<f32>, b: &CudaSlice<f32>) -> KernelResult<()> {
		Ok(gpu::fused::add_assign(&self.gpu, a, b)?)
	}
	fn write_kv(
		&self,
		k_cache: &mut CudaSlice<f32>,
		v_cache: &mut CudaSlice<f32>,
		layout: KvLayout,
		k: &CudaSlice<f32>,
		v: &CudaSlice<f32>,
		slots: &CudaSlice<i64>,
	) -> KernelResult<()> {
		Ok(gpu::attention::write_kv(&self.gpu, k_cache, v_cache, layout, k, v, slots)?)
	}
	fn decode(
		&self,
		q: &CudaSlice<f32>,
		params: &AttentionParams,
		k_cache: &CudaSlice<f32>,
		v_cache: &CudaSlice<f32>,
		layout: KvLayout,
		tables: &CudaSlice<u32>,
		max_blocks: usize,
		context_lens: &CudaSlice<u32>,
	) -> KernelResult<CudaSlice<f32>> {
		let cache = gpu::attention::GpuPagedKv::new(k_cache, v_cache, layout)?;
		let tables =
			gpu::attention::GpuBlockTables { tables, max_blocks_per_seq: max_blocks, context_lens };
		Ok(gpu::attention::decode(
			&self.gpu,
			q,
			params,
			&cache,
			&tables,
			gpu::attention::DECODE_PARTITION_SIZE,
		)?)
	}
	fn prefill(
		&self,
		q: &CudaSlice<f32>,
		params: &AttentionParams,
		k_cache: &CudaSlice<f32>,
		v_cache: &CudaSlice<f32>,
		layout: KvLayout,
		table: &CudaSlice<u32>,
		start: usize,
	) -> KernelResult<CudaSlice<f32>> {
		let cache = gpu::attention::GpuPagedKv::new(k_cache, v_cache, layout)?;
		Ok(gpu::attention::prefill(&self.gpu, q, params, &cache, table, start)?)
	}
	fn sample(
		&self,
		logits: &CudaSlice<f32>,
		vocab: usize,
		params: &[SamplingParams],
		uniform: &[f32],
	) -> KernelResult<Vec<Sampled>> {
		if params.is_empty() {
			// The CPU reference's answer for no rows (after the same shape check).
			sampling::check(logits.len(), vocab, params, uniform)?;
			return Ok(Vec::new());
		}
		let mut tokens = self.gpu.zeros::<u32>(params.len())?;
		let mut logprobs = self.gpu.zeros::<f32>(params.len())?;
		gpu::sampling::sample(
			&self.gpu,
			logits,
			vocab,
			params,
			uniform,
			&mut tokens,
			&mut logprobs,
		)?;
		let tokens = self.gpu.download(&tokens)?;
		let logprobs = self.gpu.download(&logprobs)?;
		Ok(tokens
			.into_iter()
			.zip(logprobs)
			.map(|(token, logprob)| Sampled { token, logprob })
			.collect())
	}

	fn pool(&self, page_len: usize, num_pages: u32) -> KernelResult<Self::Pool> {
		Ok(gpu::lora::DeviceAdapterPool::new(&self.gpu, page_len, num_pages)?)
	}
	fn upload_adapter(
		&self,
		pool: &mut Self::Pool,
		a: &[f32],
		in_dim: usize,
		b_t: &[f32],
		out_dim: usize,
	) -> KernelResult<PagedAdapter> {
		Ok(pool.upload(&self.gpu, a, in_dim, b_t, out_dim)?)
	}
	fn release_adapter(&self, pool: &mut Self::Pool, adapter: &PagedAdapter) -> KernelResult<()> {
		Ok(pool.release(adapter)?)
	}
	fn free_pages(&self, pool: &Self::Pool) -> usize {
		pool.free_pages()
	}
	fn plans(&self, pool: &Self::Pool, plans: Vec<LoraPlan>) -> KernelResult<CudaPlans> {
		let shrunk_len = plans.iter().map(|p| p.rows * p.max_rank).max().unwrap_or(0).max(1);
		Ok(CudaPlans {
			plans: gpu::lora::DevicePlan::upload_all(&self.gpu, pool, &plans)?,
			// Never read where not written: the shrink writes every entry the expand reads.
			shrunk: self.gpu.zeros::<f32>(shrunk_len)?,
		})
	}

	fn add_lora(
		&self,
		pool: &Self::Pool,
		plans: &mut CudaPlans,
		which: usize,
		x: &CudaSlice<f32>,
		in_dim: usize,
		y: &mut CudaSlice<f32>,
		out_dim: usize,
	) -> KernelResult<()> {
		let plan = &plans.plans[plan_index(which, plans.plans.len())?];
		gpu::lora::shrink(&self.gpu, pool, plan, x, in_dim, &mut plans.shrunk)?;
		Ok(gpu::lora::expand(&self.gpu, pool, plan, &plans.shrunk, y, out_dim)?)
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn copy_within_copies_one_range_and_refuses_overlaps_and_overruns() {
		let mut buffer: Vec<f32> = (0..10).map(|i| i as f32).collect();
		Cpu.copy_within(&mut buffer, 1, 6, 3).unwrap();
		assert_eq!(buffer, [0., 1., 2., 3., 4., 5., 1., 2., 3., 9.]);
		for (src, dst, len) in [(0, 2, 3), (2, 0, 3), (8, 0, 3), (0, 8, 3), (usize::MAX, 0, 2)] {
			let before = buffer.clone();
			assert!(Cpu.copy_within(&mut buffer, src, dst, len).is_err(), "{src}->{dst} x{len}");
			assert_eq!(buffer, before, "a refused copy changes nothing");
		}
		Cpu.copy_within(&mut buffer, 3, 3, 0).unwrap();
	}

	#[test]
	fn read_range_reads_one_range_and_refuses_overruns() {
		let buffer: Vec<f32> = (0..10).map(|i| i as f32).collect();
		assert_eq!(Cpu.read_range(&buffer, 3, 4).unwrap(), [3., 4., 5., 6.]);
		assert_eq!(Cpu.read_range(&buffer, 10, 0).unwrap(), [] as [f32; 0]);
		for (start, len) in [(8, 3), (11, 0), (usize::MAX, 2)] {
			assert!(Cpu.read_range(&buffer, start, len).is_err(), "{start} x{len}");
		}
	}

	#[test]
	fn add_lora_applies_the_plan_it_is_given_and_refuses_one_past_the_step() {
		let mut pool = Cpu.pool(4, 4).unwrap();
		// Rank 1: A = [1, 0, 0, 0] (4 inputs), s·Bᵀ = [2, 3] (2 outputs).
		let adapter = Cpu.upload_adapter(&mut pool, &[1., 0., 0., 0.], 4, &[2., 3.], 2).unwrap();
		let plans =
			vec![LoraPlan::new(2, &[]).unwrap(), LoraPlan::new(2, &[(1..2, &adapter)]).unwrap()];
		let mut plans = Cpu.plans(&pool, plans).unwrap();
		let x = vec![9., 9., 9., 9., 5., 7., 7., 7.];
		let mut y = vec![0.; 4];
		Cpu.add_lora(&pool, &mut plans, 0, &x, 4, &mut y, 2).unwrap();
		assert_eq!(y, [0., 0., 0., 0.], "the empty plan adds nothing");
		Cpu.add_lora(&pool, &mut plans, 1, &x, 4, &mut y, 2).unwrap();
		assert_eq!(y, [0., 0., 10., 15.], "row 1 gets x·A = 5 times s·Bᵀ, row 0 nothing");
		assert!(Cpu.add_lora(&pool, &mut plans, 2, &x, 4, &mut y, 2).is_err());
	}

	#[test]
	fn free_pages_counts_what_adapters_hold() {
		let mut pool = Cpu.pool(8, 10).unwrap();
		assert_eq!(Cpu.free_pages(&pool), 10);
		let adapter = Cpu.upload_adapter(&mut pool, &[1.0; 2 * 4], 4, &[1.0; 2 * 3], 3).unwrap();
		assert_eq!(Cpu.free_pages(&pool), 6);
		Cpu.release_adapter(&mut pool, &adapter).unwrap();
		assert_eq!(Cpu.free_pages(&pool), 10);
	}
}
