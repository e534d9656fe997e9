//! The small fused kernels of a Llama block: RMSNorm (alone, or fused with the residual add
//! that precedes it), rotary position embeddings, SiLU-and-multiply and an in-place add.
//!
//! The normalisations follow the GPU's reduction exactly: the sum of squares of a row is split
//! over [`NORM_THREADS`] lanes (lane `t` sums elements `t`, `t + NORM_THREADS`, … with fused
//! multiply-adds), and the lane sums are combined by [`block_sum`], the warp-butterfly tree the
//! CUDA block reduction uses. The rest of each kernel is elementwise with no contraction, so the
//! GPU gives the same bits except where it calls `expf` (SiLU), whose last bits may differ.

pub use crate::ShapeError;

/// The threads of the GPU block that normalises one row, whose reduction [`rms_norm`] mirrors.
pub const NORM_THREADS: usize = 256;

/// The lanes of a warp.
const WARP: usize = 32;

/// The sum of `partials` (one per GPU thread, a multiple of 32 and at most 1024 of them) in the
/// order a CUDA block reduction adds them: within each warp a butterfly (`v += shfl_xor(v, o)`
/// for `o` = 16, 8, 4, 2, 1), then the same butterfly over the warp totals, padded with zeros
/// to 32.
pub fn block_sum(partials: &[f32]) -> f32 {
	debug_assert!(partials.len().is_multiple_of(WARP) && partials.len() <= WARP * WARP);
	let mut totals = [0f32; WARP];
	for (total, warp) in totals.iter_mut().zip(partials.chunks(WARP)) {
		let mut lanes = [0f32; WARP];
		lanes[..warp.len()].copy_from_slice(warp);
		*total = butterfly(lanes);
	}
	butterfly(totals)
}

/// A warp's xor-butterfly sum; every lane ends with the same value, lane 0's is returned.
fn butterfly(mut lanes: [f32; WARP]) -> f32 {
	let mut offset = WARP / 2;
	while offset > 0 {
		let before = lanes;
		for (lane, value) in lanes.iter_mut().enumerate() {
			*value = before[lane] + before[lane ^ offset];
		}
		offset /= 2;
	}
	lanes[0]
}

/// Checks that `x` holds whole rows of `dim` and `out` (when given) as many values.
fn rows_of(what: &str, len: usize, dim: usize, out: usize) -> Result<usize, ShapeError> {
	if dim == 0 || !len.is_multiple_of(dim) || out != len {
		return Err(ShapeError(format!(
			"{what}: {len} values for rows of {dim}, and an output of {out}"
		)));
	}
	Ok(len / dim)
}

/// `out = x / sqrt(mean(x²) + eps) · weight` for each row of `x` (`[rows, dim]`, `dim` =
/// `weight.len()`), Llama's RMSNorm.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), ShapeError> {
	let dim = weight.len();
	rows_of("rms_norm", x.len(), dim, out.len())?;
	for (x, out) in x.chunks(dim).zip(out.chunks_mut(dim)) {
		normalise(x, weight, eps, out);
	}
	Ok(())
}

/// The fused residual add and norm (vLLM's `fused_add_rms_norm`): `residual += x`, then
/// `out = rms_norm(residual)`, row by row.
pub fn add_rms_norm(
	residual: &mut [f32],
	x: &[f32],
	weight: &[f32],
	eps: f32,
	out: &mut [f32],
) -> Result<(), ShapeError> {
	let dim = weight.len();
	rows_of("add_rms_norm", x.len(), dim, out.len())?;
	if residual.len() != x.len() {
		return Err(ShapeError(format!(
			"add_rms_norm: the residual has {} values, x {}",
			residual.len(),
			x.len()
		)));
	}
	for (r, x) in residual.iter_mut().zip(x) {
		*r += x;
	}
	for (r, out) in residual.chunks(dim).zip(out.chunks_mut(dim)) {
		normalise(r, weight, eps, out);
	}
	Ok(())
}

/// One row of RMSNorm, with the GPU's lanes and reduction tree.
fn normalise(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
	let mut lanes = [0f32; NORM_THREADS];
	for (i, &v) in x.iter().enumerate() {
		let lane = &mut lanes[i % NORM_THREADS];
		*lane = v.mul_add(v, *lane);
	}
	let sum = block_sum(&lanes);
	let inv = 1.0 / (sum / x.len() as f32 + eps).sqrt();
	for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
		*o = (v * inv) * w;
	}
}

