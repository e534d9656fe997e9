//! Sampling one token per row of logits, with temperature, min-p, top-k and top-p, from a
//! uniform draw the caller gives, so that the GPU and the CPU pick the same token for the same
//! draw.
//!
//! For each row (the GPU runs one block of [`LANES`] threads per row, and this reference
//! follows it step by step):
//! 1. the logits are ordered by [`key`], an order-preserving map of their bits to `u32`; the
//!    greedy token is the largest key, the lowest index on ties;
//! 2. with temperature `T == 0` the greedy token is taken. Otherwise each token gets the
//!    weight `w_i = exp(l_i / T − max / T)` (its unnormalised softmax probability);
//! 3. min-p: with `min_p > 0` only the `n_m` tokens whose weight is at least `min_p` (whose
//!    probability is at least `min_p` times the greedy token's) may be kept, and since weights
//!    grow with keys they are the `n_m` of the largest keys: `k` becomes `n_m` (or stays `k`
//!    if that is fewer), as vLLM applies min-p before top-k and top-p;
//! 4. top-k: the threshold `τ_k` is the largest key such that at least `k` tokens have a key
//!    `≥ τ_k` (found by bisection over the 32-bit keys, counting in each step);
//! 5. top-p: the threshold `τ ≥ τ_k` is the largest key such that the tokens with a key `≥ τ`
//!    hold at least `top_p` of the mass of those kept by min-p and top-k (masses summed as the
//!    GPU's block reduction does, which is monotone in the set, so the bisection is exact);
//! 6. the kept tokens (key `≥ τ`) are visited in lane order — lane `t` owns the indices `t`,
//!    `t + LANES`, … — and the first whose cumulative weight exceeds `u · total` is taken.
//!
//! On logits without ties the kept set is exactly the `k` most probable tokens of those at least
//! `min_p` times as probable as the most probable, cut to the smallest prefix (in decreasing
//! probability) whose mass reaches `top_p` of theirs, as vLLM's min-p, then top-k, then top-p
//! define it. With ties at a threshold every tied
//! token is kept. The order of the inverse CDF (lanes, not indices) changes which token a given
//! `u` maps to, not the distribution.
//!
//! The GPU computes `expf` and `logf` with CUDA's libm (within 2 ulp), so its weights can
//! differ from these in the last bits: when `u · total`, `top_p` times a mass, or a weight and
//! `min_p`, fall within rounding of a boundary the two sides may pick neighbouring tokens;
//! anywhere else they agree.
//! Logits must not be NaN, and at least one must be finite (−∞ masks a token).

use crate::fused::block_sum;
pub use crate::ShapeError;

/// The threads of the GPU block that samples one row, whose order this reference follows.
pub const LANES: usize = 1024;

/// How one row is sampled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
	/// Softmax temperature; `0` samples greedily.
	pub temperature: f32,
	/// Keep only the `top_k` most probable tokens; `0` keeps all.
	pub top_k: u32,
	/// Keep the smallest set of most probable tokens holding at least this share of the mass
	/// (after min-p and top-k); `1` keeps all.
	pub top_p: f32,
	/// Keep only tokens at least this many times as probable as the most probable one (vLLM's
	/// `min_p`); `0` keeps all.
	pub min_p: f32,
}

impl SamplingParams {
	/// Greedy decoding.
	pub const GREEDY: Self = Self { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0 };

	/// Whether the parameters are in range: a finite temperature `≥ 0`, `0 ≤ top_p ≤ 1`,
	/// `0 ≤ min_p ≤ 1`.
	pub fn check(&self) -> Result<(), ShapeError> {
		let ok = self.temperature.is_finite()
			&& self.temperature >= 0.0
			&& (0.0..=1.0).contains(&self.top_p)
			&& (0.0..=1.0).contains(&self.min_p);
		if ok {
			Ok(())
		} else {
			Err(ShapeError(format!("sampling parameters out of range: {self:?}")))
		}
	}
}

