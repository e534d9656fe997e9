//! The activation-sparse FFN down projection: after SiLU-and-multiply most entries of the
//! intermediate activation `h` are small, and the rows of the down projection they multiply can
//! be skipped.
//!
//! The weight is stored transposed, `w_down_t` `[inter, hidden]` (row `i` is what activation
//! `i` adds to the output), so a skipped activation is a skipped contiguous row. Both products
//! accumulate each output from zero over the (active) activations in ascending index order with
//! one fused multiply-add each, exactly as the CUDA kernels do, so the GPU gives the same bits.
//! With a threshold of zero only exact zeros are skipped, and since `fma(0, w, acc) = acc` for
//! finite `w`, the sparse result then equals the dense one exactly.

pub use crate::ShapeError;

/// Checks `h` `[rows, inter]`, `w_t` `[inter, hidden]` and `y` `[rows, hidden]`; returns
/// `rows`.
fn check(h: usize, inter: usize, w_t: usize, hidden: usize, y: usize) -> Result<usize, ShapeError> {
	if inter == 0 || hidden == 0 || !h.is_multiple_of(inter) || w_t != inter * hidden {
		return Err(ShapeError(format!(
			"down projection: h of {h} for rows of {inter}, a weight of {w_t} for \
			 {inter} × {hidden}"
		)));
	}
	let rows = h / inter;
	if y != rows * hidden {
		return Err(ShapeError(format!("down projection: y has {y} values for {rows} × {hidden}")));
	}
	Ok(rows)
}

/// Whether activation `v` is used: `|v| > threshold`.
pub fn is_active(v: f32, threshold: f32) -> bool {
	v.abs() > threshold
}

/// `y[r] = Σ_i h[r, i] · w_t[i]` over every `i`, ascending, with fused multiply-adds.
pub fn down_dense(
	h: &[f32],
	inter: usize,
	w_t: &[f32],
	hidden: usize,
	y: &mut [f32],
) -> Result<(), ShapeError> {
	check(h.len(), inter, w_t.len(), hidden, y.len())?;
	for (h, y) in h.chunks(inter).zip(y.chunks_mut(hidden)) {
		y.fill(0.0);
		for (&v, w) in h.iter().zip(w_t.chunks(hidden)) {
			axpy(v, w, y);
		}
	}
	Ok(())
}

/// `y[r] = Σ h[r, i] · w_t[i]` over the `i` with `|h[r, i]| > threshold`, ascending, with fused
/// multiply-adds. Returns how many activations each row used.
pub fn down_sparse(
	h: &[f32],
	inter: usize,
	w_t: &[f32],
	hidden: usize,
	threshold: f32,
	y: &mut [f32],
) -> Result<Vec<usize>, ShapeError> {
	check(h.len(), inter, w_t.len(), hidden, y.len())?;
	let mut counts = Vec::with_capacity(h.len() / inter);
	for (h, y) in h.chunks(inter).zip(y.chunks_mut(hidden)) {
		y.fill(0.0);
		let mut count = 0;
		for (&v, w) in h.iter().zip(w_t.chunks(hidden)) {
			if is_active(v, threshold) {
				axpy(v, w, y);
				count += 1;
			}
		}
		counts.push(count);
	}
	Ok(counts)
}

/// `y = fma(v, w, y)` elementwise.
fn axpy(v: f32, w: &[f32], y: &mut [f32]) {
	for (y, &w) in y.iter_mut().zip(w) {
		*y = v.mul_add(w, *y);
	}
}

#[cfg(test)]
mod tests {
	use rand::{rngs::StdRng, Rng, SeedableRng};

	use super::*;

	/// Activations as after SiLU-and-multiply with most of them zeroed: `zero_share` exact
	/// zeros, the rest spread over `[-1, 1]` with some below 0.01 in magnitude.
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

	fn dense_f64(h: &[f32], inter: usize, w_t: &[f32], hidden: usize) -> Vec<f64> {
		let rows = h.len() / inter;
		let mut y = vec![0f64; rows * hidden];
		for r in 0..rows {
			for i in 0..inter {
				for c in 0..hidden {
					y[r * hidden + c] += h[r * inter + i] as f64 * w_t[i * hidden + c] as f64;
				}
			}
		}
		y
	}

	const SHAPES: [(usize, usize, usize); 6] =
		[(1, 1, 1), (3, 1536, 576), (2, 1001, 257), (9, 64, 4097), (1, 5, 3), (4, 2048, 1)];

