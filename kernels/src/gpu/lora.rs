//! Multi-LoRA on the GPU: the paged adapter pool in device memory and the shrink/expand
//! launchers of `kernels/cuda/lora.cu` (CPU reference: [`crate::adapter_pool`]).

use std::sync::Arc;

use cudarc::driver::{
	CudaEvent, CudaFunction, CudaSlice, CudaView, LaunchArgs, LaunchConfig, PinnedHostSlice,
	PushKernelArg,
};

use super::{as_i32, expect_len, Gpu, GpuError, LORA};
use crate::adapter_pool::{check_row_width, LoraPlan, PageAllocator, PagedAdapter};

/// The largest rank the kernels take (the expand stages `16 × 128` shrunk values in shared
/// memory).
pub const MAX_RANK: usize = 128;
const SHRINK_WARPS: u32 = 8;
const EXPAND_THREADS: u32 = 128;

/// Every resident adapter's rows in one device allocation of `num_pages × page_len` floats.
pub struct DeviceAdapterPool {
	pool: CudaSlice<f32>,
	page_len: usize,
	/// `page_len` as the kernels' `int` argument.
	page_len_i32: i32,
	pages: PageAllocator,
	/// Reused upload buffers, grown to the largest adapter seen.
	staging_host: Option<PinnedHostSlice<f32>>,
	staging_device: Option<CudaSlice<f32>>,
	/// Recorded after the last copy out of `staging_host`. The copy is asynchronous, and on the
	/// context's single stream cudarc records no event of its own on a pinned buffer, so
	/// `as_mut_slice` would not wait for it: this is waited for before the buffer is rewritten
	/// (or freed).
	staging_copied: Option<CudaEvent>,
}

impl DeviceAdapterPool {
	/// A pool of `num_pages` pages of `page_len` floats (a row longer than a page takes several;
	/// a page length that divides every projection's width wastes nothing).
	pub fn new(gpu: &Gpu, page_len: usize, num_pages: u32) -> Result<Self, GpuError> {
		let page_len_i32 = as_i32("page_len", page_len)?;
		let len = page_len
			.checked_mul(num_pages as usize)
			.ok_or_else(|| GpuError::Shape(format!("{num_pages} pages of {page_len}")))?;
		Ok(Self {
			pool: gpu.zeros(len)?,
			page_len,
			page_len_i32,
			pages: PageAllocator::new(num_pages),
			staging_host: None,
			staging_device: None,
			staging_copied: None,
		})
	}

	/// Floats per page.
	pub fn page_len(&self) -> usize {
		self.page_len
	}

	/// Pages not holding an adapter.
	pub fn free_pages(&self) -> usize {
		self.pages.free_pages()
	}

	/// The pool's memory.
	pub fn pool(&self) -> &CudaSlice<f32> {
		&self.pool
	}

