//! The quantized matrix product of the CPU serving path: `y = x Wᵀ` for weights kept in one of
//! the [`Format`]s, cheaper per row as the batch grows, and exactly batch-invariant.
//!
//! Unlike the rest of this crate this is not a reference for a GPU kernel: it is what the
//! worker's CPU decoder multiplies by. Weight rows are shared out among rayon's threads, 16 to a
//! task; a task dequantizes its rows once (AVX2 for Q4_0, Q4_1 and Q8_0 where the CPU has it)
//! into a per-thread buffer and multiplies every input row by them in f32, so a batch of `n`
//! rows costs one dequantization of the weights plus `n` dot products per weight row. (A product
//! that quantizes the inputs and redoes an integer dot product for every (weight row, input
//! row) pair, as candle's CPU one does, costs a batch what its rows cost one by one.) Input
//! rows are taken four at a time against each weight row (the four stay in the L1 cache while
//! the task's weight rows pass); on AVX2 a single row left over goes against four weight rows
//! at a time (four independent chains of multiply-adds instead of one).
//!
//! Every output value is `dot(w_r, x_i)` computed the same way however it is grouped: sixteen
//! running sums (two groups of eight, one per column position modulo 16) over the columns in
//! order, then the sixteen added in a fixed tree. So a row's result does not depend on the batch
//! it is in, to the bit. The dot uses fused multiply-adds where the CPU has AVX2 and FMA
//! (detected at run time) and a multiply then an add elsewhere: results differ between those two
//! kinds of CPU, never within one. The dequantized values are those of
//! [`quant::dequantize_row`] (GGML's arithmetic), so the product is the f32 product of the
//! dequantized matrix up to the order of the sums: what transformers computes from a GGUF file.

use std::{cell::RefCell, fmt, ops::Range};

use rayon::prelude::*;

use crate::{
	quant::{self, Format},
	ShapeError,
};

/// Weight rows per rayon task.
const ROWS_PER_TASK: usize = 16;
/// Columns per step of a dot product (two groups of eight running sums).
const STEP: usize = 16;

/// A `rows × cols` weight matrix in a quantized [`Format`], row after row.
#[derive(Clone)]
pub struct QuantMatrix {
	format: Format,
	rows: usize,
	cols: usize,
	row_bytes: usize,
	bytes: Vec<u8>,
}

impl fmt::Debug for QuantMatrix {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		f.debug_struct("QuantMatrix")
			.field("format", &self.format.name())
			.field("rows", &self.rows)
			.field("cols", &self.cols)
			.finish_non_exhaustive()
	}
}

impl QuantMatrix {
	/// Takes `bytes`, `rows` rows of `cols` values in `format` ([`quant::row_bytes`] each), or
	/// says what does not fit.
	pub fn new(
		format: Format,
		rows: usize,
		cols: usize,
		bytes: Vec<u8>,
	) -> Result<Self, ShapeError> {
		let row_bytes = quant::row_bytes(format, cols)?;
		if rows == 0 || rows.checked_mul(row_bytes) != Some(bytes.len()) {
			return Err(ShapeError(format!(
				"{rows} {} rows of {cols} values take {row_bytes} bytes each, not {} in all",
				format.name(),
				bytes.len()
			)));
		}
		Ok(Self { format, rows, cols, row_bytes, bytes })
	}

	/// One matrix of the rows of `parts` in order (the query, key and value projections of a
	/// layer, say, so that one product serves the three; every output value is the same
	/// either way, to the bit). Refused unless every part has the same format and width.
	pub fn stack(parts: &[&QuantMatrix]) -> Result<Self, ShapeError> {
		let Some(first) = parts.first() else {
			return Err(ShapeError("no matrices to stack".into()));
		};
		if let Some(odd) = parts.iter().find(|m| (m.format, m.cols) != (first.format, first.cols)) {
			return Err(ShapeError(format!(
				"stacking {} rows of {} with {} rows of {}",
				odd.format.name(),
				odd.cols,
				first.format.name(),
				first.cols
			)));
		}
		let rows = parts.iter().map(|m| m.rows).sum();
		let bytes = parts.iter().flat_map(|m| m.bytes.iter().copied()).collect();
		Self::new(first.format, rows, first.cols, bytes)
	}

