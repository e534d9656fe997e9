//! Multi-LoRA: `y[r] += ((x[r] · Aᵀ) · (s·B)ᵀ)` for each row `r` of a batch, with the adapter
//! (`A`, `s·B`) of the segment the row belongs to, or nothing for rows served by the base model.
//!
//! The two products are the "shrink" (`in → rank`) and the "expand" (`rank → out`) of Punica's
//! SGMV/BGMV kernels. Each row is computed alone in a fixed order — a dot product over `in` per
//! rank for the shrink, an axpy per rank for the expand, then one add into `y` — so a row gets
//! the same bits whether it is alone, in a prefill segment or in a decode batch of any size.

use std::ops::Range;

/// One adapter's low-rank pair for one projection, as the kernels read it.
#[derive(Clone, Copy, Debug)]
pub struct LoraPair<'a> {
	/// `A`, `[rank, in]` row-major (PEFT's `lora_A.weight` as stored).
	pub a: &'a [f32],
	/// `s·Bᵀ`, `[rank, out]` row-major: `lora_B.weight` transposed, times the adapter's scale.
	pub b_t: &'a [f32],
	/// The rank.
	pub rank: usize,
}

/// Rows of a batch that share an adapter.
#[derive(Clone, Debug)]
pub struct Segment<'a> {
	/// The rows.
	pub rows: Range<usize>,
	/// Their adapter's pair for this projection.
	pub pair: LoraPair<'a>,
}

pub use crate::ShapeError;