/// How the two values a rotation acts on are paired within a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
	/// `(i, i + head_dim/2)`: the halves are rotated together (GPT-NeoX; what Hugging Face's
	/// Llama uses).
	Neox,
	/// `(2i, 2i + 1)`: interleaved pairs (GPT-J; Meta's original Llama checkpoints).
	Gptj,
}

/// The cosine and sine tables, each `[max_pos, head_dim / 2]`: entry `(p, i)` is the angle
/// `p · θ^(−2i / head_dim)`, computed in f64 and rounded once.
pub fn rope_tables(
	head_dim: usize,
	max_pos: usize,
	theta: f64,
) -> Result<(Vec<f32>, Vec<f32>), ShapeError> {
	if head_dim == 0 || !head_dim.is_multiple_of(2) {
		return Err(ShapeError(format!("rope_tables: head_dim {head_dim} is not a positive even")));
	}
	let half = head_dim / 2;
	let inv_freq: Vec<f64> =
		(0..half).map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64)).collect();
	let mut cos = Vec::with_capacity(max_pos * half);
	let mut sin = Vec::with_capacity(max_pos * half);
	for pos in 0..max_pos {
		for &f in &inv_freq {
			let angle = pos as f64 * f;
			cos.push(angle.cos() as f32);
			sin.push(angle.sin() as f32);
		}
	}
	Ok((cos, sin))
}

/// Rotates, in place, every head of every token of `x` (`[tokens, heads, head_dim]`, `tokens`
/// = `positions.len()`) by its token's position, reading the tables of [`rope_tables`]
/// (`[max_pos, head_dim / 2]`): `(a, b) ← (a·cos − b·sin, b·cos + a·sin)` for each pair of
/// `style`. Queries and keys are rotated by separate calls (their head counts differ under
/// grouped-query attention).
pub fn rope(
	x: &mut [f32],
	heads: usize,
	head_dim: usize,
	positions: &[u32],
	cos: &[f32],
	sin: &[f32],
	style: RopeStyle,
) -> Result<(), ShapeError> {
	let half = head_dim / 2;
	if head_dim == 0
		|| !head_dim.is_multiple_of(2)
		|| x.len() != positions.len() * heads * head_dim
		|| cos.len() != sin.len()
		|| !cos.len().is_multiple_of(half.max(1))
	{
		return Err(ShapeError(format!(
			"rope: {} values for {} tokens of {heads} heads of {head_dim}, tables of {} and {}",
			x.len(),
			positions.len(),
			cos.len(),
			sin.len()
		)));
	}
	let max_pos = cos.len() / half;
	if let Some(&pos) = positions.iter().find(|&&p| p as usize >= max_pos) {
		return Err(ShapeError(format!("rope: position {pos} is past the tables' {max_pos}")));
	}
	if heads == 0 {
		return Ok(());
	}
	for (token, &pos) in x.chunks_mut(heads * head_dim).zip(positions) {
		let table = pos as usize * half;
		for head in token.chunks_mut(head_dim) {
			for i in 0..half {
				let (a, b) = match style {
					RopeStyle::Neox => (i, i + half),
					RopeStyle::Gptj => (2 * i, 2 * i + 1),
				};
				let (c, s) = (cos[table + i], sin[table + i]);
				let (x1, x2) = (head[a], head[b]);
				head[a] = x1 * c - x2 * s;
				head[b] = x2 * c + x1 * s;
			}
		}
	}
	Ok(())
}

/// `silu(g) = g / (1 + e^(−g))`, in the order the kernel computes it.
fn silu(g: f32) -> f32 {
	g / (1.0 + (-g).exp())
}

/// `out = silu(gate) · up` for each row of `gate_up` (`[rows, 2·inter]`, each row the gate's
/// `inter` values then the up projection's, as a merged `gate_up_proj` writes them); `out` is
/// `[rows, inter]`.
pub fn silu_mul(gate_up: &[f32], inter: usize, out: &mut [f32]) -> Result<(), ShapeError> {
	if inter == 0 || !gate_up.len().is_multiple_of(2 * inter) || out.len() * 2 != gate_up.len() {
		return Err(ShapeError(format!(
			"silu_mul: {} values for rows of 2 × {inter}, an output of {}",
			gate_up.len(),
			out.len()
		)));
	}
	for (row, out) in gate_up.chunks(2 * inter).zip(out.chunks_mut(inter)) {
		let (gate, up) = row.split_at(inter);
		for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
			*o = silu(g) * u;
		}
	}
	Ok(())
}