	/// Uploads one adapter's pair for a projection — `a` `[rank, in_dim]`, `b_t` (`s·Bᵀ`)
	/// `[rank, out_dim]` — in one copy from page-locked memory, then scatters its rows to the
	/// pages it is given. Fails, taking no pages, when the pool is full or the shapes are wrong.
	pub fn upload(
		&mut self,
		gpu: &Gpu,
		a: &[f32],
		in_dim: usize,
		b_t: &[f32],
		out_dim: usize,
	) -> Result<PagedAdapter, GpuError> {
		if in_dim == 0 || out_dim == 0 || !a.len().is_multiple_of(in_dim) {
			return Err(GpuError::Shape(format!("A of {} values for rows of {in_dim}", a.len())));
		}
		let rank = a.len() / in_dim;
		if rank == 0 || rank > MAX_RANK || b_t.len() != rank * out_dim {
			return Err(GpuError::Shape(format!(
				"rank {rank} (1 to {MAX_RANK}), sBᵀ of {} values for {out_dim} out",
				b_t.len(),
			)));
		}
		let (in_i, out_i) = (as_i32("in_dim", in_dim)?, as_i32("out_dim", out_dim)?);
		let total = a.len() + b_t.len();
		if let Some(copied) = self.staging_copied.take() {
			copied.synchronize()?;
		}
		// The two buffers are replaced together (both dropped first, the device one set last),
		// so that whenever the device buffer is there the host one is too, of the same length.
		if self.staging_device.as_ref().is_none_or(|d| d.len() < total) {
			self.staging_host = None;
			self.staging_device = None;
			self.staging_host = Some(gpu.pinned(total)?);
			self.staging_device = Some(gpu.zeros(total)?);
		}
		let (Some(host), Some(device)) = (self.staging_host.as_mut(), self.staging_device.as_mut())
		else {
			return Err(GpuError::Shape("upload buffers missing".into()));
		};
		let staged = host.as_mut_slice()?;
		staged[..a.len()].copy_from_slice(a);
		staged[a.len()..total].copy_from_slice(b_t);
		let adapter = self
			.pages
			.allocate_adapter(rank, (in_dim, out_dim), self.page_len)
			.map_err(|e| GpuError::Shape(e.0))?;
		// At most the pool's pages, which a u32 counts.
		let grid = adapter.pages().len() as u32;
		let result = (|| {
			// The whole buffer (the same length as the device one; cudarc refuses a source longer
			// than its destination): after a larger adapter it is longer than `total`, and only
			// its first `total` values are read by the scatter.
			gpu.stream().memcpy_htod(&*host, &mut *device)?;
			self.staging_copied = Some(gpu.stream().record_event(None)?);
			let pages_device = gpu.upload(adapter.pages())?;
			let f = gpu.function(&LORA, "lora_scatter_rows")?;
			let (rank_i, page_len) = (rank as i32, self.page_len_i32);
			let mut launch = gpu.stream().launch_builder(&f);
			launch
				.arg(&*device)
				.arg(&rank_i)
				.arg(&in_i)
				.arg(&out_i)
				.arg(&pages_device)
				.arg(&mut self.pool)
				.arg(&page_len);
			// One block a page, a thread a value (a page of 192 floats is 6 warps).
			let threads = self.page_len.next_multiple_of(32).min(256) as u32;
			let config = LaunchConfig {
				grid_dim: (grid, 1, 1),
				block_dim: (threads, 1, 1),
				shared_mem_bytes: 0,
			};
			// SAFETY: the arguments match `lora_scatter_rows`; the staged buffer holds
			// rank·(in + out) floats, the adapter has one page for each block, every page is
			// below `num_pages`, and a block copies at most a page.
			unsafe { launch.launch(config) }?;
			Ok::<_, GpuError>(())
		})();
		match result {
			Ok(()) => Ok(adapter),
			Err(e) => {
				// The pages were never handed out; a failed release cannot happen here.
				let _ = self.pages.release(adapter.pages());
				Err(e)
			}
		}
	}

	/// Gives an adapter's pages back (its rows stay until overwritten).
	pub fn release(&mut self, adapter: &PagedAdapter) -> Result<(), GpuError> {
		self.pages.release(adapter.pages()).map_err(|e| GpuError::Shape(e.0))
	}
}

/// A [`LoraPlan`] on the device: its five arrays inside one device buffer, which the plans
/// uploaded together ([`DevicePlan::upload_all`]) share.
pub struct DevicePlan {
	packed: Arc<CudaSlice<u32>>,
	/// Where `tile_row_start`, `tile_rows`, `tile_rank`, `tile_pages` and `pages` start in
	/// `packed`.
	at: [usize; 5],
	pages_len: usize,
	num_tiles: u32,
	max_rank: usize,
	rows: usize,
	/// Floats per row of `A` and of `s·Bᵀ` (the plan's inputs and outputs).
	dims: [usize; 2],
	/// Pages per row of `A` and of `s·Bᵀ`, as the kernels' `int` arguments.
	row_pages: [i32; 2],
	/// The size of the pool the plan was checked against.
	pool_pages: u32,
}

impl DevicePlan {
	/// Copies `plan` to the device, for use with `pool` (whose pages it must name).
	pub fn upload(gpu: &Gpu, pool: &DeviceAdapterPool, plan: &LoraPlan) -> Result<Self, GpuError> {
		let mut plans = Self::upload_all(gpu, pool, std::slice::from_ref(plan))?;
		plans.pop().ok_or_else(|| GpuError::Shape("no plan uploaded".into()))
	}

