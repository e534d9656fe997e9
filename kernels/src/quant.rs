//! Quantized weight formats and their matrix products: `y = W·x` for one input row (the decode
//! GEMV) and for a few at once (a batched GEMM that reads each weight row once).
//!
//! A weight matrix of `rows × cols` is stored as `rows` rows of [`row_bytes`] bytes each, one
//! after the other. A row is a row header (only [`Format::Int8`] has one) followed by
//! `cols / block_values` blocks:
//!
//! | format | values | bytes | layout of a block |
//! |---|---|---|---|
//! | [`Format::Q4_0`] | 32 | 18 | GGML `block_q4_0`: f16 `d`, 16 bytes; byte `j` holds value `j` in its low nibble and value `16 + j` in its high nibble; value = `(q - 8)·d` |
//! | [`Format::Q4_1`] | 32 | 20 | GGML `block_q4_1`: f16 `d`, f16 `m`, then the nibbles as in Q4_0; value = `q·d + m` |
//! | [`Format::Q8_0`] | 32 | 34 | GGML `block_q8_0`: f16 `d`, 32 `i8`; value = `q·d` |
//! | [`Format::Q4K`] | 256 | 144 | GGML `block_q4_K`: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit scales and mins for eight sub-blocks of 32, 128 bytes of nibbles |
//! | [`Format::Q6K`] | 256 | 210 | GGML `block_q6_K`: 128 bytes `ql` (low 4 bits), 64 bytes `qh` (high 2 bits), 16 `i8` scales, f16 `d` |
//! | [`Format::Int8`] | 32 | 32 | 32 `i8`; the row header is the row's f32 scale then 12 zero bytes; value = `q·scale` |
//! | [`Format::Int4`] | 32 | 18 | f16 `d`, 16 bytes; byte `j` holds value `2j` in its low nibble and `2j + 1` in its high nibble, each a two's-complement 4-bit integer; value = `q·d` |
//! | [`Format::Bf16`] | 32 | 64 | 32 bf16 values |
//!
//! Every multi-byte number is little-endian. The Int8 row header is 16 bytes (not 4) so that
//! every row, and every block in it, starts 16-byte aligned for the GPU's vector loads.
//!
//! # Summation order
//!
//! The products follow the CUDA kernels (`kernels/cuda/quant.cu`) operation for operation, so
//! that the two agree to the bit: every multiply-add is one fused multiply-add
//! ([`f32::mul_add`], `__fmaf_rn` on the GPU) and nothing else is contracted. A row's dot product
//! with one input row is computed as one warp computes it: the row is cut into *units* of
//! [`Format::unit_values`] consecutive values (a Q4_0/Q4_1/Q8_0/Int4 block; 16 Int8 values;
//! 8 bf16 values; a 64-value quarter of a Q4_K or Q6_K super-block), lane `l` of 32 takes units
//! `l, l + 32, l + 64, …` in that order into its own accumulator, and the 32 accumulators are
//! added by an xor butterfly (`a[i] += a[i ^ off]` for `off = 16, 8, 4, 2, 1`). Within a unit:
//!
//! - Q4_0, Q8_0, Int4: `s = Σ q·x` over the unit (Q4_0 in the order value `j`, value `16 + j`
//!   for `j = 0..16`; the others in value order), then `acc = fma(d, s, acc)`;
//! - Q4_1: `s = Σ q·x` as Q4_0 and `sx = Σ x` in the same order, then `acc = fma(d, s, acc)`,
//!   `acc = fma(m, sx, acc)`;
//! - Q4_K: the quarter's two 32-value sub-blocks, each `s = Σ q·x` and `sx = Σ x`, then for
//!   each (low nibbles first) `acc = fma(d·sc, s, acc)`, `acc = fma(-(dmin·m), sx, acc)`;
//! - Q6_K: the quarter is 16 positions `l` of four 16-value groups 32 apart (each group with its
//!   own scale); `s_g = Σ q·x` per group, then `acc = fma(d·sc_g, s_g, acc)` for `g = 0..4`;
//! - Int8, Bf16: `acc = fma(q, x, acc)` value by value; Int8 multiplies the final sum by the
//!   row's scale.
//!
//! The batched product computes each input row exactly as the single one does, so a row's
//! result does not depend on the batch it is in.

use half::{bf16, f16};

pub use crate::ShapeError;

/// Lanes in a warp: the number of running sums a row's dot product is split over.
pub const LANES: usize = 32;

