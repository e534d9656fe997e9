//! Launchers for `kernels/cuda/sparse.cu`: the CUDA versions of [`crate::sparse`].
//!
//! [`down_sparse`] runs two kernels: a compaction (one block of [`COMPACT_THREADS`] per row)
//! that lists each row's active activations in ascending order, then the product, in which
//! each thread of a block of [`DOWN_THREADS`] owns one output column of one row. [`down_dense`]
//! is the same product over every activation.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{as_i32, expect_len, Gpu, GpuError, SPARSE};

/// The block size of the compaction kernel.
pub const COMPACT_THREADS: u32 = 256;
/// The block size of the product kernels (output columns per block).
pub const DOWN_THREADS: u32 = 256;

/// Checks the shapes as [`crate::sparse`] does; returns `(rows, inter, hidden)` as kernel ints.
fn check(
	h: &CudaSlice<f32>,
	inter: usize,
	w_t: &CudaSlice<f32>,
	hidden: usize,
	y: &CudaSlice<f32>,
) -> Result<(usize, i32, i32, i32), GpuError> {
	if inter == 0 || hidden == 0 || !h.len().is_multiple_of(inter) {
		return Err(GpuError::Shape(format!(
			"down projection: h of {} for rows of {inter}, hidden {hidden}",
			h.len()
		)));
	}
	let rows = h.len() / inter;
	expect_len("down projection weight", w_t, inter * hidden)?;
	expect_len("down projection y", y, rows * hidden)?;
	as_i32("h", h.len())?;
	as_i32("y", y.len())?;
	Ok((rows, as_i32("rows", rows)?, as_i32("inter", inter)?, as_i32("hidden", hidden)?))
}

/// The product's grid: column blocks by rows.
fn product_grid(rows: usize, hidden: usize) -> LaunchConfig {
	LaunchConfig {
		grid_dim: (hidden.div_ceil(DOWN_THREADS as usize) as u32, rows as u32, 1),
		block_dim: (DOWN_THREADS, 1, 1),
		shared_mem_bytes: 0,
	}
}

/// [`crate::sparse::down_sparse`]: `y` (`[rows, hidden]`) `= Σ h[r, i] · w_t[i]` over the
/// activations of `h` (`[rows, inter]`) with `|h| > threshold`, `w_t` `[inter, hidden]`.
/// Returns the number of active activations of each row (`[rows]`, on the device). Allocates
/// its two `[rows, inter]` lists on each call.
pub fn down_sparse(
	gpu: &Gpu,
	h: &CudaSlice<f32>,
	inter: usize,
	w_t: &CudaSlice<f32>,
	hidden: usize,
	threshold: f32,
	y: &mut CudaSlice<f32>,
) -> Result<CudaSlice<u32>, GpuError> {
	let (rows, rows_i, inter_i, hidden_i) = check(h, inter, w_t, hidden, y)?;
	if rows > 65_535 {
		return Err(GpuError::Shape(format!("down_sparse: {rows} rows is past the grid's 65535")));
	}
	let mut counts = gpu.zeros::<u32>(rows)?;
	if rows == 0 {
		return Ok(counts);
	}
	let mut idx = gpu.zeros::<u32>(h.len())?;
	let mut val = gpu.zeros::<f32>(h.len())?;

	let f = gpu.function(&SPARSE, "sparse_compact")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch
		.arg(h)
		.arg(&rows_i)
		.arg(&inter_i)
		.arg(&threshold)
		.arg(&mut idx)
		.arg(&mut val)
		.arg(&mut counts);
	// SAFETY: sparse_compact(const float*, int, int, float, unsigned*, float*, unsigned*); h,
	// idx and val hold rows × inter values, counts rows; one block of COMPACT_THREADS (the
	// kernel's constant) per row.
	unsafe {
		launch.launch(LaunchConfig {
			grid_dim: (rows as u32, 1, 1),
			block_dim: (COMPACT_THREADS, 1, 1),
			shared_mem_bytes: 0,
		})
	}?;

	let f = gpu.function(&SPARSE, "sparse_down")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch
		.arg(&idx)
		.arg(&val)
		.arg(&counts)
		.arg(w_t)
		.arg(&rows_i)
		.arg(&inter_i)
		.arg(&hidden_i)
		.arg(&mut *y);
	// SAFETY: sparse_down(const unsigned*, const float*, const unsigned*, const float*, int,
	// int, int, float*); idx and val hold rows × inter values, counts rows, w_t inter × hidden,
	// y rows × hidden; the grid is column blocks of DOWN_THREADS by rows (at most 65535,
	// checked), and the kernel bounds-checks the last column block.
	unsafe { launch.launch(product_grid(rows, hidden)) }?;
	Ok(counts)
}

/// [`crate::sparse::down_dense`]: `y = h · w_t` over every activation, in the same style.
pub fn down_dense(
	gpu: &Gpu,
	h: &CudaSlice<f32>,
	inter: usize,
	w_t: &CudaSlice<f32>,
	hidden: usize,
	y: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
	let (rows, rows_i, inter_i, hidden_i) = check(h, inter, w_t, hidden, y)?;
	if rows > 65_535 {
		return Err(GpuError::Shape(format!("down_dense: {rows} rows is past the grid's 65535")));
	}
	if rows == 0 {
		return Ok(());
	}
	let f = gpu.function(&SPARSE, "dense_down")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch.arg(h).arg(w_t).arg(&rows_i).arg(&inter_i).arg(&hidden_i).arg(&mut *y);
	// SAFETY: dense_down(const float*, const float*, int, int, int, float*); h holds rows ×
	// inter values, w_t inter × hidden, y rows × hidden; the grid is column blocks by rows (at
	// most 65535, checked), and the kernel bounds-checks the last column block.
	unsafe { launch.launch(product_grid(rows, hidden)) }?;
	Ok(())
}
