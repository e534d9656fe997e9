//! Launchers for `kernels/cuda/attention.cu`: the paged KV cache write, paged decode attention
//! (partitions, then a reduce) and flash-style prefill, over the cache layout of
//! [`crate::attention`].

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{as_i32, expect_len, Gpu, GpuError, ATTENTION};
use crate::attention::{AttentionParams, KvLayout, PrefillTiles};

/// The keys per partition of [`decode`] that the worker uses.
pub const DECODE_PARTITION_SIZE: usize = 512;

/// The largest head dimension the kernels take.
pub const MAX_HEAD_DIM: usize = 256;

/// Threads per block of the decode and reduce kernels (`DECODE_THREADS` in the source).
const DECODE_THREADS: u32 = 128;
/// Threads per block of the prefill kernel (`PREFILL_THREADS`).
const PREFILL_THREADS: u32 = 128;
/// Query rows per prefill tile (`PREFILL_BR`).
const PREFILL_QUERY_ROWS: usize = 16;
/// The dynamic shared memory a kernel may use without a function attribute.
const SHARED_LIMIT: usize = 48 * 1024;
/// The largest grid y and z dimensions.
const GRID_YZ_LIMIT: usize = 65535;

/// The tiles [`prefill`] uses for `head_dim`: 16 query rows, and the largest key tile of 32,
/// 16 or 8 keys whose shared memory (Q `[16, d]`, K `[Bc, d + 1]`, V `[Bc, d]` floats) stays
/// within 48 KiB: 32 keys up to `head_dim` 153, 16 up to 255, 8 for 256.
pub fn prefill_tiles(head_dim: usize) -> PrefillTiles {
	let key_cols = [32, 16, 8]
		.into_iter()
		.find(|&bc| prefill_shared(head_dim, bc) <= SHARED_LIMIT)
		.unwrap_or(8);
	PrefillTiles { query_rows: PREFILL_QUERY_ROWS, key_cols }
}

fn prefill_shared(head_dim: usize, bc: usize) -> usize {
	(PREFILL_QUERY_ROWS * head_dim + bc * (head_dim + 1) + bc * head_dim) * 4
}

/// One layer's K and V caches on the device, checked against their layout.
#[derive(Clone, Copy, Debug)]
pub struct GpuPagedKv<'a> {
	k: &'a CudaSlice<f32>,
	v: &'a CudaSlice<f32>,
	layout: KvLayout,
	num_blocks: usize,
}

impl<'a> GpuPagedKv<'a> {
	/// The caches `k` and `v`, each `[num_blocks, block_size, num_kv_heads, head_dim]`.
	pub fn new(
		k: &'a CudaSlice<f32>,
		v: &'a CudaSlice<f32>,
		layout: KvLayout,
	) -> Result<Self, GpuError> {
		let num_blocks = check_cache(k.len(), v.len(), &layout)?;
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
}

/// The block tables and context lengths of a decode batch on the device.
#[derive(Clone, Copy, Debug)]
pub struct GpuBlockTables<'a> {
	/// `[num_seqs, max_blocks_per_seq]`: each sequence's blocks, in order.
	pub tables: &'a CudaSlice<u32>,
	/// The width of a row of `tables`.
	pub max_blocks_per_seq: usize,
	/// `[num_seqs]`: each sequence's context length (its query is at position `len - 1`; 0
	/// gives zeros; a length past the table's capacity is cut to the capacity).
	pub context_lens: &'a CudaSlice<u32>,
}

/// Checks a cache pair against `layout` (and that the kernels' int indices fit), returning the
/// number of blocks.
fn check_cache(k_len: usize, v_len: usize, layout: &KvLayout) -> Result<usize, GpuError> {
	if k_len != v_len {
		return Err(GpuError::Shape(format!(
			"the K cache has {k_len} values, the V cache {v_len}"
		)));
	}
	let num_blocks = layout.num_blocks(k_len).map_err(|e| GpuError::Shape(e.0))?;
	if layout.head_dim > MAX_HEAD_DIM {
		return Err(GpuError::Shape(format!(
			"head_dim {} over the kernels' {MAX_HEAD_DIM}",
			layout.head_dim
		)));
	}
	as_i32("num_blocks · block_size", num_blocks * layout.block_size)?;
	as_i32("num_kv_heads · head_dim", layout.row_len())?;
	Ok(num_blocks)
}