/// The token sampled for one row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
	/// Its index in the vocabulary.
	pub token: u32,
	/// Its log-probability under the softmax of the raw logits (temperature 1, nothing cut),
	/// as the worker reports it.
	pub logprob: f32,
}

/// The order-preserving `u32` of a float: for any non-NaN `a < b`, `key(a) < key(b)`
/// (`-0.0` sorts just below `+0.0`).
pub fn key(x: f32) -> u32 {
	let bits = x.to_bits();
	if bits & 0x8000_0000 != 0 {
		!bits
	} else {
		bits | 0x8000_0000
	}
}

/// Checks the shapes and parameters of a call: `logits` `[rows, vocab]`, one `params` and one
/// `uniform` (in `[0, 1)`) per row. Returns `rows`.
pub fn check(
	logits: usize,
	vocab: usize,
	params: &[SamplingParams],
	uniform: &[f32],
) -> Result<usize, ShapeError> {
	if vocab == 0 || !logits.is_multiple_of(vocab) {
		return Err(ShapeError(format!("sample: {logits} logits for rows of {vocab}")));
	}
	let rows = logits / vocab;
	if params.len() != rows || uniform.len() != rows {
		return Err(ShapeError(format!(
			"sample: {rows} rows, {} parameters and {} draws",
			params.len(),
			uniform.len()
		)));
	}
	for p in params {
		p.check()?;
	}
	if let Some(u) = uniform.iter().find(|u| !(0.0..1.0).contains(*u)) {
		return Err(ShapeError(format!("sample: the draw {u} is not in [0, 1)")));
	}
	Ok(rows)
}

/// Samples one token from each row of `logits` (`[rows, vocab]`) with that row's parameters
/// and uniform draw, as described in the module documentation.
pub fn sample(
	logits: &[f32],
	vocab: usize,
	params: &[SamplingParams],
	uniform: &[f32],
) -> Result<Vec<Sampled>, ShapeError> {
	check(logits.len(), vocab, params, uniform)?;
	Ok(logits
		.chunks(vocab)
		.zip(params)
		.zip(uniform)
		.map(|((row, &p), &u)| sample_row(row, p, u))
		.collect())
}

/// The sum over lanes of `f(i)` for the indices `i` where it is `Some`, each lane adding its
/// indices in order, the lanes combined by the block reduction.
fn lane_sum(vocab: usize, f: impl Fn(usize) -> Option<f32>) -> f32 {
	block_sum(&lane_partials(vocab, f))
}

/// Each lane's sequential sum of `f(i)` over its indices `lane, lane + LANES, …`.
fn lane_partials(vocab: usize, f: impl Fn(usize) -> Option<f32>) -> Vec<f32> {
	(0..LANES)
		.map(|lane| {
			let mut acc = 0f32;
			for i in (lane..vocab).step_by(LANES) {
				if let Some(w) = f(i) {
					acc += w;
				}
			}
			acc
		})
		.collect()
}

/// The largest `τ` in `[lo, hi)` for which `pred` holds, given that it holds at `lo` and is
/// monotone (true, then false); the same halving steps as the kernel.
fn bisect(mut lo: u64, mut hi: u64, pred: impl Fn(u32) -> bool) -> u32 {
	while hi - lo > 1 {
		let mid = lo + (hi - lo) / 2;
		// mid < hi <= 2^32.
		if pred(mid as u32) {
			lo = mid;
		} else {
			hi = mid;
		}
	}
	lo as u32
}

/// The greedy token: the largest key, the lowest index on ties.
fn argmax(row: &[f32]) -> usize {
	let mut best = 0;
	for (i, &l) in row.iter().enumerate() {
		if key(l) > key(row[best]) {
			best = i;
		}
	}
	best
}