	/// Copies every plan of `plans` to the device in one transfer (a decode step's plans, one per
	/// layer and projection, cost one copy instead of five each), in order.
	pub fn upload_all(
		gpu: &Gpu,
		pool: &DeviceAdapterPool,
		plans: &[LoraPlan],
	) -> Result<Vec<Self>, GpuError> {
		let mut packed = Vec::new();
		let mut placed = Vec::with_capacity(plans.len());
		for plan in plans {
			if plan.max_rank > MAX_RANK {
				return Err(GpuError::Shape(format!("rank {} > {MAX_RANK}", plan.max_rank)));
			}
			plan.validate(pool.pages.num_pages() as usize).map_err(|e| GpuError::Shape(e.0))?;
			// The tiles are the kernels' grid y dimension.
			if plan.num_tiles() > 65_535 {
				return Err(GpuError::Shape(format!(
					"{} tiles in one plan, past the grid's 65535",
					plan.num_tiles()
				)));
			}
			let num_tiles = u32::try_from(plan.num_tiles())
				.map_err(|_| GpuError::Shape("too many tiles".into()))?;
			let row_pages = [
				as_i32("pages per row of A", plan.row_pages.0 as usize)?,
				as_i32("pages per row of sBᵀ", plan.row_pages.1 as usize)?,
			];
			let mut at = [0; 5];
			let parts = [
				&plan.tile_row_start,
				&plan.tile_rows,
				&plan.tile_rank,
				&plan.tile_pages,
				&plan.pages,
			];
			for (start, part) in at.iter_mut().zip(parts) {
				*start = packed.len();
				packed.extend_from_slice(part);
			}
			placed.push((at, num_tiles, row_pages));
		}
		// A zero-length device buffer cannot be allocated: empty plans share one dummy value.
		if packed.is_empty() {
			packed.push(0);
		}
		let packed = Arc::new(gpu.upload(&packed)?);
		let pool_pages = pool.pages.num_pages();
		Ok(placed
			.into_iter()
			.zip(plans)
			.map(|((at, num_tiles, row_pages), plan)| Self {
				packed: packed.clone(),
				at,
				pages_len: plan.pages.len(),
				num_tiles,
				max_rank: plan.max_rank,
				rows: plan.rows,
				dims: [plan.dims.0 as usize, plan.dims.1 as usize],
				row_pages,
				pool_pages,
			})
			.collect())
	}

	/// The row stride of the shrunk buffer.
	pub fn max_rank(&self) -> usize {
		self.max_rank
	}

	/// The batch's row count.
	pub fn rows(&self) -> usize {
		self.rows
	}

	/// The five arrays, as the kernels take them.
	fn views(&self) -> [CudaView<'_, u32>; 5] {
		let tiles = self.num_tiles as usize;
		let lens = [tiles, tiles, tiles, tiles, self.pages_len];
		std::array::from_fn(|i| self.packed.slice(self.at[i]..self.at[i] + lens[i]))
	}
}

/// Fails unless `shrunk` holds at least the plan's `rows × max_rank` values (a buffer sized for
/// the largest of a step's plans serves them all).
fn expect_shrunk(shrunk: &CudaSlice<f32>, plan: &DevicePlan) -> Result<(), GpuError> {
	let need = plan.rows * plan.max_rank;
	if shrunk.len() < need {
		return Err(GpuError::Shape(format!(
			"shrunk has {} values, the plan needs {need}",
			shrunk.len()
		)));
	}
	Ok(())
}

/// `shrunk[r, j] = x[r] · A_j` for the plan's rows (`x` `[rows, in_dim]`, `shrunk` at least
/// `[rows, max_rank]`; only the entries of each row's adapter rank are written).
pub fn shrink(
	gpu: &Gpu,
	pool: &DeviceAdapterPool,
	plan: &DevicePlan,
	x: &CudaSlice<f32>,
	in_dim: usize,
	shrunk: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
	check_width(pool, plan, "rows of x", in_dim, 0)?;
	same_pool(pool, plan)?;
	expect_len("x", x, plan.rows * in_dim)?;
	expect_shrunk(shrunk, plan)?;
	if plan.num_tiles == 0 {
		return Ok(());
	}
	let f = gpu.function(&LORA, "lora_shrink")?;
	let (in_i, max_rank) = (as_i32("in_dim", in_dim)?, plan.max_rank as i32);
	let views = plan.views();
	let mut launch = plan_launch(gpu, &f, pool, plan, &views);
	launch.arg(x).arg(&in_i).arg(shrunk).arg(&max_rank);
	let config = LaunchConfig {
		grid_dim: ((plan.max_rank as u32).div_ceil(SHRINK_WARPS), plan.num_tiles, 1),
		block_dim: (32 * SHRINK_WARPS, 1, 1),
		shared_mem_bytes: 0,
	};
	// SAFETY: the arguments match `lora_shrink`; x and shrunk were checked against the plan's
	// rows, x's rows take the plan's pages per row of A, every tile's rows lie in the batch and
	// its rank·(pages per row of A and sBᵀ) pages in the plan's page list and the pool
	// (LoraPlan::validate), and the grid covers max_rank rank rows per tile.
	unsafe { launch.launch(config) }?;
	Ok(())
}