	/// The weights' format.
	pub fn format(&self) -> Format {
		self.format
	}

	/// Output width (weight rows).
	pub fn rows(&self) -> usize {
		self.rows
	}

	/// Input width (values per weight row).
	pub fn cols(&self) -> usize {
		self.cols
	}

	/// `y = x Wᵀ`: `x` is `n` rows of [`cols`](Self::cols) values, `y` is `n` rows of
	/// [`rows`](Self::rows) values (overwritten).
	pub fn matmul(&self, x: &[f32], y: &mut [f32]) -> Result<(), ShapeError> {
		self.matmul_on(Isa::detect(), 0..self.rows, x, y)
	}

	/// `y = x W[rows]ᵀ`, the product by the weight rows `rows` only: `y` is `n` rows of
	/// `rows.len()` values, each the value [`matmul`](Self::matmul) gives, to the bit.
	pub fn matmul_rows(
		&self,
		rows: Range<usize>,
		x: &[f32],
		y: &mut [f32],
	) -> Result<(), ShapeError> {
		self.matmul_on(Isa::detect(), rows, x, y)
	}

	fn matmul_on(
		&self,
		isa: Isa,
		weight_rows: Range<usize>,
		x: &[f32],
		y: &mut [f32],
	) -> Result<(), ShapeError> {
		let n = x.len() / self.cols;
		let out = weight_rows.len();
		if weight_rows.end > self.rows || out == 0 {
			return Err(ShapeError(format!(
				"weight rows {weight_rows:?} of a {}x{} matrix",
				self.rows, self.cols
			)));
		}
		if n * self.cols != x.len() || y.len() != n * out {
			return Err(ShapeError(format!(
				"{out} rows of a {}x{} matrix take rows of {} values and give rows of {out}: {} \
				 inputs for {} outputs do not fit",
				self.rows,
				self.cols,
				self.cols,
				x.len(),
				y.len()
			)));
		}
		if n == 0 {
			return Ok(());
		}
		// Transposed (one weight row's n results together), so each task writes one stretch;
		// for one input row that is `y` itself.
		let mut transposed = Vec::new();
		let y_t = if n == 1 {
			&mut *y
		} else {
			transposed.resize(out * n, 0f32);
			&mut transposed
		};
		let bytes =
			&self.bytes[weight_rows.start * self.row_bytes..weight_rows.end * self.row_bytes];
		y_t.par_chunks_mut(ROWS_PER_TASK * n).enumerate().for_each(|(task, y_t)| {
			let first = task * ROWS_PER_TASK * self.row_bytes;
			let bytes = &bytes[first..first + y_t.len() / n * self.row_bytes];
			rows(isa, self.format, self.row_bytes, self.cols, bytes, x, y_t);
		});
		if n > 1 {
			// Back to one input row's results together, in parallel, 16 input rows per task,
			// each task writing its rows in order (the serial scatter this replaces wrote `y`
			// with a stride of `out`: an 878-token prefill is 1.17x faster without it).
			y.par_chunks_mut(out * ROWS_PER_TASK).enumerate().for_each(|(task, y)| {
				for (i, y) in y.chunks_exact_mut(out).enumerate() {
					let i = task * ROWS_PER_TASK + i;
					for (r, v) in y.iter_mut().enumerate() {
						*v = transposed[r * n + i];
					}
				}
			});
		}
		Ok(())
	}
}

/// The instructions the product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
	/// x86-64 AVX2 with FMA: 8-lane vectors, fused multiply-adds in the dot products.
	Avx2Fma,
	/// Plain Rust: a multiply then an add.
	Portable,
}

impl Isa {
	/// The best this CPU runs.
	fn detect() -> Self {
		#[cfg(target_arch = "x86_64")]
		if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
			return Self::Avx2Fma;
		}
		Self::Portable
	}
}

