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

/// The dynamic shared memory a kernel may use without a function attribute.
const SHARED_LIMIT: usize = 48 * 1024;

/// How the GEMV kernels read the input rows `x` (the same arithmetic, so the same bits, either
/// way; `kernels/cuda/quant.cu` explains both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XReads {
	/// Each lane reads its units' values of x from global memory (`gemv_<format>_n<k>`).
	Direct,
	/// Each block copies x into shared memory, 32 units at a time, with coalesced loads, and
	/// the lanes read their units' values from there (`gemv_staged_<format>_n<k>`). A pass
	/// whose stretch of x would not fit 48 KiB of shared memory (6 to 8 input rows of Q4_K or
	/// Q6_K) reads directly.
	Staged,
}

impl XReads {
	/// What [`gemv`] uses for `format`: staged for the block formats, whose units lie 64 to 256
	/// bytes of x apart (a direct float4 load of a warp touches 32 lines, a shared one 4),
	/// direct for bf16, whose lanes' x lies 32 bytes apart. Chosen from the kernels' access
	/// pattern; `kernels/benches/gpu.rs` measures both side by side on a GPU.
	pub fn for_format(format: Format) -> Self {
		match format {
			Format::Bf16 => Self::Direct,
			_ => Self::Staged,
		}
	}
}

/// Floats of shared memory a staged kernel takes per input row: 32 units' columns in slots of
/// `SLOT` columns, 4 floats of padding after each (`Format<FMT>::UNIT`, `SLOT` and `STAGE_PAD`
/// in `quant.cu`).
fn staged_floats(format: Format) -> usize {
	let (unit, slot) = match format {
		Format::Q4_0 | Format::Q4_1 | Format::Q8_0 | Format::Int4 => (32, 32),
		Format::Q4K => (64, 64),
		Format::Q6K => (64, 128),
		Format::Int8 => (16, 16),
		Format::Bf16 => (8, 8),
	};
	32 * unit / slot * (slot + 4)
}

/// `y[i] = W·x[i]` for the `n` input rows of `x` (`[n, cols]`), into `y` (`[n, rows]`): `W` is
/// `rows × cols` in `format`, `rows` rows of [`row_bytes`] bytes. One warp per weight row; `n`
/// is covered by passes of [`MAX_BATCH_PER_PASS`] input rows, each reading the weights once.
/// Nothing is launched when `rows` or `n` is zero. Reads x as [`XReads::for_format`] says.
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
	gemv_reading(gpu, XReads::for_format(format), format, weights, rows, cols, x, n, y)
}

/// [`gemv`], reading x as `reads` says (the same bits either way).
#[allow(clippy::too_many_arguments)]
pub fn gemv_reading(
	gpu: &Gpu,
	reads: XReads,
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
	let mut c0 = 0;
	while c0 < n {
		let pass = (n - c0).min(MAX_BATCH_PER_PASS);
		let shared = staged_floats(format) * pass * 4;
		let (kernel, shared) = match reads {
			XReads::Staged if shared <= SHARED_LIMIT => ("gemv_staged", shared),
			_ => ("gemv", 0),
		};
		let config = LaunchConfig {
			grid_dim: (blocks, 1, 1),
			block_dim: (32 * WARPS as u32, 1, 1),
			shared_mem_bytes: shared as u32,
		};
		let f = gpu.function(&QUANT, &format!("{kernel}_{}_n{pass}", format.name()))?;
		let c0_i32 = as_i32("c0", c0)?;
		let mut launch = gpu.stream().launch_builder(&f);
		launch.arg(weights).arg(&rows_i32).arg(&cols_i32).arg(x).arg(&c0_i32).arg(&mut *y);
		// SAFETY: the arguments are the kernel's (const unsigned char* w, int rows, int cols,
		// const float* x, int c0, float* y) in order; the weights hold rows · row_bytes(cols)
		// bytes, the layout the kernel reads (cols a positive multiple of the block size, checked
		// by row_bytes), x holds n · cols values and y n · rows, and the pass reads input rows
		// c0 .. c0 + pass ≤ n and writes the same rows of y. The grid has one warp per weight row
		// (32 · WARPS threads per block, as __launch_bounds__ and GEMV_WARPS say); warps past the
		// last row touch no weights and write nothing; a staged kernel's dynamic shared memory
		// is the pass's stretch of x (staged_floats per input row, under 48 KiB).
		unsafe { launch.launch(config) }?;
		c0 += pass;
	}
	Ok(())
}