/// `out = silu(gate) · up` elementwise, from separate gate and up buffers of any shape.
pub fn silu_mul_split(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<(), ShapeError> {
	if gate.len() != up.len() || out.len() != gate.len() {
		return Err(ShapeError(format!(
			"silu_mul_split: gate {}, up {}, out {} values",
			gate.len(),
			up.len(),
			out.len()
		)));
	}
	for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
		*o = silu(g) * u;
	}
	Ok(())
}

/// `a += b` elementwise (a residual add).
pub fn add_assign(a: &mut [f32], b: &[f32]) -> Result<(), ShapeError> {
	if a.len() != b.len() {
		return Err(ShapeError(format!("add_assign: {} and {} values", a.len(), b.len())));
	}
	for (a, b) in a.iter_mut().zip(b) {
		*a += b;
	}
	Ok(())
}

#[cfg(test)]
mod tests {
	use rand::{rngs::StdRng, Rng, SeedableRng};

	use super::*;

	fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
		(0..n).map(|_| rng.random_range(-scale..scale)).collect()
	}

	/// Textbook RMSNorm in f64.
	fn rms_norm_f64(x: &[f32], weight: &[f32], eps: f32) -> Vec<f64> {
		let dim = weight.len();
		let mut out = Vec::with_capacity(x.len());
		for row in x.chunks(dim) {
			let mean = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
			let inv = 1.0 / (mean + eps as f64).sqrt();
			out.extend(row.iter().zip(weight).map(|(&v, &w)| v as f64 * inv * w as f64));
		}
		out
	}

	fn assert_close(got: &[f32], want: &[f64], rtol: f64, atol: f64, what: &str) {
		assert_eq!(got.len(), want.len(), "{what}: lengths");
		for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
			assert!(
				(g as f64 - w).abs() <= atol + rtol * w.abs(),
				"{what}: element {i} is {g}, expected {w}"
			);
		}
	}

	const SHAPES: [(usize, usize); 8] =
		[(1, 1), (7, 576), (3, 4097), (2, 8192), (9, 255), (1, 2), (4, 33), (2, 256)];

	#[test]
	fn block_sum_adds_every_partial() {
		let mut rng = StdRng::seed_from_u64(1);
		for n in [32, 256, 1024] {
			let parts = random(&mut rng, n, 1.0);
			let want: f64 = parts.iter().map(|&v| v as f64).sum();
			assert!((block_sum(&parts) as f64 - want).abs() < 1e-4, "{n} partials");
			// A single non-zero partial, wherever it is, comes through exactly.
			for at in [0, 5, n - 1] {
				let mut one = vec![0f32; n];
				one[at] = 3.25;
				assert_eq!(block_sum(&one), 3.25);
			}
		}
	}

	#[test]
	fn rms_norm_matches_the_textbook_formula() {
		let mut rng = StdRng::seed_from_u64(2);
		for (rows, dim) in SHAPES {
			for eps in [1e-5f32, 1e-6] {
				let x = random(&mut rng, rows * dim, 3.0);
				let w = random(&mut rng, dim, 2.0);
				let mut out = vec![0f32; rows * dim];
				rms_norm(&x, &w, eps, &mut out).unwrap();
				// f32 sums of up to 8192 squares, one sqrt and two products: within 1e-5.
				assert_close(&out, &rms_norm_f64(&x, &w, eps), 1e-5, 1e-6, "rms_norm");
			}
		}
	}

	#[test]
	fn rms_norm_of_zeros_is_zero_and_eps_matters() {
		let mut out = vec![1f32; 4];
		rms_norm(&[0.0; 4], &[1.0; 4], 1e-6, &mut out).unwrap();
		assert_eq!(out, [0.0; 4]);
		// mean(x²) = 1e-6: with eps = 1e-6 the result is x / sqrt(2e-6).
		let x = [1e-3f32, -1e-3];
		rms_norm(&x, &[1.0, 1.0], 1e-6, &mut out[..2]).unwrap();
		let want = 1e-3 / (2e-6f64).sqrt();
		assert_close(&out[..2], &[want, -want], 1e-5, 0.0, "eps");
	}

	#[test]
	fn add_rms_norm_adds_the_residual_then_normalises() {
		let mut rng = StdRng::seed_from_u64(3);
		for (rows, dim) in SHAPES {
			let r0 = random(&mut rng, rows * dim, 2.0);
			let x = random(&mut rng, rows * dim, 2.0);
			let w = random(&mut rng, dim, 2.0);
			let mut residual = r0.clone();
			let mut out = vec![0f32; rows * dim];
			add_rms_norm(&mut residual, &x, &w, 1e-5, &mut out).unwrap();
			let sum: Vec<f32> = r0.iter().zip(&x).map(|(a, b)| a + b).collect();
			assert_eq!(residual, sum, "the residual is r + x");
			assert_close(&out, &rms_norm_f64(&sum, &w, 1e-5), 1e-5, 1e-6, "add_rms_norm");
		}
	}

	#[test]
	fn rope_tables_follow_the_inverse_frequencies() {
		let (cos, sin) = rope_tables(8, 5, 10000.0).unwrap();
		assert_eq!(cos.len(), 20);
		for pos in 0..5 {
			for i in 0..4 {
				let angle = pos as f64 / 10000f64.powf(2.0 * i as f64 / 8.0);
				assert!((cos[pos * 4 + i] as f64 - angle.cos()).abs() < 1e-7);
				assert!((sin[pos * 4 + i] as f64 - angle.sin()).abs() < 1e-7);
			}
		}
		assert_eq!((cos[0], sin[0]), (1.0, 0.0), "position 0 is the identity");
		assert!(rope_tables(7, 4, 1e4).is_err());
		assert!(rope_tables(0, 4, 1e4).is_err());
	}

	/// Rotation as complex multiplication in f64: `(a + ib) · e^{i·angle}`.
	fn rope_f64(
		x: &[f32],
		heads: usize,
		d: usize,
		positions: &[u32],
		style: RopeStyle,
	) -> Vec<f64> {
		let half = d / 2;
		let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
		for (t, &pos) in positions.iter().enumerate() {
			for h in 0..heads {
				let base = (t * heads + h) * d;
				for i in 0..half {
					let (a, b) = match style {
						RopeStyle::Neox => (base + i, base + i + half),
						RopeStyle::Gptj => (base + 2 * i, base + 2 * i + 1),
					};
					let angle = pos as f64 / 10000f64.powf(2.0 * i as f64 / d as f64);
					let (re, im) = (x[a] as f64, x[b] as f64);
					out[a] = re * angle.cos() - im * angle.sin();
					out[b] = re * angle.sin() + im * angle.cos();
				}
			}
		}
		out
	}

	#[test]
	fn rope_is_complex_multiplication_in_both_styles() {
		let mut rng = StdRng::seed_from_u64(4);
		let max_pos = 300;
		for (tokens, heads, d) in [(1, 1, 2), (5, 9, 64), (3, 3, 128), (7, 15, 64), (2, 4, 6)] {
			let (cos, sin) = rope_tables(d, max_pos, 10000.0).unwrap();
			for style in [RopeStyle::Neox, RopeStyle::Gptj] {
				let x0 = random(&mut rng, tokens * heads * d, 2.0);
				let positions: Vec<u32> =
					(0..tokens).map(|_| rng.random_range(0..max_pos as u32)).collect();
				let mut x = x0.clone();
				rope(&mut x, heads, d, &positions, &cos, &sin, style).unwrap();
				// The tables are rounded to f32 (angles up to 300 rad: 2e-5 relative to the
				// angle is below their ulp), then two products and a sum in f32.
				let want = rope_f64(&x0, heads, d, &positions, style);
				assert_close(&x, &want, 0.0, 1e-5, "rope");
			}
		}
	}

	#[test]
	fn rope_styles_differ_and_keep_norms() {
		let (cos, sin) = rope_tables(4, 8, 10000.0).unwrap();
		let x0 = [1.0f32, 2.0, 3.0, 4.0];
		let mut neox = x0;
		let mut gptj = x0;
		rope(&mut neox, 1, 4, &[3], &cos, &sin, RopeStyle::Neox).unwrap();
		rope(&mut gptj, 1, 4, &[3], &cos, &sin, RopeStyle::Gptj).unwrap();
		assert_ne!(neox, gptj);
		// Neox rotates the pairs (0, 2) and (1, 3); GPT-J (0, 1) and (2, 3).
		let n = |v: &[f32], a: usize, b: usize| (v[a] * v[a] + v[b] * v[b]).sqrt();
		assert!((n(&neox, 0, 2) - n(&x0, 0, 2)).abs() < 1e-5);
		assert!((n(&gptj, 0, 1) - n(&x0, 0, 1)).abs() < 1e-5);
		let mut same = x0;
		rope(&mut same, 1, 4, &[0], &cos, &sin, RopeStyle::Neox).unwrap();
		assert_eq!(same, x0, "position 0 is the identity");
	}

	#[test]
	fn silu_mul_matches_the_formula() {
		let mut rng = StdRng::seed_from_u64(5);
		for (rows, inter) in [(1, 1), (7, 1536), (3, 1001), (9, 4097)] {
			let gate_up = random(&mut rng, rows * 2 * inter, 8.0);
			let mut out = vec![0f32; rows * inter];
			silu_mul(&gate_up, inter, &mut out).unwrap();
			let mut want = Vec::new();
			let (mut gate, mut up) = (Vec::new(), Vec::new());
			for row in gate_up.chunks(2 * inter) {
				for i in 0..inter {
					let (g, u) = (row[i] as f64, row[inter + i] as f64);
					want.push(g / (1.0 + (-g).exp()) * u);
					gate.push(row[i]);
					up.push(row[inter + i]);
				}
			}
			assert_close(&out, &want, 1e-6, 1e-7, "silu_mul");
			let mut split = vec![0f32; rows * inter];
			silu_mul_split(&gate, &up, &mut split).unwrap();
			assert_eq!(split, out, "the split form gives the same bits");
		}
		let mut out = [0f32; 2];
		silu_mul(&[-200.0, 200.0, 1.0, 1.0], 2, &mut out).unwrap();
		assert_eq!(out, [-0.0, 200.0], "saturates without NaN");
	}

	#[test]
	fn add_assign_adds() {
		let mut a = vec![1.0f32, 2.0, -3.0];
		add_assign(&mut a, &[0.5, -2.0, 3.0]).unwrap();
		assert_eq!(a, [1.5, 0.0, 0.0]);
	}

	#[test]
	fn bad_shapes_are_refused() {
		let mut out = vec![0f32; 8];
		assert!(rms_norm(&[0.0; 8], &[1.0; 4], 1e-5, &mut out).is_ok());
		assert!(rms_norm(&[0.0; 7], &[1.0; 4], 1e-5, &mut out[..7]).is_err(), "ragged rows");
		assert!(rms_norm(&[0.0; 8], &[1.0; 4], 1e-5, &mut out[..4]).is_err(), "short out");
		assert!(rms_norm(&[0.0; 8], &[], 1e-5, &mut out).is_err(), "empty weight");
		let mut residual = vec![0f32; 4];
		assert!(add_rms_norm(&mut residual, &[0.0; 8], &[1.0; 4], 1e-5, &mut out).is_err());
		let (cos, sin) = rope_tables(4, 3, 1e4).unwrap();
		let mut x = vec![0f32; 16];
		assert!(rope(&mut x, 2, 4, &[0, 2], &cos, &sin, RopeStyle::Neox).is_ok());
		assert!(rope(&mut x, 2, 4, &[0, 3], &cos, &sin, RopeStyle::Neox).is_err(), "position");
		assert!(rope(&mut x, 2, 4, &[0], &cos, &sin, RopeStyle::Neox).is_err(), "tokens");
		assert!(rope(&mut x, 4, 3, &[0, 0], &cos, &sin, RopeStyle::Gptj).is_err(), "odd dim");
		assert!(rope(&mut x, 2, 4, &[0, 0], &cos, &sin[..4], RopeStyle::Gptj).is_err());
		assert!(silu_mul(&[0.0; 8], 4, &mut out[..8]).is_err(), "one row of 2 × 4 gives 4");
		assert!(silu_mul(&[0.0; 8], 2, &mut out[..4]).is_ok());
		assert!(silu_mul(&[0.0; 8], 0, &mut out[..0]).is_err());
		assert!(silu_mul_split(&[0.0; 3], &[0.0; 4], &mut out[..3]).is_err());
		assert!(add_assign(&mut out, &[0.0; 3]).is_err());
	}
}