fn group(params: &AttentionParams, layout: &KvLayout) -> Result<usize, GpuError> {
	params.group(layout).map_err(|e| GpuError::Shape(e.0))
}

/// The kernels' `window` argument: 0 for none; a window past any int position is as good as
/// none, and is cut to `i32::MAX`.
fn window_arg(params: &AttentionParams) -> i32 {
	params.window.map_or(0, |w| w.min(i32::MAX as usize) as i32)
}

/// The cache write (vLLM's `reshape_and_cache`): each token's K and V rows (`k`, `v`:
/// `[num_tokens, num_kv_heads, head_dim]`) go to the caches at slot `slot_mapping[token]`
/// (`block · block_size + offset`; negative: skipped). Slots must be distinct; a slot past the
/// cache is skipped on the device.
pub fn write_kv(
	gpu: &Gpu,
	k_cache: &mut CudaSlice<f32>,
	v_cache: &mut CudaSlice<f32>,
	layout: KvLayout,
	k: &CudaSlice<f32>,
	v: &CudaSlice<f32>,
	slot_mapping: &CudaSlice<i64>,
) -> Result<(), GpuError> {
	let num_blocks = check_cache(k_cache.len(), v_cache.len(), &layout)?;
	let tokens = slot_mapping.len();
	let row = layout.row_len();
	expect_len("k", k, tokens * row)?;
	expect_len("v", v, tokens * row)?;
	if tokens == 0 {
		return Ok(());
	}
	let num_slots = as_i32("num_slots", num_blocks * layout.block_size)?;
	let row_i32 = as_i32("row_len", row)?;
	let grid = u32::try_from(tokens)
		.map_err(|_| GpuError::Shape(format!("{tokens} tokens in one launch")))?;
	let f = gpu.function(&ATTENTION, "write_kv")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch
		.arg(k)
		.arg(v)
		.arg(slot_mapping)
		.arg(&mut *k_cache)
		.arg(&mut *v_cache)
		.arg(&num_slots)
		.arg(&row_i32);
	// SAFETY: the arguments follow write_kv's signature (k, v, slot_mapping, k_cache, v_cache,
	// num_slots, row_len) with the lengths checked above: one block per token reads its own
	// row of k/v and writes within the caches (slots past num_slots are skipped).
	unsafe {
		launch.launch(LaunchConfig {
			grid_dim: (grid, 1, 1),
			block_dim: (128, 1, 1),
			shared_mem_bytes: 0,
		})
	}?;
	Ok(())
}