/// For each weight row in `bytes` (`row_bytes` each, `cols` values) and each row `x_i` of `x`,
/// into `out` (one weight row's results after the other): the rows dequantized, then
/// `dot(w, x_i)`.
fn rows(
	isa: Isa,
	format: Format,
	row_bytes: usize,
	cols: usize,
	bytes: &[u8],
	x: &[f32],
	out: &mut [f32],
) {
	let weight_rows = bytes.len() / row_bytes;
	if weight_rows == 0 || out.is_empty() {
		return;
	}
	// One input row: each weight row is used once, so it is multiplied where it is
	// dequantized, in registers.
	#[cfg(target_arch = "x86_64")]
	if isa == Isa::Avx2Fma && x.len() == cols {
		// SAFETY: `Isa::Avx2Fma` is detected only where the CPU has AVX2 and FMA.
		if unsafe { avx2::dequantize_dot(format, row_bytes, bytes, x, out) } {
			return;
		}
	}
	thread_local! {
		/// The task's dequantized weight rows, kept from task to task (every value is written
		/// before it is read).
		static VALUES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
	}
	VALUES.with_borrow_mut(|values| {
		if values.len() < weight_rows * cols {
			values.resize(weight_rows * cols, 0.0);
		}
		let w = &mut values[..weight_rows * cols];
		for (row, w) in bytes.chunks_exact(row_bytes).zip(w.chunks_exact_mut(cols)) {
			match isa {
				#[cfg(target_arch = "x86_64")]
				// SAFETY: `Isa::Avx2Fma` is detected only where the CPU has AVX2 and FMA.
				Isa::Avx2Fma => unsafe { avx2::dequantize(format, row, w) },
				_ => quant::dequantize_unchecked(format, row, w),
			}
		}
		match isa {
			#[cfg(target_arch = "x86_64")]
			// SAFETY: as above.
			Isa::Avx2Fma => unsafe { avx2::dots(w, cols, x, out) },
			_ => portable_dots(w, cols, x, out),
		}
	});
}

/// `out[k * n + i] = dot(w_k, x_i)` for each weight row `w_k` of `w` and each of the `n` rows
/// `x_i` of `x` (rows `cols` long): four input rows at a time (then one at a time), each group
/// against every weight row, so that the group stays in the L1 cache while the weight rows
/// pass.
fn portable_dots(w: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
	let n = x.len() / cols;
	let row = |i: usize| &x[i * cols..(i + 1) * cols];
	let mut i = 0;
	while i < n {
		let four = i + 4 <= n;
		for (k, w) in w.chunks_exact(cols).enumerate() {
			let out = &mut out[k * n + i..];
			if four {
				let xs = [row(i), row(i + 1), row(i + 2), row(i + 3)];
				out[..4].copy_from_slice(&portable_dot_rows::<4>(w, xs));
			} else {
				out[0] = portable_dot_rows::<1>(w, [row(i)])[0];
			}
		}
		i += if four { 4 } else { 1 };
	}
}

/// The dot product of `w` with each of `R` rows (each as long as `w`, a multiple of 16), every
/// row by the same operations as alone.
fn portable_dot_rows<const R: usize>(w: &[f32], xs: [&[f32]; R]) -> [f32; R] {
	let (w, _) = w.as_chunks::<STEP>();
	let xs = xs.map(|x| &x.as_chunks::<STEP>().0[..w.len()]);
	let mut acc = [[0f32; STEP]; R];
	for (c, wc) in w.iter().enumerate() {
		for r in 0..R {
			let (xc, a) = (&xs[r][c], &mut acc[r]);
			for l in 0..STEP {
				a[l] += wc[l] * xc[l];
			}
		}
	}
	acc.map(|a| sum_lanes(&a))
}

/// The sixteen running sums of a dot product added in one fixed order.
#[inline(always)]
fn sum_lanes(a: &[f32; STEP]) -> f32 {
	let mut s = [0f32; 8];
	for l in 0..8 {
		s[l] = a[l] + a[l + 8];
	}
	let t = [s[0] + s[4], s[1] + s[5], s[2] + s[6], s[3] + s[7]];
	(t[0] + t[2]) + (t[1] + t[3])
}

/// An IEEE half-precision value as f32, the same bits as `half::f16::to_f32`, in integer
/// operations only (no call, and no float arithmetic that a flush-to-zero mode could change):
/// the exponent rebiased, subnormals normalised, NaNs made quiet.
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
	let sign = ((h & 0x8000) as u32) << 16;
	let exponent = ((h >> 10) & 0x1f) as u32;
	let mantissa = (h & 0x3ff) as u32;
	let magnitude = match (exponent, mantissa) {
		(0, 0) => 0,
		(0, m) => {
			// m · 2^-24: shift the leading one up to bit 10, the implicit bit.
			let shift = m.leading_zeros() - 21;
			((113 - shift) << 23) | (((m << shift) & 0x3ff) << 13)
		}
		(0x1f, 0) => 0x7f80_0000,
		(0x1f, m) => 0x7fc0_0000 | (m << 13),
		(e, m) => ((e + 112) << 23) | (m << 13),
	};
	f32::from_bits(sign | magnitude)
}