/// The threshold key of the kept set for `p` (tokens with a key `≥` it are kept), with the
/// weights `w` and the greedy token's key.
fn threshold(row: &[f32], p: SamplingParams, w: &impl Fn(usize) -> f32, max_key: u32) -> u32 {
	let vocab = row.len();
	let hi = u64::from(max_key) + 1;
	let mut k = u64::from(p.top_k);
	if p.min_p > 0.0 {
		// (The greedy token's weight is 1, so it is counted: unless `max / T` overflows, and
		// then the draw falls back on it anyway.)
		let n_m = (0..vocab).filter(|&i| w(i) >= p.min_p).count().max(1) as u64;
		k = if k == 0 { n_m } else { k.min(n_m) };
	}
	let tau_k = if k > 0 && k < vocab as u64 {
		bisect(0, hi, |tau| row.iter().filter(|&&l| key(l) >= tau).count() as u64 >= k)
	} else {
		0
	};
	if p.top_p >= 1.0 {
		return tau_k;
	}
	let mass = |tau: u32| lane_sum(vocab, |i| (key(row[i]) >= tau).then(|| w(i)));
	let target = p.top_p * mass(tau_k);
	bisect(u64::from(tau_k), hi, |tau| mass(tau) >= target)
}

/// One row.
fn sample_row(row: &[f32], p: SamplingParams, u: f32) -> Sampled {
	let vocab = row.len();
	let greedy = argmax(row);
	let max = row[greedy];
	let log_denominator = lane_sum(vocab, |i| Some((row[i] - max).exp())).ln();
	let token = if p.temperature <= 0.0 {
		greedy
	} else {
		let t = p.temperature;
		let z_max = max / t;
		let w = |i: usize| (row[i] / t - z_max).exp();
		let tau = threshold(row, p, &w, key(max));
		let kept = |i: usize| (key(row[i]) >= tau).then(|| w(i));
		let partials = lane_partials(vocab, kept);
		// Exclusive prefix over lanes, added one after the other by one thread.
		let mut prefix = Vec::with_capacity(LANES + 1);
		let mut run = 0f32;
		prefix.push(run);
		for &s in &partials {
			run += s;
			prefix.push(run);
		}
		let total = prefix[LANES];
		let target = u * total;
		let mut token = greedy;
		if target < total {
			// The one lane with prefix[lane] <= target < prefix[lane + 1]; its own running sum
			// ends at partials[lane], so prefix[lane] + it passes the target within the lane.
			if let Some(lane) = (0..LANES).find(|&l| prefix[l] <= target && target < prefix[l + 1])
			{
				let mut local = 0f32;
				for i in (lane..vocab).step_by(LANES) {
					if let Some(wi) = kept(i) {
						local += wi;
						if prefix[lane] + local > target {
							token = i;
							break;
						}
					}
				}
			}
		}
		token
	};
	Sampled { token: token as u32, logprob: (row[token] - max) - log_denominator }
}

#[cfg(test)]
mod tests {
	use rand::{rngs::StdRng, Rng, SeedableRng};

	use super::*;

	fn random_logits(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
		(0..n).map(|_| rng.random_range(-scale..scale)).collect()
	}

	fn params(temperature: f32, top_k: u32, top_p: f32) -> SamplingParams {
		SamplingParams { temperature, top_k, top_p, min_p: 0.0 }
	}

	/// Softmax of `row / t` in f64.
	fn softmax(row: &[f32], t: f64) -> Vec<f64> {
		let max = row.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
		let e: Vec<f64> = row.iter().map(|&l| ((l as f64 - max) / t).exp()).collect();
		let s: f64 = e.iter().sum();
		e.iter().map(|v| v / s).collect()
	}