/// Paged decode attention (vLLM's v2): the attention of `q` (`[num_seqs, num_heads,
/// head_dim]`, sequence `s`'s query at position `context_lens[s] - 1`) over each sequence's
/// visible keys, by partitions of `partition_size` keys ([`DECODE_PARTITION_SIZE`] in the
/// worker) then a reduce. Returns `[num_seqs, num_heads, head_dim]`.
pub fn decode(
	gpu: &Gpu,
	q: &CudaSlice<f32>,
	params: &AttentionParams,
	cache: &GpuPagedKv<'_>,
	tables: &GpuBlockTables<'_>,
	partition_size: usize,
) -> Result<CudaSlice<f32>, GpuError> {
	let layout = cache.layout;
	group(params, &layout)?;
	let hd = layout.head_dim;
	let num_seqs = tables.context_lens.len();
	let width = tables.max_blocks_per_seq;
	if num_seqs == 0 || num_seqs > GRID_YZ_LIMIT || params.num_heads > GRID_YZ_LIMIT {
		return Err(GpuError::Shape(format!(
			"{num_seqs} sequences of {} heads in one decode launch",
			params.num_heads
		)));
	}
	if width == 0 || partition_size == 0 {
		return Err(GpuError::Shape(format!(
			"block tables {width} wide, partitions of {partition_size} keys"
		)));
	}
	expect_len("block tables", tables.tables, num_seqs * width)?;
	expect_len("q", q, num_seqs * params.num_heads * hd)?;
	// The longest span of visible keys: the table's capacity, or the window.
	let capacity = width * layout.block_size;
	as_i32("max_blocks_per_seq · block_size + partition_size", capacity + partition_size)?;
	let span = params.window.map_or(capacity, |w| w.min(capacity));
	let max_partitions = span.div_ceil(partition_size);
	if max_partitions > GRID_YZ_LIMIT {
		return Err(GpuError::Shape(format!("{max_partitions} partitions in one decode launch")));
	}
	let q_stride = hd.div_ceil(4) * 4;
	// The partition's key rows (i64, an even count of floats' room), q, reductions, logits.
	let decode_shared =
		(2 * partition_size.next_multiple_of(2) + q_stride + 32 + partition_size) * 4;
	let reduce_shared = (max_partitions + 32) * 4;
	if decode_shared > SHARED_LIMIT || reduce_shared > SHARED_LIMIT {
		return Err(GpuError::Shape(format!(
			"partitions of {partition_size} keys ({max_partitions} of them) need more than \
			 48 KiB of shared memory"
		)));
	}

	let num_blocks = as_i32("num_blocks", cache.num_blocks)?;
	let block_size = as_i32("block_size", layout.block_size)?;
	let num_kv_heads = as_i32("num_kv_heads", layout.num_kv_heads)?;
	let head_dim = as_i32("head_dim", hd)?;
	let width_i32 = as_i32("max_blocks_per_seq", width)?;
	let num_heads = as_i32("num_heads", params.num_heads)?;
	let window = window_arg(params);
	let partition_i32 = as_i32("partition_size", partition_size)?;
	let partitions_i32 = as_i32("max_partitions", max_partitions)?;
	let scratch = num_seqs * params.num_heads * max_partitions;
	// SAFETY: the decode writes the scratch of every partition that holds keys, the only ones
	// the reduce reads (both count them alike from the context length and the window), and
	// the reduce writes all of out (zeros for a sequence without keys). Not zero-filled: that
	// would be a pass over all of them each call for nothing.
	let (mut exp_sums, mut max_logits, mut partial, mut out) = unsafe {
		(
			gpu.uninit::<f32>(scratch)?,
			gpu.uninit::<f32>(scratch)?,
			gpu.uninit::<f32>(scratch * hd)?,
			gpu.uninit::<f32>(num_seqs * params.num_heads * hd)?,
		)
	};

	let f = gpu.function(&ATTENTION, "paged_attention_decode")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch
		.arg(q)
		.arg(cache.k)
		.arg(cache.v)
		.arg(&num_blocks)
		.arg(&block_size)
		.arg(&num_kv_heads)
		.arg(&head_dim)
		.arg(tables.tables)
		.arg(&width_i32)
		.arg(tables.context_lens)
		.arg(&num_heads)
		.arg(&params.scale)
		.arg(&window)
		.arg(&partition_i32)
		.arg(&partitions_i32)
		.arg(&mut exp_sums)
		.arg(&mut max_logits)
		.arg(&mut partial);
	// SAFETY: the arguments follow paged_attention_decode's signature; q, the caches and the
	// tables were checked against the shapes passed, the scratch buffers hold [num_seqs,
	// num_heads, max_partitions(, head_dim)] for the grid (num_heads, num_seqs,
	// max_partitions), and the dynamic shared memory is the key row, q, reduction and logit
	// space the kernel lays out (under 48 KiB).
	unsafe {
		launch.launch(LaunchConfig {
			grid_dim: (params.num_heads as u32, num_seqs as u32, max_partitions as u32),
			block_dim: (DECODE_THREADS, 1, 1),
			shared_mem_bytes: decode_shared as u32,
		})
	}?;

	let f = gpu.function(&ATTENTION, "paged_attention_reduce")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch
		.arg(&exp_sums)
		.arg(&max_logits)
		.arg(&partial)
		.arg(tables.context_lens)
		.arg(&width_i32)
		.arg(&block_size)
		.arg(&num_heads)
		.arg(&head_dim)
		.arg(&window)
		.arg(&partition_i32)
		.arg(&partitions_i32)
		.arg(&mut out);
	// SAFETY: the arguments follow paged_attention_reduce's signature; it reads the scratch
	// written above (only the partitions each sequence's context has, at most max_partitions)
	// and writes out [num_seqs, num_heads, head_dim] over the grid (num_heads, num_seqs); the
	// shared memory is max_partitions weights plus 32 floats for the reductions.
	unsafe {
		launch.launch(LaunchConfig {
			grid_dim: (params.num_heads as u32, num_seqs as u32, 1),
			block_dim: (DECODE_THREADS, 1, 1),
			shared_mem_bytes: reduce_shared as u32,
		})
	}?;
	Ok(out)
}