/// The AVX2 + FMA versions: the block formats GGUF models mostly use (Q4_0, Q4_1, Q8_0)
/// dequantized with vector instructions (the values of [`quant::dequantize_row`], bit for bit:
/// the same integer-to-float conversions, multiplies and adds), the others by the reference;
/// dot products in 8-lane fused multiply-adds.
#[cfg(target_arch = "x86_64")]
mod avx2 {
	use std::arch::x86_64::*;

	use super::{f16_to_f32, quant, sum_lanes, Format, STEP};

	/// Eight unsigned bytes (the low half of `v`) as floats.
	#[inline]
	#[target_feature(enable = "avx2,fma")]
	fn u8x8_to_f32(v: __m128i) -> __m256 {
		_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
	}

	/// Writes eight floats at `y[at..at + 8]`.
	#[inline]
	#[target_feature(enable = "avx2,fma")]
	fn store(y: &mut [f32; 32], at: usize, v: __m256) {
		assert!(at <= 24);
		// SAFETY: `y` has 32 values and `at + 8 <= 32`.
		unsafe { _mm256_storeu_ps(y.as_mut_ptr().add(at), v) }
	}

	/// The sixteen bytes after a block's `skip` header bytes.
	#[inline]
	#[target_feature(enable = "avx2,fma")]
	fn nibbles<const BYTES: usize>(b: &[u8; BYTES], skip: usize) -> __m128i {
		assert!(skip + 16 <= BYTES);
		// SAFETY: 16 bytes from `skip` lie inside the block.
		unsafe { _mm_loadu_si128(b.as_ptr().add(skip).cast()) }
	}