	/// The textbook kept set: sort by probability (descending, ties by index), keep those at
	/// least `min_p` times the first's, keep `k`, then the shortest prefix whose mass reaches
	/// `top_p` of theirs. `None` when a probability ratio is within 1e-5 of `min_p` or a
	/// cumulative mass within 1e-5 (relative) of the cut, where f32 rounding may decide either
	/// way.
	fn textbook_kept(row: &[f32], p: SamplingParams) -> Option<Vec<usize>> {
		let probs = softmax(row, p.temperature as f64);
		let mut order: Vec<usize> = (0..row.len()).collect();
		order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
		let top = probs[order[0]];
		if p.min_p > 0.0 {
			if order[1..].iter().any(|&i| (probs[i] / top - p.min_p as f64).abs() < 1e-5) {
				return None;
			}
			order.retain(|&i| probs[i] / top >= p.min_p as f64);
		}
		if p.top_k > 0 {
			order.truncate(p.top_k as usize);
		}
		if p.top_p < 1.0 {
			let mass: f64 = order.iter().map(|&i| probs[i]).sum();
			let target = p.top_p as f64 * mass;
			let mut cum = 0.0;
			let mut n = order.len();
			for (j, &i) in order.iter().enumerate() {
				cum += probs[i];
				if (cum - target).abs() < 1e-5 * mass {
					return None;
				}
				if cum >= target && j + 1 < n {
					n = j + 1;
				}
			}
			order.truncate(n);
		}
		order.sort();
		Some(order)
	}

	fn kept_by_reference(row: &[f32], p: SamplingParams) -> Vec<usize> {
		let t = p.temperature;
		let max = row[argmax(row)];
		let w = |i: usize| (row[i] / t - max / t).exp();
		let tau = threshold(row, p, &w, key(max));
		(0..row.len()).filter(|&i| key(row[i]) >= tau).collect()
	}

	#[test]
	fn keys_preserve_order() {
		let values =
			[f32::NEG_INFINITY, -3.5, -1e-30, -0.0, 0.0, 1e-30, 1.0, 2.5, f32::MAX, f32::INFINITY];
		for pair in values.windows(2) {
			assert!(key(pair[0]) < key(pair[1]), "{} < {}", pair[0], pair[1]);
		}
	}

	#[test]
	fn greedy_is_the_argmax_lowest_index_on_ties() {
		let mut rng = StdRng::seed_from_u64(1);
		for vocab in [1, 2, 7, 1001, 5000] {
			let row = random_logits(&mut rng, vocab, 5.0);
			let want = (0..vocab).fold(0, |b, i| if row[i] > row[b] { i } else { b });
			let got = sample(&row, vocab, &[SamplingParams::GREEDY], &[0.3]).unwrap();
			assert_eq!(got[0].token as usize, want);
		}
		let tied = [1.0, 3.0, -2.0, 3.0, 3.0];
		let got = sample(&tied, 5, &[SamplingParams::GREEDY], &[0.9]).unwrap();
		assert_eq!(got[0].token, 1);
	}

	#[test]
	fn top_k_one_and_a_tiny_top_p_are_greedy() {
		let mut rng = StdRng::seed_from_u64(2);
		for vocab in [3, 1001, 4099] {
			let row = random_logits(&mut rng, vocab, 4.0);
			let greedy = sample(&row, vocab, &[SamplingParams::GREEDY], &[0.0]).unwrap()[0];
			for u in [0.0, 0.25, 0.5, 0.999] {
				for p in [params(1.0, 1, 1.0), params(0.7, 0, 1e-6), params(2.0, 50, 0.0)] {
					let got = sample(&row, vocab, &[p], &[u]).unwrap()[0];
					assert_eq!(got, greedy, "{p:?} u {u}");
				}
			}
		}
	}

	#[test]
	fn the_kept_set_is_top_k_then_top_p() {
		let mut rng = StdRng::seed_from_u64(3);
		let mut checked = 0;
		for case in 0..300 {
			let vocab = [5, 64, 1001, 2050][case % 4];
			let row = random_logits(&mut rng, vocab, 6.0);
			let top_k = [0, 1, 3, 40, 5000][rng.random_range(0..5)];
			let top_p = [1.0, 0.9, 0.5, 0.99, 0.2][rng.random_range(0..5)];
			let p = params(rng.random_range(0.3..2.0), top_k, top_p);
			if let Some(want) = textbook_kept(&row, p) {
				assert_eq!(kept_by_reference(&row, p), want, "case {case}: {p:?}");
				checked += 1;
			}
		}
		assert!(checked > 250, "only {checked} cases were away from a boundary");
	}