/// Adds each segment's low-rank product to its rows of `y` (`[rows, out_dim]`), from `x`
/// (`[rows, in_dim]`). Rows in no segment are left as they are.
pub fn sgmv(
	x: &[f32],
	in_dim: usize,
	y: &mut [f32],
	out_dim: usize,
	segments: &[Segment<'_>],
) -> Result<(), ShapeError> {
	if in_dim == 0
		|| out_dim == 0
		|| !x.len().is_multiple_of(in_dim)
		|| !y.len().is_multiple_of(out_dim)
	{
		return Err(ShapeError(format!(
			"x has {} values for rows of {in_dim}, y {} for rows of {out_dim}",
			x.len(),
			y.len()
		)));
	}
	let rows = x.len() / in_dim;
	if y.len() / out_dim != rows {
		return Err(ShapeError(format!("x has {rows} rows, y {}", y.len() / out_dim)));
	}
	for segment in segments {
		let LoraPair { a, b_t, rank } = segment.pair;
		if segment.rows.end > rows || a.len() != rank * in_dim || b_t.len() != rank * out_dim {
			return Err(ShapeError(format!(
				"a segment of rows {:?} (of {rows}) with A of {} and sBᵀ of {} values for rank \
				 {rank}, {in_dim} in, {out_dim} out",
				segment.rows,
				a.len(),
				b_t.len()
			)));
		}
	}
	let max_rank = segments.iter().map(|s| s.pair.rank).max().unwrap_or(0);
	let mut shrunk = vec![0f32; max_rank];
	let mut delta = vec![0f32; out_dim];
	for segment in segments {
		let LoraPair { a, b_t, rank } = segment.pair;
		for row in segment.rows.clone() {
			let x_row = &x[row * in_dim..(row + 1) * in_dim];
			// Shrink: one dot product over `in` per rank.
			for (j, value) in shrunk[..rank].iter_mut().enumerate() {
				*value = dot(x_row, &a[j * in_dim..(j + 1) * in_dim]);
			}
			// Expand: one axpy over `out` per rank, then one add into the row.
			delta.fill(0.0);
			for (j, &t) in shrunk[..rank].iter().enumerate() {
				for (d, &b) in delta.iter_mut().zip(&b_t[j * out_dim..(j + 1) * out_dim]) {
					*d += t * b;
				}
			}
			for (y, d) in y[row * out_dim..(row + 1) * out_dim].iter_mut().zip(&delta) {
				*y += d;
			}
		}
	}
	Ok(())
}

/// A dot product in a fixed order: eight running sums (which the compiler vectorises), added
/// pairwise, then the tail.
fn dot(x: &[f32], w: &[f32]) -> f32 {
	let mut acc = [0f32; 8];
	let chunks = x.len() / 8;
	for c in 0..chunks {
		for l in 0..8 {
			acc[l] += x[c * 8 + l] * w[c * 8 + l];
		}
	}
	let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
	for i in chunks * 8..x.len() {
		sum += x[i] * w[i];
	}
	sum
}

#[cfg(test)]
mod tests {
	use rand::{rngs::StdRng, Rng, SeedableRng};

	use super::*;

	fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
		(0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
	}

	/// The same in f64 with the textbook formula: `y + x Aᵀ (sB)ᵀ`.
	fn reference(
		x: &[f32],
		y: &[f32],
		a: &[f32],
		b_t: &[f32],
		rank: usize,
		i: usize,
		o: usize,
	) -> Vec<f64> {
		let rows = x.len() / i;
		let mut out: Vec<f64> = y.iter().map(|&v| v as f64).collect();
		for r in 0..rows {
			for k in 0..o {
				let mut acc = 0f64;
				for j in 0..rank {
					let s: f64 = (0..i).map(|c| x[r * i + c] as f64 * a[j * i + c] as f64).sum();
					acc += s * b_t[j * o + k] as f64;
				}
				out[r * o + k] += acc;
			}
		}
		out
	}

	#[test]
	fn matches_the_textbook_formula_over_many_shapes_and_ranks() {
		let mut rng = StdRng::seed_from_u64(7);
		for &(in_dim, out_dim) in &[(1, 1), (7, 5), (64, 192), (576, 576), (129, 33)] {
			for rank in [1, 2, 3, 8, 16, 64, 128] {
				let rows = 1 + rank % 5;
				let x = random(&mut rng, rows * in_dim);
				let y0 = random(&mut rng, rows * out_dim);
				let a = random(&mut rng, rank * in_dim);
				let b_t = random(&mut rng, rank * out_dim);
				let mut y = y0.clone();
				let pair = LoraPair { a: &a, b_t: &b_t, rank };
				sgmv(&x, in_dim, &mut y, out_dim, &[Segment { rows: 0..rows, pair }]).unwrap();
				let want = reference(&x, &y0, &a, &b_t, rank, in_dim, out_dim);
				let scale = (in_dim * rank) as f64;
				for (got, want) in y.iter().zip(&want) {
					let err = (*got as f64 - want).abs();
					assert!(
						err <= 1e-5 * scale.max(1.0),
						"{in_dim}x{out_dim} rank {rank}: {got} vs {want}"
					);
				}
			}
		}
	}

	#[test]
	fn each_row_gets_the_same_bits_whatever_shares_its_batch() {
		let mut rng = StdRng::seed_from_u64(3);
		let (in_dim, out_dim) = (96, 40);
		let adapters: Vec<(Vec<f32>, Vec<f32>, usize)> = [4, 16, 1]
			.iter()
			.map(|&r| (random(&mut rng, r * in_dim), random(&mut rng, r * out_dim), r))
			.collect();
		let pair =
			|i: usize| LoraPair { a: &adapters[i].0, b_t: &adapters[i].1, rank: adapters[i].2 };
		let x = random(&mut rng, 9 * in_dim);
		let y0 = random(&mut rng, 9 * out_dim);
		// Rows 0-3: adapter 0 (a prefill segment); row 4: base; rows 5-8: one row each.
		let mut batched = y0.clone();
		let segments = [
			Segment { rows: 0..4, pair: pair(0) },
			Segment { rows: 5..6, pair: pair(1) },
			Segment { rows: 6..7, pair: pair(2) },
			Segment { rows: 7..9, pair: pair(0) },
		];
		sgmv(&x, in_dim, &mut batched, out_dim, &segments).unwrap();
		assert_eq!(
			batched[4 * out_dim..5 * out_dim],
			y0[4 * out_dim..5 * out_dim],
			"base row untouched"
		);
		for (segment_index, segment) in segments.iter().enumerate() {
			for row in segment.rows.clone() {
				let mut alone = y0[row * out_dim..(row + 1) * out_dim].to_vec();
				let single = [Segment { rows: 0..1, pair: segments[segment_index].pair }];
				sgmv(&x[row * in_dim..(row + 1) * in_dim], in_dim, &mut alone, out_dim, &single)
					.unwrap();
				assert_eq!(alone[..], batched[row * out_dim..(row + 1) * out_dim], "row {row}");
			}
		}
	}

	#[test]
	fn bad_shapes_are_refused() {
		let a = vec![0.0; 8];
		let pair = LoraPair { a: &a, b_t: &a, rank: 2 };
		let mut y = vec![0.0; 8];
		let seg = |rows| [Segment { rows, pair }];
		assert!(sgmv(&[0.0; 8], 4, &mut y, 4, &seg(0..2)).is_ok());
		assert!(sgmv(&[0.0; 8], 4, &mut y, 4, &seg(0..3)).is_err(), "rows past the batch");
		assert!(sgmv(&[0.0; 8], 3, &mut y, 4, &seg(0..1)).is_err(), "ragged x");
		assert!(sgmv(&[0.0; 12], 4, &mut y, 4, &seg(0..1)).is_err(), "x and y rows differ");
		let wrong = LoraPair { a: &a, b_t: &a, rank: 3 };
		assert!(sgmv(&[0.0; 8], 4, &mut y, 4, &[Segment { rows: 0..1, pair: wrong }]).is_err());
	}
}