	/// Calls `each(i, v)` with the values of block `i` of a row's `bytes` as four vectors of
	/// eight, in order, for Q4_0, Q4_1 and Q8_0 (the reference's values, bit for bit); returns
	/// false, calling nothing, for another format.
	#[inline]
	#[target_feature(enable = "avx2,fma")]
	fn each_block(format: Format, bytes: &[u8], mut each: impl FnMut(usize, [__m256; 4])) -> bool {
		let low = _mm_set1_epi8(15);
		match format {
			Format::Q4_0 => {
				for (i, b) in bytes.as_chunks::<18>().0.iter().enumerate() {
					let d = _mm256_set1_ps(f16_to_f32(u16::from_le_bytes([b[0], b[1]])));
					let q = nibbles(b, 2);
					let (lo, hi) =
						(_mm_and_si128(q, low), _mm_and_si128(_mm_srli_epi16::<4>(q), low));
					let eight = _mm256_set1_epi32(8);
					let halves = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
					each(
						i,
						halves.map(|v| {
							let q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(v), eight);
							_mm256_mul_ps(_mm256_cvtepi32_ps(q), d)
						}),
					);
				}
			}
			Format::Q4_1 => {
				for (i, b) in bytes.as_chunks::<20>().0.iter().enumerate() {
					let d = _mm256_set1_ps(f16_to_f32(u16::from_le_bytes([b[0], b[1]])));
					let m = _mm256_set1_ps(f16_to_f32(u16::from_le_bytes([b[2], b[3]])));
					let q = nibbles(b, 4);
					let (lo, hi) =
						(_mm_and_si128(q, low), _mm_and_si128(_mm_srli_epi16::<4>(q), low));
					let halves = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
					each(i, halves.map(|v| _mm256_add_ps(_mm256_mul_ps(u8x8_to_f32(v), d), m)));
				}
			}
			Format::Q8_0 => {
				for (i, b) in bytes.as_chunks::<34>().0.iter().enumerate() {
					let d = _mm256_set1_ps(f16_to_f32(u16::from_le_bytes([b[0], b[1]])));
					let q = [nibbles(b, 2), nibbles(b, 18)];
					let quarters =
						[q[0], _mm_srli_si128::<8>(q[0]), q[1], _mm_srli_si128::<8>(q[1])];
					each(
						i,
						quarters
							.map(|v| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), d)),
					);
				}
			}
			_ => return false,
		}
		true
	}

	/// One weight row's values from its bytes (whole blocks, `w.len()` values).
	#[target_feature(enable = "avx2,fma")]
	pub(super) fn dequantize(format: Format, bytes: &[u8], w: &mut [f32]) {
		let blocks = w.as_chunks_mut::<32>().0;
		let vectors = each_block(format, bytes, |i, v| {
			for (k, v) in v.into_iter().enumerate() {
				store(&mut blocks[i], 8 * k, v);
			}
		});
		if !vectors {
			quant::dequantize_unchecked(format, bytes, w);
		}
	}

	/// `out[k] = dot(w_k, x)` for each weight row `w_k` in `bytes` (`row_bytes` each) and the
	/// one input row `x`, each block's values multiplied where they are dequantized, in
	/// registers: the same values, operations and order as [`dequantize`] then [`dots`] (so
	/// the same bits), without the round trip through memory. Returns false, computing
	/// nothing, for a format [`each_block`] does not take.
	#[target_feature(enable = "avx2,fma")]
	pub(super) fn dequantize_dot(
		format: Format,
		row_bytes: usize,
		bytes: &[u8],
		x: &[f32],
		out: &mut [f32],
	) -> bool {
		let (x, _) = x.as_chunks::<32>();
		for (row, out) in bytes.chunks_exact(row_bytes).zip(out.iter_mut()) {
			let mut acc = [_mm256_setzero_ps(); 2];
			let vectors = each_block(format, row, |i, v| {
				for (k, v) in v.into_iter().enumerate() {
					acc[k % 2] = _mm256_fmadd_ps(v, load(&x[i], 8 * k), acc[k % 2]);
				}
			});
			if !vectors {
				return false;
			}
			*out = sum_pair(acc);
		}
		true
	}

	/// Eight floats from `x[at..at + 8]`.
	#[inline]
	#[target_feature(enable = "avx2,fma")]
	fn load(x: &[f32; 32], at: usize) -> __m256 {
		assert!(at <= 24);
		// SAFETY: `x` has 32 values and `at + 8 <= 32`.
		unsafe { _mm256_loadu_ps(x.as_ptr().add(at)) }
	}

	/// A pair's two accumulators (columns 0-7 and 8-15 modulo 16) summed as [`sum_lanes`] does.
	#[inline]
	#[target_feature(enable = "avx2,fma")]
	fn sum_pair([a0, a1]: [__m256; 2]) -> f32 {
		let mut lanes = [0f32; STEP];
		// SAFETY: 16 values fit in `lanes`.
		unsafe {
			_mm256_storeu_ps(lanes.as_mut_ptr(), a0);
			_mm256_storeu_ps(lanes.as_mut_ptr().add(8), a1);
		}
		sum_lanes(&lanes)
	}

	/// [`super::portable_dots`] on AVX2 + FMA: three input rows at a time against two weight
	/// rows at a time (12 accumulators: the tile that measured fastest, 1.05-1.55x the four
	/// input rows against one of before at batches of 16 and more), then the input rows left (two,
	/// against three weight rows at a time, or one against four).
	#[target_feature(enable = "avx2,fma")]
	pub(super) fn dots(w: &[f32], cols: usize, x: &[f32], out: &mut [f32]) {
		let n = x.len() / cols;
		assert!(cols.is_multiple_of(STEP) && w.len().is_multiple_of(cols));
		assert!(out.len() == w.len() / cols * n);
		let mut i = 0;
		while i + 3 <= n {
			band::<2, 3>(w, cols, x, i, out);
			i += 3;
		}
		match n - i {
			2 => band::<3, 2>(w, cols, x, i, out),
			1 => band::<4, 1>(w, cols, x, i, out),
			_ => {}
		}
	}

	/// The dot products of input rows `i..i + R` of `x` with every weight row of `w`, `K`
	/// weight rows at a time (the last ones one by one), into `out` as [`dots`] lays it out.
	#[inline]
	#[target_feature(enable = "avx2,fma")]
	fn band<const K: usize, const R: usize>(
		w: &[f32],
		cols: usize,
		x: &[f32],
		i: usize,
		out: &mut [f32],
	) {
		let (n, weight_rows) = (x.len() / cols, w.len() / cols);
		assert!(i + R <= n && out.len() == weight_rows * n);
		let xs = std::array::from_fn(|r| x[(i + r) * cols..][..cols].as_ptr());
		let weight = |k: usize| w[k * cols..][..cols].as_ptr();
		let mut k = 0;
		while k + K <= weight_rows {
			// SAFETY: rows i..i + R of `x` and k..k + K of `w` hold `cols` values each, a
			// multiple of 16 (checked by the caller).
			let tile =
				unsafe { dot_tile::<K, R>(std::array::from_fn(|j| weight(k + j)), xs, cols) };
			for (j, values) in tile.iter().enumerate() {
				out[(k + j) * n + i..][..R].copy_from_slice(values);
			}
			k += K;
		}
		for k in k..weight_rows {
			// SAFETY: as above, for row k of `w`.
			let [values] = unsafe { dot_tile::<1, R>([weight(k)], xs, cols) };
			out[k * n + i..][..R].copy_from_slice(&values);
		}
	}

	/// The dot products of each of the `K` weight rows at `ws` with each of the `R` input rows
	/// at `xs`, every pair by the same operations as alone: lane `l` of a pair's two
	/// accumulators sums the columns `l` modulo 16, in column order. (`K` x `R` pairs are
	/// computed together only to reuse loads and to keep several independent chains of
	/// multiply-adds in flight.)
	///
	/// # Safety
	/// Each of `ws` and `xs` points to `len` values, a multiple of 16.
	#[inline]
	#[target_feature(enable = "avx2,fma")]
	unsafe fn dot_tile<const K: usize, const R: usize>(
		ws: [*const f32; K],
		xs: [*const f32; R],
		len: usize,
	) -> [[f32; R]; K] {
		let mut acc = [[[_mm256_setzero_ps(); 2]; R]; K];
		for c in (0..len).step_by(STEP) {
			// SAFETY: `c + 16 <= len`, the length of every row at `ws` and `xs`.
			unsafe {
				for k in 0..K {
					let w0 = _mm256_loadu_ps(ws[k].add(c));
					let w1 = _mm256_loadu_ps(ws[k].add(c + 8));
					for r in 0..R {
						let x = xs[r].add(c);
						acc[k][r][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc[k][r][0]);
						acc[k][r][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(8)), acc[k][r][1]);
					}
				}
			}
		}
		acc.map(|acc| acc.map(|pair| sum_pair(pair)))
	}
}