/// Flash-style prefill for one sequence: the attention of `q` (`[num_tokens, num_heads,
/// head_dim]`, at positions `start..start + num_tokens`) over the keys the cache holds through
/// `block_table` (which must cover `start + num_tokens` positions; the new tokens' K/V already
/// written), with the tiles of [`prefill_tiles`]. Returns `[num_tokens, num_heads, head_dim]`.
pub fn prefill(
	gpu: &Gpu,
	q: &CudaSlice<f32>,
	params: &AttentionParams,
	cache: &GpuPagedKv<'_>,
	block_table: &CudaSlice<u32>,
	start: usize,
) -> Result<CudaSlice<f32>, GpuError> {
	let layout = cache.layout;
	group(params, &layout)?;
	let hd = layout.head_dim;
	let row = params.num_heads * hd;
	if q.is_empty() || !q.len().is_multiple_of(row) {
		return Err(GpuError::Shape(format!(
			"q of {} values for rows of {} heads of {hd}",
			q.len(),
			params.num_heads
		)));
	}
	if params.num_heads > GRID_YZ_LIMIT {
		return Err(GpuError::Shape(format!("{} heads in one launch", params.num_heads)));
	}
	let num_tokens = q.len() / row;
	let end = start + num_tokens;
	let needed = end.div_ceil(layout.block_size);
	if block_table.len() < needed {
		return Err(GpuError::Shape(format!(
			"a block table of {} blocks for {end} positions in blocks of {} (needs {needed})",
			block_table.len(),
			layout.block_size
		)));
	}
	let tiles = prefill_tiles(hd);
	let shared = prefill_shared(hd, tiles.key_cols);

	let num_blocks = as_i32("num_blocks", cache.num_blocks)?;
	let block_size = as_i32("block_size", layout.block_size)?;
	let num_kv_heads = as_i32("num_kv_heads", layout.num_kv_heads)?;
	let head_dim = as_i32("head_dim", hd)?;
	let table_len = as_i32("block table length", block_table.len())?;
	let start_i32 = as_i32("start", start)?;
	let tokens_i32 = as_i32("num_tokens", num_tokens)?;
	as_i32("start + num_tokens", end)?;
	let num_heads = as_i32("num_heads", params.num_heads)?;
	let window = window_arg(params);
	let bc = as_i32("key tile", tiles.key_cols)?;
	// SAFETY: the grid (query tiles, heads) writes every row of every head, zeros for a row
	// without keys.
	let mut out = unsafe { gpu.uninit::<f32>(q.len())? };

	let f = gpu.function(&ATTENTION, "flash_prefill")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch
		.arg(q)
		.arg(cache.k)
		.arg(cache.v)
		.arg(&num_blocks)
		.arg(&block_size)
		.arg(&num_kv_heads)
		.arg(&head_dim)
		.arg(block_table)
		.arg(&table_len)
		.arg(&start_i32)
		.arg(&tokens_i32)
		.arg(&num_heads)
		.arg(&params.scale)
		.arg(&window)
		.arg(&bc)
		.arg(&mut out);
	// SAFETY: the arguments follow flash_prefill's signature; q and out are [num_tokens,
	// num_heads, head_dim] for the grid (ceil(num_tokens / 16), num_heads) of 16-row tiles,
	// the caches and table were checked, and the dynamic shared memory is the Q, K (padded)
	// and V tiles the kernel lays out for this key tile (under 48 KiB).
	unsafe {
		launch.launch(LaunchConfig {
			grid_dim: (num_tokens.div_ceil(PREFILL_QUERY_ROWS) as u32, params.num_heads as u32, 1),
			block_dim: (PREFILL_THREADS, 1, 1),
			shared_mem_bytes: shared as u32,
		})
	}?;
	Ok(out)
}