/// A weight format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
	/// GGUF Q4_0: 4-bit values with one f16 scale per 32 (4.5 bits per value).
	Q4_0,
	/// GGUF Q4_1: 4-bit values with an f16 scale and an f16 offset per 32 (5 bits per value).
	Q4_1,
	/// GGUF Q8_0: 8-bit values with one f16 scale per 32 (8.5 bits per value).
	Q8_0,
	/// GGUF Q4_K: 256-value super-blocks of eight 32-value sub-blocks with 6-bit scales and mins
	/// (4.5 bits per value). Dequantization only here.
	Q4K,
	/// GGUF Q6_K: 256-value super-blocks of sixteen 16-value sub-blocks with 8-bit scales
	/// (6.5625 bits per value). Dequantization only here.
	Q6K,
	/// Symmetric 8-bit values with one f32 scale per row, kept in a 16-byte row header.
	Int8,
	/// Symmetric 4-bit values in `[-7, 7]` with one f16 scale per 32, packed two per byte in
	/// value order (this crate's own format; 4.5 bits per value).
	Int4,
	/// bfloat16, unquantized.
	Bf16,
}

impl Format {
	/// Every format.
	pub const ALL: [Format; 8] = [
		Format::Q4_0,
		Format::Q4_1,
		Format::Q8_0,
		Format::Q4K,
		Format::Q6K,
		Format::Int8,
		Format::Int4,
		Format::Bf16,
	];

	/// Its short lowercase name, as used in the CUDA kernels' names (`q4_0`, `q4_k`, `int8`…).
	pub fn name(self) -> &'static str {
		match self {
			Format::Q4_0 => "q4_0",
			Format::Q4_1 => "q4_1",
			Format::Q8_0 => "q8_0",
			Format::Q4K => "q4_k",
			Format::Q6K => "q6_k",
			Format::Int8 => "int8",
			Format::Int4 => "int4",
			Format::Bf16 => "bf16",
		}
	}

	/// Values per block: a row's length must be a multiple of this.
	pub fn block_values(self) -> usize {
		match self {
			Format::Q4K | Format::Q6K => 256,
			_ => 32,
		}
	}

	/// Bytes per block.
	pub fn block_bytes(self) -> usize {
		match self {
			Format::Q4_0 | Format::Int4 => 18,
			Format::Q4_1 => 20,
			Format::Q8_0 => 34,
			Format::Q4K => 144,
			Format::Q6K => 210,
			Format::Int8 => 32,
			Format::Bf16 => 64,
		}
	}

	/// Bytes before a row's first block: 16 for [`Format::Int8`] (its f32 scale and 12 zero
	/// bytes), none for the others.
	pub fn row_header_bytes(self) -> usize {
		match self {
			Format::Int8 => 16,
			_ => 0,
		}
	}

	/// Values in one unit of the products' summation order (see the module documentation): what
	/// one GPU lane takes in one step.
	pub fn unit_values(self) -> usize {
		match self {
			Format::Q4_0 | Format::Q4_1 | Format::Q8_0 | Format::Int4 => 32,
			Format::Q4K | Format::Q6K => 64,
			Format::Int8 => 16,
			Format::Bf16 => 8,
		}
	}

	/// Whether [`quantize_row`] can write this format (the K-quants are read only).
	pub fn can_quantize(self) -> bool {
		!matches!(self, Format::Q4K | Format::Q6K)
	}
}