#[cfg(test)]
mod tests {
	use rand::{rngs::StdRng, Rng, SeedableRng};

	use super::*;

	fn random_matrix(rng: &mut StdRng, format: Format, rows: usize, cols: usize) -> QuantMatrix {
		let mut bytes = Vec::new();
		for _ in 0..rows {
			match format {
				// No quantizer for the K-quants: random blocks with small finite f16 scales.
				Format::Q4K | Format::Q6K => {
					let start = bytes.len();
					bytes.extend(
						(0..quant::row_bytes(format, cols).unwrap()).map(|_| rng.random::<u8>()),
					);
					for block in bytes[start..].chunks_mut(format.block_bytes()) {
						let at = if format == Format::Q4K { 0 } else { block.len() - 2 };
						block[at..at + 2].copy_from_slice(&0x2c00u16.to_le_bytes());
						if format == Format::Q4K {
							block[2..4].copy_from_slice(&0x2400u16.to_le_bytes());
						}
					}
				}
				_ => {
					let values: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect();
					quant::quantize_row(format, &values, &mut bytes).unwrap();
				}
			}
		}
		QuantMatrix::new(format, rows, cols, bytes).unwrap()
	}

	fn dequantized(m: &QuantMatrix) -> Vec<f32> {
		let mut w = vec![0f32; m.rows * m.cols];
		for (r, out) in w.chunks_exact_mut(m.cols).enumerate() {
			quant::dequantize_row(m.format, &m.bytes[r * m.row_bytes..][..m.row_bytes], out)
				.unwrap();
		}
		w
	}

	/// The instruction sets this CPU runs: the portable one, and AVX2 + FMA where it has them.
	fn isas() -> Vec<Isa> {
		let mut isas = vec![Isa::Portable];
		if Isa::detect() != Isa::Portable {
			isas.push(Isa::detect());
		}
		isas
	}