	#[test]
	fn the_kept_set_is_min_p_then_top_k_then_top_p() {
		let mut rng = StdRng::seed_from_u64(7);
		let mut checked = 0;
		let mut cut_by_min_p = 0;
		for case in 0..300 {
			let vocab = [5, 64, 1001, 2050][case % 4];
			let row = random_logits(&mut rng, vocab, 6.0);
			let top_k = [0, 1, 3, 40, 5000][rng.random_range(0..5)];
			let top_p = [1.0, 0.9, 0.5][rng.random_range(0..3)];
			let min_p = [0.0, 0.01, 0.05, 0.2, 0.9, 1.0][rng.random_range(0..6)];
			let p = SamplingParams { min_p, ..params(rng.random_range(0.3..2.0), top_k, top_p) };
			if let Some(want) = textbook_kept(&row, p) {
				let got = kept_by_reference(&row, p);
				assert_eq!(got, want, "case {case}: {p:?}");
				let without = kept_by_reference(&row, SamplingParams { min_p: 0.0, ..p });
				cut_by_min_p += usize::from(got.len() < without.len());
				checked += 1;
			}
		}
		assert!(checked > 200, "only {checked} cases were away from a boundary");
		assert!(cut_by_min_p > 50, "min_p cut only {cut_by_min_p} kept sets");
		// min_p 1 keeps the most probable token (and any tied with it); the draw is then greedy.
		let row = [0.5, 2.0, 1.0, 2.0];
		let p = SamplingParams { min_p: 1.0, ..params(1.0, 0, 1.0) };
		assert_eq!(kept_by_reference(&row, p), [1, 3]);
		assert!(sample(&row, 4, &[SamplingParams { min_p: 1.5, ..p }], &[0.1]).is_err());
		assert!(sample(&row, 4, &[SamplingParams { min_p: -0.1, ..p }], &[0.1]).is_err());
	}

	#[test]
	fn ties_at_the_top_k_threshold_are_all_kept() {
		let row = [1.0, 2.0, 2.0, 0.5, 2.0];
		assert_eq!(kept_by_reference(&row, params(1.0, 2, 1.0)), [1, 2, 4]);
	}

	/// Frequencies over an even grid of draws match the renormalised probabilities of the kept
	/// set to within a few grid steps.
	#[test]
	fn draws_follow_the_renormalised_distribution() {
		let mut rng = StdRng::seed_from_u64(4);
		let n = 20_000;
		for (vocab, p) in [
			(6, params(1.0, 0, 1.0)),
			(10, params(0.5, 0, 1.0)),
			(10, params(1.5, 4, 1.0)),
			(12, params(1.0, 0, 0.8)),
			(12, params(0.8, 6, 0.7)),
			(300, params(1.0, 3, 1.0)),
			(12, SamplingParams { min_p: 0.3, ..params(1.0, 0, 1.0) }),
			(40, SamplingParams { min_p: 0.1, ..params(1.2, 8, 0.9) }),
		] {
			let row = random_logits(&mut rng, vocab, 2.0);
			let Some(kept) = textbook_kept(&row, p) else { continue };
			let probs = softmax(&row, p.temperature as f64);
			let mass: f64 = kept.iter().map(|&i| probs[i]).sum();
			let mut counts = vec![0usize; vocab];
			let uniform: Vec<f32> = (0..n).map(|j| (j as f32 + 0.5) / n as f32).collect();
			let rows: Vec<f32> = (0..n).flat_map(|_| row.iter().copied()).collect();
			for s in sample(&rows, vocab, &vec![p; n], &uniform).unwrap() {
				counts[s.token as usize] += 1;
			}
			for i in 0..vocab {
				let want = if kept.contains(&i) { probs[i] / mass } else { 0.0 };
				let got = counts[i] as f64 / n as f64;
				assert!((got - want).abs() < 3.0 / n as f64, "{p:?} token {i}: {got} vs {want}");
			}
		}
	}