/// The bytes of one row of `cols` values, or an error unless `cols` is a positive multiple of
/// the format's block size.
pub fn row_bytes(format: Format, cols: usize) -> Result<usize, ShapeError> {
	let block = format.block_values();
	if cols == 0 || !cols.is_multiple_of(block) {
		return Err(ShapeError(format!(
			"{} rows need a positive multiple of {block} values, not {cols}",
			format.name()
		)));
	}
	Ok(format.row_header_bytes() + cols / block * format.block_bytes())
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
	f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

fn f32_at(bytes: &[u8], at: usize) -> f32 {
	f32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// A two's-complement 4-bit integer from the low nibble of `nibble`.
fn signed_nibble(nibble: u8) -> i32 {
	(((nibble & 15) ^ 8) as i32) - 8
}

/// Scale and min `j` (of 8) of a Q4_K super-block's 12 packed bytes, as GGML's
/// `get_scale_min_k4`.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
	if j < 4 {
		(q[j] & 63, q[j + 4] & 63)
	} else {
		((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
	}
}

/// Writes the `out.len()` values of one row stored in `bytes` (exactly [`row_bytes`] long) to
/// `out`, with the same arithmetic as GGML's (and candle's) dequantization.
pub fn dequantize_row(format: Format, bytes: &[u8], out: &mut [f32]) -> Result<(), ShapeError> {
	let expected = row_bytes(format, out.len())?;
	if bytes.len() != expected {
		return Err(ShapeError(format!(
			"a {} row of {} values has {expected} bytes, not {}",
			format.name(),
			out.len(),
			bytes.len()
		)));
	}
	dequantize_unchecked(format, bytes, out);
	Ok(())
}

/// [`dequantize_row`] once the lengths are known to fit: `bytes` is [`row_bytes`] of
/// `out.len()` values (checked by the caller).
pub(crate) fn dequantize_unchecked(format: Format, bytes: &[u8], out: &mut [f32]) {
	let header = format.row_header_bytes();
	let blocks = bytes[header..].chunks_exact(format.block_bytes());
	let outs = out.chunks_exact_mut(format.block_values());
	for (b, y) in blocks.zip(outs) {
		match format {
			Format::Q4_0 => {
				let d = f16_at(b, 0);
				for j in 0..16 {
					y[j] = ((b[2 + j] & 15) as i32 - 8) as f32 * d;
					y[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
				}
			}
			Format::Q4_1 => {
				let (d, m) = (f16_at(b, 0), f16_at(b, 2));
				for j in 0..16 {
					y[j] = (b[4 + j] & 15) as f32 * d + m;
					y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
				}
			}
			Format::Q8_0 => {
				let d = f16_at(b, 0);
				for j in 0..32 {
					y[j] = b[2 + j] as i8 as f32 * d;
				}
			}
			Format::Q4K => {
				let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
				let scales = &b[4..16];
				for chunk in 0..4 {
					let qs = &b[16 + 32 * chunk..16 + 32 * chunk + 32];
					let (sc1, m1) = scale_min_k4(2 * chunk, scales);
					let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
					let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
					let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
					let y = &mut y[64 * chunk..64 * chunk + 64];
					for l in 0..32 {
						y[l] = d1 * (qs[l] & 15) as f32 - m1;
						y[32 + l] = d2 * (qs[l] >> 4) as f32 - m2;
					}
				}
			}
			Format::Q6K => {
				let d = f16_at(b, 208);
				for half in 0..2 {
					let ql = &b[64 * half..64 * half + 64];
					let qh = &b[128 + 32 * half..128 + 32 * half + 32];
					let sc = &b[192 + 8 * half..192 + 8 * half + 8];
					let y = &mut y[128 * half..128 * half + 128];
					for l in 0..32 {
						let is = l / 16;
						let (q1, q2, q3, q4) = q6k_values(ql[l], ql[l + 32], qh[l]);
						y[l] = d * sc[is] as i8 as f32 * q1 as f32;
						y[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
						y[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
						y[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
					}
				}
			}
			Format::Int8 => {
				let scale = f32_at(bytes, 0);
				for j in 0..32 {
					y[j] = b[j] as i8 as f32 * scale;
				}
			}
			Format::Int4 => {
				let d = f16_at(b, 0);
				for j in 0..16 {
					y[2 * j] = signed_nibble(b[2 + j]) as f32 * d;
					y[2 * j + 1] = signed_nibble(b[2 + j] >> 4) as f32 * d;
				}
			}
			Format::Bf16 => {
				for (j, v) in y.iter_mut().enumerate() {
					*v = bf16::from_le_bytes([b[2 * j], b[2 * j + 1]]).to_f32();
				}
			}
		}
	}
}

/// The four 6-bit values (minus 32) of a Q6_K position: from `ql[l]`, `ql[l + 32]` and `qh[l]`.
fn q6k_values(a: u8, b: u8, h: u8) -> (i32, i32, i32, i32) {
	(
		((a & 15) | ((h & 3) << 4)) as i32 - 32,
		((b & 15) | (((h >> 2) & 3) << 4)) as i32 - 32,
		((a >> 4) | (((h >> 4) & 3) << 4)) as i32 - 32,
		((b >> 4) | (((h >> 6) & 3) << 4)) as i32 - 32,
	)
}

/// Appends one row of `values` (finite numbers) in `format` to `out`: [`row_bytes`] bytes.
///
/// Q4_0, Q4_1 and Q8_0 are GGML's reference quantizers (`quantize_row_q4_0_ref` and so on,
/// which candle also uses): the same bytes. Int8 takes `scale = max|v| / 127` and rounds
/// `v / scale` to the nearest integer; Int4 takes `d = max|v| / 7` per 32 values, rounded to
/// f16, and rounds `v / d` into `[-7, 7]`; Bf16 rounds to nearest even. The K-quants have no
/// quantizer here: asking for one is an error.
pub fn quantize_row(format: Format, values: &[f32], out: &mut Vec<u8>) -> Result<(), ShapeError> {
	row_bytes(format, values.len())?;
	let blocks = values.chunks_exact(format.block_values());
	match format {
		Format::Q4K | Format::Q6K => {
			return Err(ShapeError(format!(
				"{} can only be read here: quantize it with GGML's tools",
				format.name()
			)));
		}
		Format::Int8 => {
			let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
			let scale = amax / 127.0;
			let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
			out.extend_from_slice(&scale.to_le_bytes());
			out.extend_from_slice(&[0u8; 12]);
			out.extend(values.iter().map(|v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8));
		}
		Format::Q4_0 => {
			for x in blocks {
				let (mut amax, mut max) = (0f32, 0f32);
				for &v in x {
					if amax < v.abs() {
						amax = v.abs();
						max = v;
					}
				}
				let d = max / -8.0;
				let id = if d != 0.0 { 1.0 / d } else { 0.0 };
				out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
				for j in 0..16 {
					let lo = u8::min(15, (x[j] * id + 8.5) as u8);
					let hi = u8::min(15, (x[16 + j] * id + 8.5) as u8);
					out.push(lo | (hi << 4));
				}
			}
		}
		Format::Q4_1 => {
			for x in blocks {
				let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
				for &v in x {
					min = min.min(v);
					max = max.max(v);
				}
				let d = (max - min) / 15.0;
				let id = if d != 0.0 { 1.0 / d } else { 0.0 };
				out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
				out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
				for j in 0..16 {
					let lo = u8::min(15, ((x[j] - min) * id + 0.5) as u8);
					let hi = u8::min(15, ((x[16 + j] - min) * id + 0.5) as u8);
					out.push(lo | (hi << 4));
				}
			}
		}
		Format::Q8_0 => {
			for x in blocks {
				let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
				let d = amax / 127.0;
				let id = if d != 0.0 { 1.0 / d } else { 0.0 };
				out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
				out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
			}
		}
		Format::Int4 => {
			for x in blocks {
				let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
				let d = f16::from_f32(amax / 7.0);
				let dq = d.to_f32();
				let id = if dq != 0.0 { 1.0 / dq } else { 0.0 };
				out.extend_from_slice(&d.to_le_bytes());
				let q = |v: f32| ((v * id).round().clamp(-7.0, 7.0) as i32 & 15) as u8;
				for j in 0..16 {
					out.push(q(x[2 * j]) | (q(x[2 * j + 1]) << 4));
				}
			}
		}
		Format::Bf16 => {
			for &v in values {
				out.extend_from_slice(&bf16::from_f32(v).to_le_bytes());
			}
		}
	}
	Ok(())
}

/// A `rows × cols` row-major matrix of `values` in `format`: `rows · row_bytes` bytes.
pub fn quantize(
	format: Format,
	values: &[f32],
	rows: usize,
	cols: usize,
) -> Result<Vec<u8>, ShapeError> {
	let per_row = row_bytes(format, cols)?;
	if values.len() != rows * cols {
		return Err(ShapeError(format!("{} values for a {rows} × {cols} matrix", values.len())));
	}
	let mut out = Vec::with_capacity(rows * per_row);
	for row in values.chunks_exact(cols) {
		quantize_row(format, row, &mut out)?;
	}
	Ok(out)
}

/// The `rows × cols` values of a matrix stored in `format`.
pub fn dequantize(
	format: Format,
	bytes: &[u8],
	rows: usize,
	cols: usize,
) -> Result<Vec<f32>, ShapeError> {
	let per_row = row_bytes(format, cols)?;
	check_weights(format, bytes, rows, cols, per_row)?;
	let mut out = vec![0f32; rows * cols];
	for (row, y) in bytes.chunks_exact(per_row).zip(out.chunks_exact_mut(cols)) {
		dequantize_row(format, row, y)?;
	}
	Ok(out)
}

fn check_weights(
	format: Format,
	weights: &[u8],
	rows: usize,
	cols: usize,
	per_row: usize,
) -> Result<(), ShapeError> {
	if weights.len() != rows * per_row {
		return Err(ShapeError(format!(
			"a {rows} × {cols} {} matrix has {} bytes, not {}",
			format.name(),
			rows * per_row,
			weights.len()
		)));
	}
	Ok(())
}

/// `y = W·x`: `W` is `rows × cols` in `format` (`rows · row_bytes` bytes), `x` has `cols`
/// values and `y` `rows`. See the module documentation for the order of the arithmetic.
pub fn gemv(
	format: Format,
	weights: &[u8],
	rows: usize,
	cols: usize,
	x: &[f32],
	y: &mut [f32],
) -> Result<(), ShapeError> {
	if x.len() != cols || y.len() != rows {
		return Err(ShapeError(format!(
			"x has {} values and y {} for a {rows} × {cols} matrix",
			x.len(),
			y.len()
		)));
	}
	gemm(format, weights, rows, cols, x, y)
}

/// `y[i] = W·x[i]` for each of the `n` input rows of `x` (`[n, cols]`), into `y` (`[n, rows]`):
/// every input row is computed exactly as [`gemv`] computes it alone.
pub fn gemm(
	format: Format,
	weights: &[u8],
	rows: usize,
	cols: usize,
	x: &[f32],
	y: &mut [f32],
) -> Result<(), ShapeError> {
	let per_row = row_bytes(format, cols)?;
	check_weights(format, weights, rows, cols, per_row)?;
	if !x.len().is_multiple_of(cols) || y.len() != x.len() / cols * rows {
		return Err(ShapeError(format!(
			"x has {} values and y {} for a {rows} × {cols} matrix",
			x.len(),
			y.len()
		)));
	}
	for (r, w) in weights.chunks_exact(per_row).enumerate() {
		for (i, x) in x.chunks_exact(cols).enumerate() {
			y[i * rows + r] = row_dot(format, w, cols, x);
		}
	}
	Ok(())
}

/// One row's dot product with one input row, as a warp computes it.
fn row_dot(format: Format, row: &[u8], cols: usize, x: &[f32]) -> f32 {
	let mut lanes = [0f32; LANES];
	for u in 0..cols / format.unit_values() {
		lanes[u % LANES] = unit_dot(format, row, u, x, lanes[u % LANES]);
	}
	let mut off = LANES / 2;
	while off > 0 {
		for i in 0..off {
			lanes[i] += lanes[i + off];
		}
		off /= 2;
	}
	match format {
		Format::Int8 => f32_at(row, 0) * lanes[0],
		_ => lanes[0],
	}
}

/// Adds unit `u` of `row` times the matching values of `x` to `acc`.
fn unit_dot(format: Format, row: &[u8], u: usize, x: &[f32], acc: f32) -> f32 {
	let values = format.unit_values();
	match format {
		Format::Q4_0 | Format::Q4_1 | Format::Q8_0 | Format::Int4 => {
			let b = &row[u * format.block_bytes()..(u + 1) * format.block_bytes()];
			let x = &x[u * values..(u + 1) * values];
			let d = f16_at(b, 0);
			let mut s = 0f32;
			match format {
				Format::Q4_0 => {
					for j in 0..16 {
						s = (((b[2 + j] & 15) as i32 - 8) as f32).mul_add(x[j], s);
						s = (((b[2 + j] >> 4) as i32 - 8) as f32).mul_add(x[16 + j], s);
					}
					d.mul_add(s, acc)
				}
				Format::Q4_1 => {
					let m = f16_at(b, 2);
					let mut sx = 0f32;
					for j in 0..16 {
						s = ((b[4 + j] & 15) as f32).mul_add(x[j], s);
						sx += x[j];
						s = ((b[4 + j] >> 4) as f32).mul_add(x[16 + j], s);
						sx += x[16 + j];
					}
					m.mul_add(sx, d.mul_add(s, acc))
				}
				Format::Q8_0 => {
					for j in 0..32 {
						s = (b[2 + j] as i8 as f32).mul_add(x[j], s);
					}
					d.mul_add(s, acc)
				}
				_ => {
					for j in 0..16 {
						s = (signed_nibble(b[2 + j]) as f32).mul_add(x[2 * j], s);
						s = (signed_nibble(b[2 + j] >> 4) as f32).mul_add(x[2 * j + 1], s);
					}
					d.mul_add(s, acc)
				}
			}
		}
		Format::Q4K => {
			let (block, chunk) = (u / 4, u % 4);
			let b = &row[144 * block..144 * block + 144];
			let x = &x[256 * block + 64 * chunk..256 * block + 64 * chunk + 64];
			let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
			let (sc1, m1) = scale_min_k4(2 * chunk, &b[4..16]);
			let (sc2, m2) = scale_min_k4(2 * chunk + 1, &b[4..16]);
			let qs = &b[16 + 32 * chunk..16 + 32 * chunk + 32];
			let (mut s1, mut x1, mut s2, mut x2) = (0f32, 0f32, 0f32, 0f32);
			for l in 0..32 {
				s1 = ((qs[l] & 15) as f32).mul_add(x[l], s1);
				x1 += x[l];
				s2 = ((qs[l] >> 4) as f32).mul_add(x[32 + l], s2);
				x2 += x[32 + l];
			}
			let acc = (d * sc1 as f32).mul_add(s1, acc);
			let acc = (-(dmin * m1 as f32)).mul_add(x1, acc);
			let acc = (d * sc2 as f32).mul_add(s2, acc);
			(-(dmin * m2 as f32)).mul_add(x2, acc)
		}
		Format::Q6K => {
			let (block, quarter) = (u / 4, u % 4);
			let (half, l0) = (quarter / 2, 16 * (quarter % 2));
			let b = &row[210 * block..210 * block + 210];
			let x = &x[256 * block + 128 * half..256 * block + 128 * half + 128];
			let ql = &b[64 * half..64 * half + 64];
			let qh = &b[128 + 32 * half..128 + 32 * half + 32];
			let sc = &b[192 + 8 * half + quarter % 2..];
			let d = f16_at(b, 208);
			let mut s = [0f32; 4];
			for l in l0..l0 + 16 {
				let (q1, q2, q3, q4) = q6k_values(ql[l], ql[l + 32], qh[l]);
				s[0] = (q1 as f32).mul_add(x[l], s[0]);
				s[1] = (q2 as f32).mul_add(x[l + 32], s[1]);
				s[2] = (q3 as f32).mul_add(x[l + 64], s[2]);
				s[3] = (q4 as f32).mul_add(x[l + 96], s[3]);
			}
			let mut acc = acc;
			for (g, s) in s.iter().enumerate() {
				acc = (d * sc[2 * g] as i8 as f32).mul_add(*s, acc);
			}
			acc
		}
		Format::Int8 => {
			let b = &row[16 + 16 * u..16 + 16 * u + 16];
			let x = &x[16 * u..16 * u + 16];
			b.iter().zip(x).fold(acc, |acc, (&q, &x)| (q as i8 as f32).mul_add(x, acc))
		}
		Format::Bf16 => {
			let b = &row[16 * u..16 * u + 16];
			let x = &x[8 * u..8 * u + 8];
			b.chunks_exact(2).zip(x).fold(acc, |acc, (w, &x)| {
				bf16::from_le_bytes([w[0], w[1]]).to_f32().mul_add(x, acc)
			})
		}
	}
}

#[cfg(test)]
mod tests {
	use candle_core::{
		quantized::{GgmlDType, QTensor},
		Device, Tensor,
	};
	use rand::{rngs::StdRng, Rng, SeedableRng};

	use super::*;

	/// Random values whose scale and offset change from row to row (and a few zeros, and a
	/// whole zero block), so that scales, mins and signs all vary.
	fn random_matrix(rng: &mut StdRng, rows: usize, cols: usize) -> Vec<f32> {
		let mut v = Vec::with_capacity(rows * cols);
		for r in 0..rows {
			let scale = [1.0, 0.02, 7.5, 0.3][r % 4] * rng.random_range(0.5f32..1.5);
			let offset = if r % 3 == 2 { scale * 0.8 } else { 0.0 };
			for c in 0..cols {
				let value = if r % 5 == 4 && c < 32 || c % 97 == 13 {
					0.0
				} else {
					rng.random_range(-1.0f32..1.0) * scale + offset
				};
				v.push(value);
			}
		}
		v
	}

	fn ggml(format: Format) -> GgmlDType {
		match format {
			Format::Q4_0 => GgmlDType::Q4_0,
			Format::Q4_1 => GgmlDType::Q4_1,
			Format::Q8_0 => GgmlDType::Q8_0,
			Format::Q4K => GgmlDType::Q4K,
			Format::Q6K => GgmlDType::Q6K,
			other => panic!("{other:?} is not a GGML format"),
		}
	}

	/// candle's quantization of `values` (`rows × cols`): its bytes and its dequantization.
	fn candle(format: Format, values: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
		let t = Tensor::from_vec(values.to_vec(), (rows, cols), &Device::Cpu).unwrap();
		let q = QTensor::quantize(&t, ggml(format)).unwrap();
		let bytes = q.data().unwrap().to_vec();
		let back = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
		(bytes, back)
	}

	/// A random matrix in `format`: candle's quantization for the K-quants, ours otherwise.
	fn weights(rng: &mut StdRng, format: Format, rows: usize, cols: usize) -> Vec<u8> {
		let values = random_matrix(rng, rows, cols);
		if format.can_quantize() {
			quantize(format, &values, rows, cols).unwrap()
		} else {
			candle(format, &values, rows, cols).0
		}
	}

	const GGML: [Format; 5] = [Format::Q4_0, Format::Q4_1, Format::Q8_0, Format::Q4K, Format::Q6K];

	#[test]
	fn block_sizes_are_ggml_s() {
		for format in GGML {
			let dtype = ggml(format);
			assert_eq!(format.block_values(), dtype.block_size(), "{format:?}");
			assert_eq!(format.block_bytes(), dtype.type_size(), "{format:?}");
		}
		assert_eq!(row_bytes(Format::Int8, 64), Ok(16 + 64));
		assert_eq!(row_bytes(Format::Int4, 64), Ok(36));
		assert_eq!(row_bytes(Format::Bf16, 64), Ok(128));
		assert_eq!(row_bytes(Format::Q6K, 512), Ok(420));
	}

	#[test]
	fn dequantization_equals_candle_s() {
		let mut rng = StdRng::seed_from_u64(1);
		for format in GGML {
			for &(rows, cols) in &[(1, 256), (5, 512), (3, 1536)] {
				let values = random_matrix(&mut rng, rows, cols);
				let (bytes, want) = candle(format, &values, rows, cols);
				let got = dequantize(format, &bytes, rows, cols).unwrap();
				for (i, (g, w)) in got.iter().zip(&want).enumerate() {
					assert_eq!(g.to_bits(), w.to_bits(), "{format:?} {rows}×{cols} value {i}");
				}
			}
		}
	}

	#[test]
	fn quantizers_write_candle_s_bytes() {
		let mut rng = StdRng::seed_from_u64(2);
		for format in [Format::Q4_0, Format::Q4_1, Format::Q8_0] {
			for &(rows, cols) in &[(1, 32), (7, 96), (4, 1536)] {
				let values = random_matrix(&mut rng, rows, cols);
				let got = quantize(format, &values, rows, cols).unwrap();
				assert_eq!(got, candle(format, &values, rows, cols).0, "{format:?} {rows}×{cols}");
			}
		}
	}

	#[test]
	fn quantization_round_trips_within_a_step() {
		let mut rng = StdRng::seed_from_u64(3);
		let (rows, cols) = (9, 320);
		for format in Format::ALL.into_iter().filter(|f| f.can_quantize()) {
			let values = random_matrix(&mut rng, rows, cols);
			let bytes = quantize(format, &values, rows, cols).unwrap();
			assert_eq!(bytes.len(), rows * row_bytes(format, cols).unwrap());
			let back = dequantize(format, &bytes, rows, cols).unwrap();
			let per_row = row_bytes(format, cols).unwrap();
			for r in 0..rows {
				let row = &bytes[r * per_row..(r + 1) * per_row];
				let row_amax =
					values[r * cols..(r + 1) * cols].iter().fold(0f32, |m, v| m.max(v.abs()));
				for b in 0..cols / 32 {
					let at = r * cols + 32 * b;
					let block = &values[at..at + 32];
					let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
					let min = block.iter().fold(f32::INFINITY, |m, &v| m.min(v));
					let max = block.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
					let bb = &row[format.row_header_bytes() + b * format.block_bytes()..];
					// The step between neighbouring values, what it should be, and the largest
					// error a value may have.
					let (step, expected, tol) = match format {
						Format::Q4_0 => {
							let d = f16_at(bb, 0).abs();
							(d, amax / 8.0, 1.01 * d)
						}
						Format::Q4_1 => {
							let d = f16_at(bb, 0);
							(d, (max - min) / 15.0, 0.53 * d + f16_at(bb, 2).abs() * 1e-3)
						}
						Format::Q8_0 => {
							let d = f16_at(bb, 0);
							(d, amax / 127.0, 0.57 * d)
						}
						Format::Int8 => {
							let s = f32_at(row, 0);
							(s, row_amax / 127.0, 0.501 * s)
						}
						Format::Int4 => {
							let d = f16_at(bb, 0);
							(d, amax / 7.0, 0.51 * d)
						}
						_ => (0.0, 0.0, amax / 256.0),
					};
					assert!(
						(step - expected).abs() <= expected * 1e-3,
						"{format:?} row {r} block {b}: step {step}, expected {expected}"
					);
					for j in 0..32 {
						let (v, q) = (block[j], back[at + j]);
						assert!(
							(v - q).abs() <= tol,
							"{format:?} row {r} value {}: {v} came back as {q} (step {step})",
							32 * b + j
						);
					}
				}
			}
		}
	}

	/// `W·x` in f64 over the dequantized matrix.
	fn textbook(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
		let n = x.len() / cols;
		let (mut y, mut magnitude) = (vec![0f64; n * rows], vec![0f64; n * rows]);
		for i in 0..n {
			for r in 0..rows {
				for c in 0..cols {
					let p = w[r * cols + c] as f64 * x[i * cols + c] as f64;
					y[i * rows + r] += p;
					magnitude[i * rows + r] += p.abs();
				}
			}
		}
		(y, magnitude)
	}

	#[test]
	fn products_match_the_textbook_formula_over_many_shapes() {
		let mut rng = StdRng::seed_from_u64(4);
		for format in Format::ALL {
			for rows in [1, 3, 67] {
				for cols in [32usize, 96, 256, 768, 1536] {
					if !cols.is_multiple_of(format.block_values()) {
						continue;
					}
					let bytes = weights(&mut rng, format, rows, cols);
					let w = dequantize(format, &bytes, rows, cols).unwrap();
					for n in [1, 2, 9] {
						let x: Vec<f32> =
							(0..n * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
						let mut y = vec![f32::NAN; n * rows];
						gemm(format, &bytes, rows, cols, &x, &mut y).unwrap();
						let (want, magnitude) = textbook(&w, rows, cols, &x);
						for k in 0..n * rows {
							let err = (y[k] as f64 - want[k]).abs();
							assert!(
								err <= 1e-5 * magnitude[k] + 1e-30,
								"{format:?} {rows}×{cols} n {n} output {k}: {} for {}",
								y[k],
								want[k]
							);
						}
						// Each input row alone gives the same bits.
						for i in 0..n {
							let mut one = vec![f32::NAN; rows];
							gemv(
								format,
								&bytes,
								rows,
								cols,
								&x[i * cols..(i + 1) * cols],
								&mut one,
							)
							.unwrap();
							for r in 0..rows {
								assert_eq!(one[r].to_bits(), y[i * rows + r].to_bits());
							}
						}
					}
				}
			}
		}
	}

	#[test]
	fn shape_errors() {
		assert!(row_bytes(Format::Q4_0, 0).is_err());
		assert!(row_bytes(Format::Q4_0, 48).is_err());
		assert!(row_bytes(Format::Q4K, 288).is_err());
		assert!(row_bytes(Format::Bf16, 33).is_err());
		let mut out = Vec::new();
		assert!(quantize_row(Format::Q8_0, &[0.5; 40], &mut out).is_err());
		assert!(quantize_row(Format::Q4K, &[0.5; 256], &mut out).is_err());
		assert!(quantize_row(Format::Q6K, &[0.5; 256], &mut out).is_err());
		assert!(out.is_empty());
		assert!(quantize(Format::Int4, &[0.5; 64], 3, 32).is_err());
		let bytes = quantize(Format::Q4_1, &[0.25; 128], 2, 64).unwrap();
		let mut row = [0f32; 64];
		assert!(dequantize_row(Format::Q4_1, &bytes[..39], &mut row).is_err());
		assert!(dequantize_row(Format::Q4_1, &bytes[..40], &mut row).is_ok());
		assert!(dequantize(Format::Q4_1, &bytes, 3, 64).is_err());
		let (x, mut y) = ([1f32; 64], [0f32; 2]);
		assert!(gemv(Format::Q4_1, &bytes, 2, 64, &x, &mut y).is_ok());
		assert!(gemv(Format::Q4_1, &bytes, 2, 64, &x[..32], &mut y).is_err());
		assert!(gemv(Format::Q4_1, &bytes, 2, 64, &x, &mut y[..1]).is_err());
		assert!(gemv(Format::Q4_1, &bytes[..79], 2, 64, &x, &mut y).is_err());
		assert!(gemv(Format::Q4_1, &bytes, 1, 64, &x, &mut y[..1]).is_err());
		assert!(gemv(Format::Q4_0, &bytes, 2, 64, &x, &mut y).is_err());
		let (x, mut y) = ([1f32; 192], [0f32; 6]);
		assert!(gemm(Format::Q4_1, &bytes, 2, 64, &x, &mut y).is_ok());
		assert!(gemm(Format::Q4_1, &bytes, 2, 64, &x[..160], &mut y[..5]).is_err());
		assert!(gemm(Format::Q4_1, &bytes, 2, 64, &x, &mut y[..4]).is_err());
		// The right values: 0.25 is exact in Q4_1 (d = 0, m = 0.25).
		assert!(y.iter().all(|&v| v == 16.0));
	}
}