	#[test]
	fn matches_the_dequantized_product_in_every_format() {
		let mut rng = StdRng::seed_from_u64(7);
		for (isa, format) in isas().into_iter().flat_map(|i| Format::ALL.map(|f| (i, f))) {
			// Odd row counts (a partial last task), several batch sizes (1..4 and a tail).
			let shapes: [(usize, usize, usize); 5] =
				[(1, 256, 1), (37, 512, 3), (50, 768, 9), (16, 256, 4), (5, 32, 6)];
			for (rows, cols, n) in shapes {
				if !cols.is_multiple_of(format.block_values()) {
					continue;
				}
				let m = random_matrix(&mut rng, format, rows, cols);
				let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
				let mut y = vec![f32::NAN; n * rows];
				m.matmul_on(isa, 0..rows, &x, &mut y).unwrap();
				let w = dequantized(&m);
				for i in 0..n {
					for r in 0..rows {
						let row = &w[r * cols..][..cols];
						let xi = &x[i * cols..][..cols];
						let want: f64 =
							row.iter().zip(xi).map(|(&a, &b)| a as f64 * b as f64).sum();
						let scale: f64 =
							row.iter().zip(xi).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
						let got = y[i * rows + r] as f64;
						assert!(
							(got - want).abs() <= 1e-5 * scale.max(1e-6),
							"{isa:?} {} {rows}x{cols} n={n} y[{i},{r}] = {got}, want {want}",
							format.name()
						);
					}
				}
			}
		}
	}

