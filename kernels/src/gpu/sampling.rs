//! Launcher for `kernels/cuda/sampling.cu`: the CUDA version of [`crate::sampling::sample`],
//! so that decoding never copies logits to the host, only the parameters and draws (a few
//! bytes per row) to the device and the tokens back.
//!
//! One block of [`LANES`] threads per row. A row costs a few passes over its logits for the
//! greedy token and the log-probability, one more when min-p is on, plus one pass per bisection
//! step when top-k or min-p (at most 32 steps) or top-p (at most 32) is on; the passes read the
//! row from L2 after the first.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{as_i32, expect_len, Gpu, GpuError, SAMPLING};
pub use crate::sampling::{SamplingParams, LANES};

/// Samples one token per row of `logits` (`[rows, vocab]`) into `tokens` and its raw
/// log-probability into `logprobs` (each `[rows]`), with each row's parameters and uniform
/// draw in `[0, 1)`, exactly as [`crate::sampling::sample`] defines it.
pub fn sample(
	gpu: &Gpu,
	logits: &CudaSlice<f32>,
	vocab: usize,
	params: &[SamplingParams],
	uniform: &[f32],
	tokens: &mut CudaSlice<u32>,
	logprobs: &mut CudaSlice<f32>,
) -> Result<(), GpuError> {
	let rows = crate::sampling::check(logits.len(), vocab, params, uniform)
		.map_err(|e| GpuError::Shape(e.0))?;
	expect_len("sample tokens", tokens, rows)?;
	expect_len("sample logprobs", logprobs, rows)?;
	let vocab_i = as_i32("vocab", vocab)?;
	as_i32("rows", rows)?;
	as_i32("logits", logits.len())?;
	if rows == 0 {
		return Ok(());
	}
	let temperature: Vec<f32> = params.iter().map(|p| p.temperature).collect();
	let top_k: Vec<u32> = params.iter().map(|p| p.top_k).collect();
	let top_p: Vec<f32> = params.iter().map(|p| p.top_p).collect();
	let min_p: Vec<f32> = params.iter().map(|p| p.min_p).collect();
	let (temperature, top_k) = (gpu.upload(&temperature)?, gpu.upload(&top_k)?);
	let (top_p, min_p) = (gpu.upload(&top_p)?, gpu.upload(&min_p)?);
	let uniform = gpu.upload(uniform)?;
	let f = gpu.function(&SAMPLING, "sample_rows")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch
		.arg(logits)
		.arg(&vocab_i)
		.arg(&temperature)
		.arg(&top_k)
		.arg(&top_p)
		.arg(&min_p)
		.arg(&uniform)
		.arg(&mut *tokens)
		.arg(&mut *logprobs);
	// SAFETY: sample_rows(const float*, int, const float*, const unsigned*, const float*,
	// const float*, const float*, unsigned*, float*); logits holds rows × vocab values, the
	// five parameter buffers and both outputs rows; one block of LANES (= the kernel's LANES and
	// its __launch_bounds__) per row, static shared memory only.
	unsafe {
		launch.launch(LaunchConfig {
			grid_dim: (rows as u32, 1, 1),
			block_dim: (LANES as u32, 1, 1),
			shared_mem_bytes: 0,
		})
	}?;
	Ok(())
}
