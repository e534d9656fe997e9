//! `gpu::sparse` against `sparse`.
//!
//! Tolerances: both sides accumulate each output from zero with one fused multiply-add per
//! (active) activation in ascending index order (`__fmaf_rn` on the GPU, `f32::mul_add` on the
//! CPU, both exactly rounded), so the results are expected to be bit-identical; they are
//! compared at 1e-6 relative and 1e-7 absolute. The active counts must match exactly, and the
//! GPU's sparse product must equal its dense one exactly when the skipped activations are zero.

use anyhow::{ensure, Result};
use openledger_kernels::{
	gpu::{sparse as gpu_sparse, Gpu},
	sparse,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::compare;

pub const CHECKS: &[crate::Check] = &[("down_dense", down_dense), ("down_sparse", down_sparse)];

/// (rows, inter, hidden): SmolLM-135M's 1536 → 576, odd sizes, a hidden above one block, a
/// single column, more active rows than a block stages at once.
const SHAPES: [(usize, usize, usize); 8] = [
	(1, 1, 1),
	(1, 1536, 576),
	(4, 1536, 576),
	(9, 1001, 257),
	(3, 64, 4097),
	(2, 2048, 1),
	(7, 300, 1000),
	(5, 8192, 2048),
];

fn activations(rng: &mut StdRng, n: usize, zero_share: f64) -> Vec<f32> {
	(0..n)
		.map(|_| {
			if rng.random_bool(zero_share) {
				0.0
			} else if rng.random_bool(0.3) {
				rng.random_range(-0.01..0.01)
			} else {
				rng.random_range(-1.0..1.0)
			}
		})
		.collect()
}

fn weight(rng: &mut StdRng, n: usize) -> Vec<f32> {
	(0..n).map(|_| rng.random_range(-0.1..0.1)).collect()
}

fn down_dense(gpu: &Gpu) -> Result<()> {
	let mut rng = StdRng::seed_from_u64(31);
	for (rows, inter, hidden) in SHAPES {
		let h = activations(&mut rng, rows * inter, 0.5);
		let w = weight(&mut rng, inter * hidden);
		let mut want = vec![0f32; rows * hidden];
		sparse::down_dense(&h, inter, &w, hidden, &mut want)?;
		let (dh, dw) = (gpu.upload(&h)?, gpu.upload(&w)?);
		let mut dy = gpu.zeros::<f32>(rows * hidden)?;
		gpu_sparse::down_dense(gpu, &dh, inter, &dw, hidden, &mut dy)?;
		let what = format!("down_dense {rows}x{inter}x{hidden}");
		compare(&what, &gpu.download(&dy)?, &want, 1e-7, 1e-6)?;
	}
	Ok(())
}

fn down_sparse(gpu: &Gpu) -> Result<()> {
	let mut rng = StdRng::seed_from_u64(32);
	for (rows, inter, hidden) in SHAPES {
		for (zero_share, threshold) in
			[(0.0, 0.0f32), (0.7, 0.0), (0.95, 0.0), (1.0, 0.0), (0.5, 0.01)]
		{
			let h = activations(&mut rng, rows * inter, zero_share);
			let w = weight(&mut rng, inter * hidden);
			let mut want = vec![0f32; rows * hidden];
			let want_counts = sparse::down_sparse(&h, inter, &w, hidden, threshold, &mut want)?;
			let (dh, dw) = (gpu.upload(&h)?, gpu.upload(&w)?);
			let mut dy = gpu.zeros::<f32>(rows * hidden)?;
			let counts = gpu_sparse::down_sparse(gpu, &dh, inter, &dw, hidden, threshold, &mut dy)?;
			let what =
				format!("down_sparse {rows}x{inter}x{hidden} zeros {zero_share} t {threshold}");
			let counts: Vec<usize> = gpu.download(&counts)?.iter().map(|&c| c as usize).collect();
			ensure!(counts == want_counts, "{what}: counts {counts:?}, expected {want_counts:?}");
			let got = gpu.download(&dy)?;
			compare(&what, &got, &want, 1e-7, 1e-6)?;
			if threshold == 0.0 {
				let mut dense = gpu.zeros::<f32>(rows * hidden)?;
				gpu_sparse::down_dense(gpu, &dh, inter, &dw, hidden, &mut dense)?;
				compare(&format!("{what} against dense"), &got, &gpu.download(&dense)?, 0.0, 0.0)?;
			}
		}
	}
	Ok(())
}