	#[test]
	fn a_row_gets_the_same_bits_in_any_batch() {
		let mut rng = StdRng::seed_from_u64(3);
		let (rows, cols) = (70, 768);
		let formats = [Format::Q4_0, Format::Q4_1, Format::Q8_0, Format::Q6K];
		for (isa, format) in isas().into_iter().flat_map(|i| formats.map(|f| (i, f))) {
			let m = random_matrix(&mut rng, format, rows, cols);
			let x: Vec<f32> = (0..11 * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
			// Batches of 11 and 10: bands of three input rows, then two or one left.
			let batched = [11, 10].map(|n| {
				let mut y = vec![0f32; n * rows];
				m.matmul_on(isa, 0..rows, &x[..n * cols], &mut y).unwrap();
				y
			});
			for i in 0..11 {
				let mut alone = vec![0f32; rows];
				m.matmul_on(isa, 0..rows, &x[i * cols..][..cols], &mut alone).unwrap();
				for batch in batched.iter().filter(|y| y.len() > i * rows) {
					let row = &batch[i * rows..][..rows];
					assert!(
						row.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()),
						"{isa:?} {}: row {i} differs between a batch of {} and alone",
						format.name(),
						batch.len() / rows
					);
				}
				// And in a batch of two, in either place.
				let other = (i + 5) % 11;
				for (first, second) in [(i, other), (other, i)] {
					let mut pair = x[first * cols..][..cols].to_vec();
					pair.extend_from_slice(&x[second * cols..][..cols]);
					let mut y = vec![0f32; 2 * rows];
					m.matmul_on(isa, 0..rows, &pair, &mut y).unwrap();
					let at = if first == i { 0 } else { rows };
					let mine = &y[at..at + rows];
					assert!(mine.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()));
				}
			}
		}
	}

	#[test]
	fn the_vector_dequantization_gives_the_reference_values_to_the_bit() {
		let mut rng = StdRng::seed_from_u64(11);
		for format in [Format::Q4_0, Format::Q4_1, Format::Q8_0] {
			// Random bytes: every nibble and byte value, scales of many exponents (f16
			// subnormals, infinities and NaNs likely among them), in 64 blocks.
			let cols = 64 * 32;
			let bytes: Vec<u8> =
				(0..quant::row_bytes(format, cols).unwrap()).map(|_| rng.random()).collect();
			let mut want = vec![0f32; cols];
			quant::dequantize_row(format, &bytes, &mut want).unwrap();
			if Isa::detect() != Isa::Avx2Fma {
				eprintln!(
					"SKIPPED: no AVX2 + FMA on this CPU, so no vector dequantization to check"
				);
				return;
			}
			#[cfg(target_arch = "x86_64")]
			{
				let mut got = vec![0f32; cols];
				// SAFETY: the CPU has AVX2 and FMA (detected).
				unsafe { avx2::dequantize(format, &bytes, &mut got) };
				for (c, (g, w)) in got.iter().zip(&want).enumerate() {
					assert!(
						g.to_bits() == w.to_bits() || (w.is_nan() && g.is_nan()),
						"{}: value {c} is {g}, the reference says {w}",
						format.name()
					);
				}
			}
		}
	}

	#[test]
	fn f16_conversion_is_exact_for_every_value() {
		for h in 0..=u16::MAX {
			let want = half::f16::from_bits(h).to_f32();
			let got = f16_to_f32(h);
			assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}: {got} != {want}");
		}
	}

	#[test]
	fn shapes_that_do_not_fit_are_refused() {
		assert!(QuantMatrix::new(Format::Q4_1, 2, 48, vec![0; 2 * 30]).is_err(), "48 values");
		assert!(QuantMatrix::new(Format::Q4_1, 2, 32, vec![0; 39]).is_err(), "short bytes");
		assert!(QuantMatrix::new(Format::Q4_1, 0, 32, vec![]).is_err(), "no rows");
		let m = QuantMatrix::new(Format::Q8_0, 3, 32, vec![0; 3 * 34]).unwrap();
		assert!(m.matmul(&[0.0; 33], &mut [0.0; 3]).is_err(), "x not whole rows");
		assert!(m.matmul(&[0.0; 64], &mut [0.0; 3]).is_err(), "y too short for two rows");
		m.matmul(&[], &mut []).unwrap();
		let mut y = [f32::NAN; 6];
		m.matmul(&[0.0; 64], &mut y).unwrap();
		assert_eq!(y, [0.0; 6], "zero blocks give zeros");
		assert!(m.matmul_rows(1..4, &[0.0; 32], &mut [0.0; 3]).is_err(), "rows past the matrix");
		assert!(m.matmul_rows(2..2, &[0.0; 32], &mut []).is_err(), "no rows");
		assert!(m.matmul_rows(1..3, &[0.0; 32], &mut [0.0; 3]).is_err(), "y of 3 for 2 rows");
		let narrow = QuantMatrix::new(Format::Q8_0, 1, 64, vec![0; 68]).unwrap();
		let q4 = QuantMatrix::new(Format::Q4_1, 1, 32, vec![0; 20]).unwrap();
		assert!(QuantMatrix::stack(&[&m, &narrow]).is_err(), "widths differ");
		assert!(QuantMatrix::stack(&[&m, &q4]).is_err(), "formats differ");
		assert!(QuantMatrix::stack(&[]).is_err(), "nothing");
	}

	/// A stack of matrices gives, by its rows of each part, each part's own product to the
	/// bit, in one call or part by part, at batch 1 and above.
	#[test]
	fn a_stack_gives_each_part_its_own_bits() {
		let mut rng = StdRng::seed_from_u64(9);
		for (isa, format) in isas().into_iter().flat_map(|i| Format::ALL.map(|f| (i, f))) {
			let cols = 256;
			let heights = [37usize, 5, 16];
			let parts: Vec<_> =
				heights.iter().map(|&h| random_matrix(&mut rng, format, h, cols)).collect();
			let stack = QuantMatrix::stack(&parts.iter().collect::<Vec<_>>()).unwrap();
			assert_eq!((stack.rows(), stack.cols()), (58, cols));
			for n in [1usize, 3] {
				let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
				let mut all = vec![f32::NAN; n * 58];
				stack.matmul_on(isa, 0..58, &x, &mut all).unwrap();
				let mut at = 0;
				for (part, &h) in parts.iter().zip(&heights) {
					let mut alone = vec![0f32; n * h];
					part.matmul_on(isa, 0..h, &x, &mut alone).unwrap();
					let mut rows = vec![f32::NAN; n * h];
					stack.matmul_on(isa, at..at + h, &x, &mut rows).unwrap();
					let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
					assert_eq!(bits(&rows), bits(&alone), "{isa:?} {} n={n}", format.name());
					for i in 0..n {
						let whole = &all[i * 58 + at..][..h];
						assert_eq!(bits(whole), bits(&alone[i * h..][..h]), "{isa:?} row {i}");
					}
					at += h;
				}
			}
		}
	}
}