/// `y[r] += Σ_j shrunk[r, j] · (s·Bᵀ)_j` for the plan's rows (`y` `[rows, out_dim]`).
pub fn expand(
	gpu: &Gpu,
	pool: &DeviceAdapterPool,
	plan: &DevicePlan,
	shrunk: &CudaSlice<f32>,
	y: &mut CudaSlice<f32>,
	out_dim: usize,
) -> Result<(), GpuError> {
	check_width(pool, plan, "rows of y", out_dim, 1)?;
	same_pool(pool, plan)?;
	expect_len("y", y, plan.rows * out_dim)?;
	expect_shrunk(shrunk, plan)?;
	if plan.num_tiles == 0 {
		return Ok(());
	}
	let f = gpu.function(&LORA, "lora_expand")?;
	let (out_i, max_rank) = (as_i32("out_dim", out_dim)?, plan.max_rank as i32);
	let views = plan.views();
	let mut launch = plan_launch(gpu, &f, pool, plan, &views);
	launch.arg(shrunk).arg(&max_rank).arg(y).arg(&out_i);
	let config = LaunchConfig {
		grid_dim: ((out_dim as u32).div_ceil(EXPAND_THREADS), plan.num_tiles, 1),
		block_dim: (EXPAND_THREADS, 1, 1),
		shared_mem_bytes: 0,
	};
	// SAFETY: the arguments match `lora_expand`; shapes checked above (y's rows take the plan's
	// pages per row of sBᵀ), ranks ≤ MAX_RANK (the kernel's shared tile), tiles ≤ 16 rows and
	// their pages in the plan's page list and the pool (LoraPlan::validate).
	unsafe { launch.launch(config) }?;
	Ok(())
}

/// A launch of `function` with the arguments both multi-LoRA kernels start with: the pool, its
/// page length, the plan's tiles and pages (`views`), and its pages per row of `A` and `s·Bᵀ`.
fn plan_launch<'a>(
	gpu: &'a Gpu,
	function: &'a CudaFunction,
	pool: &'a DeviceAdapterPool,
	plan: &'a DevicePlan,
	views: &'a [CudaView<'a, u32>; 5],
) -> LaunchArgs<'a> {
	let mut launch = gpu.stream().launch_builder(function);
	launch.arg(&pool.pool).arg(&pool.page_len_i32);
	for part in views {
		launch.arg(part);
	}
	launch.arg(&plan.row_pages[0]).arg(&plan.row_pages[1]);
	launch
}

/// Fails unless rows of `width` meet the plan's adapter rows of `A` (`side` 0) or `s·Bᵀ`
/// (`side` 1) (see [`check_row_width`]); `what` names the rows in the error.
fn check_width(
	pool: &DeviceAdapterPool,
	plan: &DevicePlan,
	what: &str,
	width: usize,
	side: usize,
) -> Result<(), GpuError> {
	let plan_rows = (plan.dims[side], plan.row_pages[side] as usize);
	check_row_width(what, width, pool.page_len, plan_rows, plan.num_tiles > 0)
		.map_err(|e| GpuError::Shape(e.0))
}

fn same_pool(pool: &DeviceAdapterPool, plan: &DevicePlan) -> Result<(), GpuError> {
	if plan.pool_pages > pool.pages.num_pages() {
		return Err(GpuError::Shape(format!(
			"a plan for a pool of {} pages used with one of {}",
			plan.pool_pages,
			pool.pages.num_pages()
		)));
	}
	Ok(())
}