	/// The same check with random draws and a chi-square bound.
	#[test]
	fn random_draws_pass_a_chi_square_test() {
		let mut rng = StdRng::seed_from_u64(5);
		let vocab = 8;
		let row = random_logits(&mut rng, vocab, 1.5);
		let p = params(1.0, 0, 1.0);
		let probs = softmax(&row, 1.0);
		let n = 40_000;
		let uniform: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
		let rows: Vec<f32> = (0..n).flat_map(|_| row.iter().copied()).collect();
		let mut counts = vec![0f64; vocab];
		for s in sample(&rows, vocab, &vec![p; n], &uniform).unwrap() {
			counts[s.token as usize] += 1.0;
		}
		let chi2: f64 = (0..vocab)
			.map(|i| {
				let e = probs[i] * n as f64;
				(counts[i] - e).powi(2) / e
			})
			.sum();
		// 7 degrees of freedom: P(χ² > 24.3) = 0.001.
		assert!(chi2 < 24.3, "chi-square {chi2}");
	}

	#[test]
	fn temperature_sharpens_and_flattens() {
		let row = [0.0f32, 1.0, 2.0];
		let n = 10_000;
		let uniform: Vec<f32> = (0..n).map(|j| (j as f32 + 0.5) / n as f32).collect();
		let rows: Vec<f32> = (0..n).flat_map(|_| row).collect();
		let share_of_best = |t: f32| {
			let s = sample(&rows, 3, &vec![params(t, 0, 1.0); n], &uniform).unwrap();
			s.iter().filter(|s| s.token == 2).count() as f64 / n as f64
		};
		for t in [0.25f32, 1.0, 4.0] {
			let want = softmax(&row, t as f64)[2];
			assert!((share_of_best(t) - want).abs() < 3e-4, "T = {t}");
		}
		assert!(share_of_best(0.25) > share_of_best(1.0));
		assert!(share_of_best(1.0) > share_of_best(4.0));
	}

	#[test]
	fn logprob_is_the_raw_log_softmax() {
		let mut rng = StdRng::seed_from_u64(6);
		for vocab in [1, 3, 1001, 49152] {
			let row = random_logits(&mut rng, vocab, 10.0);
			for p in [SamplingParams::GREEDY, params(0.7, 40, 0.9)] {
				let s = sample(&row, vocab, &[p], &[0.42]).unwrap()[0];
				let probs = softmax(&row, 1.0);
				let want = probs[s.token as usize].ln();
				assert!((s.logprob as f64 - want).abs() < 1e-5, "{vocab}: {} vs {want}", s.logprob);
			}
		}
	}

	#[test]
	fn masked_tokens_are_never_drawn() {
		let row = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.5];
		for j in 0..100 {
			let u = j as f32 / 100.0;
			let s = sample(&row, 4, &[params(1.0, 0, 1.0)], &[u]).unwrap()[0];
			assert!(s.token == 1 || s.token == 3);
		}
	}

	#[test]
	fn bad_shapes_and_parameters_are_refused() {
		let p = SamplingParams::GREEDY;
		assert!(sample(&[0.0; 6], 3, &[p, p], &[0.1, 0.2]).is_ok());
		assert!(sample(&[0.0; 6], 4, &[p, p], &[0.1, 0.2]).is_err(), "ragged rows");
		assert!(sample(&[0.0; 6], 0, &[], &[]).is_err(), "empty vocabulary");
		assert!(sample(&[0.0; 6], 3, &[p], &[0.1, 0.2]).is_err(), "parameters per row");
		assert!(sample(&[0.0; 6], 3, &[p, p], &[0.1]).is_err(), "draws per row");
		assert!(sample(&[0.0; 3], 3, &[p], &[1.0]).is_err(), "u = 1");
		assert!(sample(&[0.0; 3], 3, &[p], &[-0.1]).is_err(), "u < 0");
		assert!(sample(&[0.0; 3], 3, &[params(-1.0, 0, 1.0)], &[0.1]).is_err());
		assert!(sample(&[0.0; 3], 3, &[params(f32::NAN, 0, 1.0)], &[0.1]).is_err());
		assert!(sample(&[0.0; 3], 3, &[params(1.0, 0, 1.5)], &[0.1]).is_err());
	}
}
