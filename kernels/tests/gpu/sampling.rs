//! `gpu::sampling` against `sampling`.
//!
//! The kernel and the reference run the same algorithm with the same summation order, so they
//! pick the same token for the same draw, except that CUDA's `expf` may differ from glibc's in
//! the last bit or two: when the draw `u` (or `top_p`, or a weight and `min_p`) lands within that
//! rounding of a boundary of the inverse CDF (or of a top-p or min-p cut) the two may pick
//! neighbours. A differing token is accepted only when the reference itself picks the GPU's
//! token with `u`, `top_p` or `min_p` moved by 1e-5 (weights sum to ~1 relative to the
//! largest, f32 rounding of the sums is ~1e-6 of the total), and at most 1% of the rows may
//! differ at all.
//!
//! Log-probabilities: `(l − max) − log Σ exp(l − max)` with the same order of additions; the
//! `expf`/`logf` ulps give ~1e-6 absolute, compared at 2e-5 absolute and 1e-5 relative.

use anyhow::{ensure, Result};
use openledger_kernels::{
	gpu::{sampling as gpu_sampling, Gpu},
	sampling::{self, Sampled, SamplingParams},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

pub const CHECKS: &[crate::Check] = &[
	("greedy", greedy),
	("min_p_top_k_top_p", min_p_top_k_top_p),
	("repeated_row_over_a_grid_of_draws", repeated_row),
];

fn params(temperature: f32, top_k: u32, top_p: f32) -> SamplingParams {
	SamplingParams { temperature, top_k, top_p, min_p: 0.0 }
}

fn with_min_p(min_p: f32, p: SamplingParams) -> SamplingParams {
	SamplingParams { min_p, ..p }
}

/// Runs both sides; returns how many rows picked different (but accepted) tokens.
fn run(
	gpu: &Gpu,
	logits: &[f32],
	vocab: usize,
	ps: &[SamplingParams],
	uniform: &[f32],
) -> Result<usize> {
	let rows = ps.len();
	let want = sampling::sample(logits, vocab, ps, uniform)?;
	let dlogits = gpu.upload(logits)?;
	let mut dtokens = gpu.zeros::<u32>(rows)?;
	let mut dlogprobs = gpu.zeros::<f32>(rows)?;
	gpu_sampling::sample(gpu, &dlogits, vocab, ps, uniform, &mut dtokens, &mut dlogprobs)?;
	let tokens = gpu.download(&dtokens)?;
	let logprobs = gpu.download(&dlogprobs)?;
	let mut differing = 0;
	for r in 0..rows {
		let row = &logits[r * vocab..(r + 1) * vocab];
		let what = format!("vocab {vocab} row {r} {:?} u {}", ps[r], uniform[r]);
		let got = tokens[r];
		ensure!((got as usize) < vocab, "{what}: token {got} out of range");
		let Sampled { token, logprob } = want[r];
		if got == token {
			crate::compare(&format!("{what} logprob"), &logprobs[r..=r], &[logprob], 2e-5, 1e-5)?;
			continue;
		}
		let near = |p: SamplingParams, u: f32| -> Result<bool> {
			let u = u.clamp(0.0, 1.0 - f32::EPSILON);
			Ok(sampling::sample(row, vocab, &[p], &[u])?[0].token == got)
		};
		let p = ps[r];
		let moved_p = |d: f32| SamplingParams { top_p: (p.top_p + d).clamp(0.0, 1.0), ..p };
		let moved_min_p = |d: f32| SamplingParams { min_p: (p.min_p + d).clamp(0.0, 1.0), ..p };
		let accepted = near(p, uniform[r] - 1e-5)?
			|| near(p, uniform[r] + 1e-5)?
			|| near(moved_p(-1e-5), uniform[r])?
			|| near(moved_p(1e-5), uniform[r])?
			|| (p.min_p > 0.0 && near(moved_min_p(-1e-5), uniform[r])?)
			|| (p.min_p > 0.0 && near(moved_min_p(1e-5), uniform[r])?);
		ensure!(accepted, "{what}: the GPU picked {got}, the CPU {token}, not a boundary case");
		// The log-probability of the GPU's token, in f64.
		let max = row.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
		let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
		let lp = (row[got as usize] as f64 - max - sum.ln()) as f32;
		crate::compare(&format!("{what} logprob"), &logprobs[r..=r], &[lp], 1e-4, 1e-5)?;
		differing += 1;
	}
	ensure!(differing * 100 <= rows.max(100), "{differing} of {rows} rows differ");
	Ok(differing)
}

/// Vocabularies: one token, two, odd, below and above LANES, SmolLM's 49152, Llama's 32000 + 1.
const VOCABS: [usize; 7] = [1, 2, 1001, 1024, 1025, 32001, 49152];

fn logits(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
	(0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn greedy(gpu: &Gpu) -> Result<()> {
	let mut rng = StdRng::seed_from_u64(21);
	for vocab in VOCABS {
		for rows in [1, 4, 9] {
			let mut l = logits(&mut rng, rows * vocab, 8.0);
			if vocab > 3 {
				// A tie at the top in row 0: the lowest index must win.
				l[vocab - 1] = 100.0;
				l[vocab / 2] = 100.0;
			}
			let ps = vec![SamplingParams::GREEDY; rows];
			let uniform: Vec<f32> = (0..rows).map(|_| rng.random::<f32>()).collect();
			let differing = run(gpu, &l, vocab, &ps, &uniform)?;
			ensure!(differing == 0, "greedy never depends on rounding");
		}
	}
	Ok(())
}

fn min_p_top_k_top_p(gpu: &Gpu) -> Result<()> {
	let mut rng = StdRng::seed_from_u64(22);
	let settings = [
		params(1.0, 0, 1.0),
		params(0.7, 50, 0.9),
		params(1.3, 0, 0.95),
		params(0.5, 1, 1.0),
		params(1.0, 40, 1.0),
		params(0.8, 0, 0.5),
		params(2.0, 2000, 0.99),
		params(1.0, 5, 0.0),
		with_min_p(0.05, params(1.0, 0, 1.0)),
		with_min_p(0.1, params(0.7, 50, 0.9)),
		with_min_p(1.0, params(1.5, 0, 1.0)),
	];
	for vocab in VOCABS {
		for rows in 1..=9 {
			// Flat and peaked rows.
			let scale = if rows % 2 == 0 { 3.0 } else { 15.0 };
			let l = logits(&mut rng, rows * vocab, scale);
			let ps: Vec<SamplingParams> =
				(0..rows).map(|r| settings[(r + rows) % settings.len()]).collect();
			let uniform: Vec<f32> = (0..rows).map(|_| rng.random::<f32>()).collect();
			run(gpu, &l, vocab, &ps, &uniform)?;
		}
	}
	Ok(())
}

/// One row of a small vocabulary repeated over an even grid of draws: every boundary of the
/// inverse CDF is crossed, so the GPU's mapping from draws to tokens is checked throughout.
fn repeated_row(gpu: &Gpu) -> Result<()> {
	let mut rng = StdRng::seed_from_u64(23);
	let rows = 2048;
	for (vocab, p) in [
		(16, params(1.0, 0, 0.9)),
		(3000, params(0.9, 20, 1.0)),
		(3000, with_min_p(0.2, params(1.0, 0, 1.0))),
	] {
		let row = logits(&mut rng, vocab, 2.0);
		let l: Vec<f32> = (0..rows).flat_map(|_| row.iter().copied()).collect();
		let uniform: Vec<f32> = (0..rows).map(|j| (j as f32 + 0.5) / rows as f32).collect();
		run(gpu, &l, vocab, &vec![p; rows], &uniform)?;
	}
	Ok(())
}
