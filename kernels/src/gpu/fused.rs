//! Launchers for `kernels/cuda/fused.cu`: the CUDA versions of [`crate::fused`].
//!
//! The norms run one block of [`NORM_THREADS`] per row with the reduction the CPU reference
//! mirrors; the elementwise kernels run one thread per output (or per rotated pair) in blocks
//! of [`ELEMENTWISE_THREADS`].

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{as_i32, expect_len, Gpu, GpuError, FUSED};
pub use crate::fused::{RopeStyle, NORM_THREADS};

/// The block size of the elementwise kernels.
pub const ELEMENTWISE_THREADS: u32 = 256;

/// `rows` and `dim` of `x` against `weight`, or a shape error.
fn norm_rows(x: &CudaSlice<f32>, weight: &CudaSlice<f32>) -> Result<(usize, usize), GpuError> {
	let dim = weight.len();
	if dim == 0 || !x.len().is_multiple_of(dim) {
		return Err(GpuError::Shape(format!(
			"rms_norm: {} values for rows of {dim} (the weight's length)",
			x.len()
		)));
	}
	Ok((x.len() / dim, dim))
}

/// A grid of whole blocks of [`ELEMENTWISE_THREADS`] covering `n` threads.
fn elementwise(n: usize) -> LaunchConfig {
	let blocks = n.div_ceil(ELEMENTWISE_THREADS as usize) as u32;
	LaunchConfig {
		grid_dim: (blocks, 1, 1),
		block_dim: (ELEMENTWISE_THREADS, 1, 1),
		shared_mem_bytes: 0,
	}
}

/// One block of [`NORM_THREADS`] per row.
fn per_row(rows: usize) -> LaunchConfig {
	LaunchConfig {
		grid_dim: (rows as u32, 1, 1),
		block_dim: (NORM_THREADS as u32, 1, 1),
		shared_mem_bytes: 0,
	}
}

/// [`crate::fused::rms_norm`]: `out = rms_norm(x) · weight` row by row, `x` and `out`
/// `[rows, dim]` with `dim = weight.len()`.
pub fn rms_norm(
	gpu: &Gpu,
	x: &CudaSlice<f32>,
	weight: &CudaSlice<f32>,
	eps: f32,
	out: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
	let (rows, dim) = norm_rows(x, weight)?;
	expect_len("rms_norm out", out, x.len())?;
	let (rows_i, dim_i) = (as_i32("rows", rows)?, as_i32("dim", dim)?);
	as_i32("rows × dim", x.len())?;
	if rows == 0 {
		return Ok(());
	}
	let f = gpu.function(&FUSED, "rms_norm")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch.arg(x).arg(weight).arg(&mut *out).arg(&rows_i).arg(&dim_i).arg(&eps);
	// SAFETY: rms_norm(const float*, const float*, float*, int, int, float); x and out hold
	// rows × dim values and weight dim, checked above; one block per row.
	unsafe { launch.launch(per_row(rows)) }?;
	Ok(())
}

/// [`crate::fused::add_rms_norm`]: `residual += x`, then `out = rms_norm(residual) · weight`.
pub fn add_rms_norm(
	gpu: &Gpu,
	residual: &mut CudaSlice<f32>,
	x: &CudaSlice<f32>,
	weight: &CudaSlice<f32>,
	eps: f32,
	out: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
	let (rows, dim) = norm_rows(x, weight)?;
	expect_len("add_rms_norm residual", residual, x.len())?;
	expect_len("add_rms_norm out", out, x.len())?;
	let (rows_i, dim_i) = (as_i32("rows", rows)?, as_i32("dim", dim)?);
	as_i32("rows × dim", x.len())?;
	if rows == 0 {
		return Ok(());
	}
	let f = gpu.function(&FUSED, "add_rms_norm")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch.arg(&mut *residual).arg(x).arg(weight).arg(&mut *out).arg(&rows_i).arg(&dim_i).arg(&eps);
	// SAFETY: add_rms_norm(float*, const float*, const float*, float*, int, int, float);
	// residual, x and out hold rows × dim values and weight dim; one block per row.
	unsafe { launch.launch(per_row(rows)) }?;
	Ok(())
}