	#[test]
	fn dense_matches_the_textbook_product() {
		let mut rng = StdRng::seed_from_u64(1);
		for (rows, inter, hidden) in SHAPES {
			let h = activations(&mut rng, rows * inter, 0.2);
			let w: Vec<f32> = (0..inter * hidden).map(|_| rng.random_range(-1.0..1.0)).collect();
			let mut y = vec![f32::NAN; rows * hidden];
			down_dense(&h, inter, &w, hidden, &mut y).unwrap();
			let want = dense_f64(&h, inter, &w, hidden);
			// inter f32 fused multiply-adds of terms below 1: within inter · 2⁻²⁴ · Σ|terms|.
			let bound = inter as f64 * 6e-8 * inter as f64;
			for (g, w) in y.iter().zip(&want) {
				assert!((*g as f64 - w).abs() <= bound.max(1e-6), "{g} vs {w}");
			}
		}
	}

	#[test]
	fn sparse_equals_dense_when_the_skipped_activations_are_zero() {
		let mut rng = StdRng::seed_from_u64(2);
		for (rows, inter, hidden) in SHAPES {
			for zero_share in [0.0, 0.5, 0.9, 1.0] {
				let h = activations(&mut rng, rows * inter, zero_share);
				let w: Vec<f32> =
					(0..inter * hidden).map(|_| rng.random_range(-1.0..1.0)).collect();
				let mut dense = vec![0f32; rows * hidden];
				let mut sparse = vec![f32::NAN; rows * hidden];
				down_dense(&h, inter, &w, hidden, &mut dense).unwrap();
				let counts = down_sparse(&h, inter, &w, hidden, 0.0, &mut sparse).unwrap();
				let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
				assert_eq!(bits(&sparse), bits(&dense), "{rows}x{inter}x{hidden} {zero_share}");
				for (r, &count) in counts.iter().enumerate() {
					let nonzero = h[r * inter..(r + 1) * inter].iter().filter(|v| **v != 0.0);
					assert_eq!(count, nonzero.count());
				}
			}
		}
	}

	#[test]
	fn a_threshold_drops_at_most_the_skipped_mass() {
		let mut rng = StdRng::seed_from_u64(3);
		for (rows, inter, hidden) in SHAPES {
			for threshold in [0.005f32, 0.1, 0.5] {
				let h = activations(&mut rng, rows * inter, 0.3);
				let w: Vec<f32> =
					(0..inter * hidden).map(|_| rng.random_range(-1.0..1.0)).collect();
				let w_max = w.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
				let mut y = vec![0f32; rows * hidden];
				let counts = down_sparse(&h, inter, &w, hidden, threshold, &mut y).unwrap();
				let want = dense_f64(&h, inter, &w, hidden);
				for r in 0..rows {
					let row = &h[r * inter..(r + 1) * inter];
					let skipped: f64 = row
						.iter()
						.filter(|v| !is_active(**v, threshold))
						.map(|v| v.abs() as f64)
						.sum();
					let total: f64 = row.iter().map(|v| v.abs() as f64).sum();
					assert_eq!(counts[r], row.iter().filter(|v| v.abs() > threshold).count());
					let bound = skipped * w_max + 6e-8 * inter as f64 * total * w_max + 1e-7;
					for c in 0..hidden {
						let err = (y[r * hidden + c] as f64 - want[r * hidden + c]).abs();
						assert!(err <= bound, "{rows}x{inter}x{hidden} t {threshold}: {err}");
					}
				}
			}
		}
	}

	#[test]
	fn a_threshold_actually_skips() {
		// Only activation 1 is above the threshold: y is its row of the weight times it.
		let h = [0.05f32, 2.0, -0.1];
		let w = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
		let mut y = [0f32; 2];
		let counts = down_sparse(&h, 3, &w, 2, 0.1, &mut y).unwrap();
		assert_eq!((counts, y), (vec![1], [6.0, 8.0]));
		down_dense(&h, 3, &w, 2, &mut y).unwrap();
		assert!((y[0] - 5.55).abs() < 1e-5 && (y[1] - 7.5).abs() < 1e-5, "{y:?}");
	}

	#[test]
	fn bad_shapes_are_refused() {
		let mut y = vec![0f32; 6];
		assert!(down_dense(&[0.0; 8], 4, &[0.0; 12], 3, &mut y).is_ok());
		assert!(down_dense(&[0.0; 7], 4, &[0.0; 12], 3, &mut y).is_err(), "ragged h");
		assert!(down_dense(&[0.0; 8], 4, &[0.0; 11], 3, &mut y).is_err(), "weight");
		assert!(down_dense(&[0.0; 8], 4, &[0.0; 12], 3, &mut y[..3]).is_err(), "y rows");
		assert!(down_sparse(&[0.0; 8], 0, &[], 3, 0.0, &mut y).is_err(), "inter 0");
		assert!(down_sparse(&[0.0; 8], 4, &[0.0; 12], 3, 0.0, &mut y[..5]).is_err());
	}
}
