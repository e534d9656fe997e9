//! Quantized matrix-vector and small matrix-matrix products on the GPU: the launchers of
//! `kernels/cuda/quant.cu`, which computes exactly what [`crate::quant::gemm`] computes.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{as_i32, expect_len, Gpu, GpuError, QUANT};
use crate::quant::{row_bytes, Format};

/// Weight rows per thread block: one warp each (`GEMV_WARPS` in `quant.cu`).
const WARPS: usize = 4;

/// Input rows per pass: the kernels are instantiated for 1 to this many (`gemv_<format>_n<k>`)
/// and read each weight row once per pass.
pub const MAX_BATCH_PER_PASS: usize = 8;

/// `y[i] = W·x[i]` for the `n` input rows of `x` (`[n, cols]`), into `y` (`[n, rows]`): `W` is
/// `rows × cols` in `format`, `rows` rows of [`row_bytes`] bytes. One warp per weight row; `n`
/// is covered by passes of [`MAX_BATCH_PER_PASS`] input rows, each reading the weights once.
/// Nothing is launched when `rows` or `n` is zero.
#[allow(clippy::too_many_arguments)]
pub fn gemv(
	gpu: &Gpu,
	format: Format,
	weights: &CudaSlice<u8>,
	rows: usize,
	cols: usize,
	x: &CudaSlice<f32>,
	n: usize,
	y: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
	let per_row = row_bytes(format, cols).map_err(|e| GpuError::Shape(e.0))?;
	let weight_bytes = rows
		.checked_mul(per_row)
		.ok_or_else(|| GpuError::Shape(format!("{rows} rows of {per_row} bytes overflow")))?;
	expect_len("the weights", weights, weight_bytes)?;
	expect_len("x", x, n * cols)?;
	expect_len("y", y, n * rows)?;
	let rows_i32 = as_i32("rows", rows)?;
	let cols_i32 = as_i32("cols", cols)?;
	as_i32("n", n)?;
	if rows == 0 || n == 0 {
		return Ok(());
	}
	let blocks = u32::try_from(rows.div_ceil(WARPS))
		.map_err(|_| GpuError::Shape(format!("{rows} rows need too many thread blocks")))?;
	let config = LaunchConfig {
		grid_dim: (blocks, 1, 1),
		block_dim: (32 * WARPS as u32, 1, 1),
		shared_mem_bytes: 0,
	};
	let mut c0 = 0;
	while c0 < n {
		let pass = (n - c0).min(MAX_BATCH_PER_PASS);
		let f = gpu.function(&QUANT, &format!("gemv_{}_n{pass}", format.name()))?;
		let c0_i32 = as_i32("c0", c0)?;
		let mut launch = gpu.stream().launch_builder(&f);
		launch.arg(weights).arg(&rows_i32).arg(&cols_i32).arg(x).arg(&c0_i32).arg(&mut *y);
		// SAFETY: the arguments are the kernel's (const unsigned char* w, int rows, int cols,
		// const float* x, int c0, float* y) in order; the weights hold rows · row_bytes(cols)
		// bytes, the layout the kernel reads (cols a positive multiple of the block size, checked
		// by row_bytes), x holds n · cols values and y n · rows, and the pass reads input rows
		// c0 .. c0 + pass ≤ n and writes the same rows of y. The grid has one warp per weight row
		// (32 · WARPS threads per block, as __launch_bounds__ and GEMV_WARPS say); warps past the
		// last row return before touching memory.
		unsafe { launch.launch(config) }?;
		c0 += pass;
	}
	Ok(())
}