/// [`crate::fused::rope`] in place on `x` (`[tokens, heads, head_dim]`, `tokens` =
/// `positions.len()`), with tables `[max_pos, head_dim / 2]`. Every position must be below
/// `max_pos` (the kernel leaves a token whose position is not untouched).
#[allow(clippy::too_many_arguments)]
pub fn rope(
	gpu: &Gpu,
	x: &mut CudaSlice<f32>,
	heads: usize,
	head_dim: usize,
	positions: &CudaSlice<u32>,
	cos: &CudaSlice<f32>,
	sin: &CudaSlice<f32>,
	style: RopeStyle,
) -> Result<(), GpuError> {
	if head_dim == 0 || !head_dim.is_multiple_of(2) {
		return Err(GpuError::Shape(format!("rope: head_dim {head_dim} is not a positive even")));
	}
	let half = head_dim / 2;
	let tokens = positions.len();
	expect_len("rope x", x, tokens * heads * head_dim)?;
	if !cos.len().is_multiple_of(half) {
		return Err(GpuError::Shape(format!("rope: tables of {} for rows of {half}", cos.len())));
	}
	expect_len("rope sin table", sin, cos.len())?;
	let max_pos = as_i32("max_pos", cos.len() / half)?;
	as_i32("rope x", x.len())?;
	let pairs = tokens * heads * half;
	let (pairs_i, heads_i, dim_i) =
		(as_i32("pairs", pairs)?, as_i32("heads", heads)?, as_i32("head_dim", head_dim)?);
	let style_i: i32 = match style {
		RopeStyle::Neox => 0,
		RopeStyle::Gptj => 1,
	};
	if pairs == 0 {
		return Ok(());
	}
	let f = gpu.function(&FUSED, "rope")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch
		.arg(&mut *x)
		.arg(positions)
		.arg(cos)
		.arg(sin)
		.arg(&pairs_i)
		.arg(&heads_i)
		.arg(&dim_i)
		.arg(&max_pos)
		.arg(&style_i);
	// SAFETY: rope(float*, const unsigned*, const float*, const float*, int, int, int, int,
	// int); x holds tokens × heads × head_dim values, positions tokens, the tables
	// max_pos × half; the grid covers the pairs and the kernel bounds-checks the last block.
	unsafe { launch.launch(elementwise(pairs)) }?;
	Ok(())
}

/// [`crate::fused::silu_mul`]: `out` (`[rows, inter]`) `= silu(gate) · up` from `gate_up`
/// (`[rows, 2·inter]`, gate then up in each row).
pub fn silu_mul(
	gpu: &Gpu,
	gate_up: &CudaSlice<f32>,
	inter: usize,
	out: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
	if inter == 0 || !gate_up.len().is_multiple_of(2 * inter) {
		return Err(GpuError::Shape(format!(
			"silu_mul: {} values for rows of 2 × {inter}",
			gate_up.len()
		)));
	}
	expect_len("silu_mul out", out, gate_up.len() / 2)?;
	as_i32("gate_up", gate_up.len())?;
	let (n, inter_i) = (as_i32("out", out.len())?, as_i32("inter", inter)?);
	if n == 0 {
		return Ok(());
	}
	let config = elementwise(out.len());
	let f = gpu.function(&FUSED, "silu_mul")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch.arg(gate_up).arg(&mut *out).arg(&n).arg(&inter_i);
	// SAFETY: silu_mul(const float*, float*, int, int); out holds n = rows × inter values and
	// gate_up 2n; the grid covers n threads and the kernel bounds-checks the last block.
	unsafe { launch.launch(config) }?;
	Ok(())
}

/// [`crate::fused::silu_mul_split`]: `out = silu(gate) · up` elementwise.
pub fn silu_mul_split(
	gpu: &Gpu,
	gate: &CudaSlice<f32>,
	up: &CudaSlice<f32>,
	out: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
	expect_len("silu_mul_split up", up, gate.len())?;
	expect_len("silu_mul_split out", out, gate.len())?;
	let n = as_i32("gate", gate.len())?;
	if n == 0 {
		return Ok(());
	}
	let f = gpu.function(&FUSED, "silu_mul_split")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch.arg(gate).arg(up).arg(&mut *out).arg(&n);
	// SAFETY: silu_mul_split(const float*, const float*, float*, int); all three hold n values.
	unsafe { launch.launch(elementwise(gate.len())) }?;
	Ok(())
}

/// [`crate::fused::add_assign`]: `a += b` elementwise.
pub fn add_assign(gpu: &Gpu, a: &mut CudaSlice<f32>, b: &CudaSlice<f32>) -> Result<(), GpuError> {
	expect_len("add_assign b", b, a.len())?;
	let n = as_i32("a", a.len())?;
	if n == 0 {
		return Ok(());
	}
	let f = gpu.function(&FUSED, "add_assign")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch.arg(&mut *a).arg(b).arg(&n);
	// SAFETY: add_assign(float*, const float*, int); both hold n values.
	unsafe { launch.launch(elementwise(b.len())) }?;
	Ok(())
}
