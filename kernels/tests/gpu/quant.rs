//! Quantized GEMV / GEMM on the GPU against [`openledger_kernels::quant::gemm`], for every
//! format.
//!
//! The kernels perform the CPU reference's IEEE operations in the same order (explicit fused
//! multiply-adds, the same per-lane units and the same xor butterfly), so the two should agree
//! to the bit. The tolerance, `atol = 1e-4·√cols` and `rtol = 1e-5`, is still far below what
//! any indexing mistake would give (one wrong value of a 1536-long row moves the result by
//! about 0.1 for these inputs, a wrong scale by more) while leaving room for rounding-level
//! differences (about `cols · 2⁻²⁴ · max|w·x|`) should the compiler ever order something
//! differently. The two ways of reading x (directly and staged in shared memory) must agree
//! to the bit.

use candle_core::{
	quantized::{GgmlDType, QTensor},
	Device, Tensor,
};
use openledger_kernels::{
	gpu::{
		quant::{self, XReads},
		Gpu,
	},
	quant::{gemm, quantize, row_bytes, Format},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

pub const CHECKS: &[crate::Check] = &[
	("gemv_q4_0", |gpu| check(gpu, Format::Q4_0)),
	("gemv_q4_1", |gpu| check(gpu, Format::Q4_1)),
	("gemv_q8_0", |gpu| check(gpu, Format::Q8_0)),
	("gemv_q4_k", |gpu| check(gpu, Format::Q4K)),
	("gemv_q6_k", |gpu| check(gpu, Format::Q6K)),
	("gemv_int8", |gpu| check(gpu, Format::Int8)),
	("gemv_int4", |gpu| check(gpu, Format::Int4)),
	("gemv_bf16", |gpu| check(gpu, Format::Bf16)),
	("gemv_shape_errors", shape_errors),
];

/// Random `rows × cols` weights in `format`: quantized by candle for the K-quants (which this
/// crate only reads), by this crate otherwise.
fn weights(rng: &mut StdRng, format: Format, rows: usize, cols: usize) -> anyhow::Result<Vec<u8>> {
	let values: Vec<f32> = (0..rows * cols)
		.map(|i| rng.random_range(-1.0f32..1.0) * if (i / cols) % 3 == 1 { 0.05 } else { 1.0 })
		.collect();
	let dtype = match format {
		Format::Q4K => GgmlDType::Q4K,
		Format::Q6K => GgmlDType::Q6K,
		_ => return Ok(quantize(format, &values, rows, cols)?),
	};
	let t = Tensor::from_vec(values, (rows, cols), &Device::Cpu)?;
	Ok(QTensor::quantize(&t, dtype)?.data()?.to_vec())
}

fn check(gpu: &Gpu, format: Format) -> anyhow::Result<()> {
	let mut rng = StdRng::seed_from_u64(11);
	let all_cols: &[usize] = if format.block_values() == 256 {
		&[256, 512, 768, 1536, 2304]
	} else {
		&[32, 96, 160, 576, 1536]
	};
	for rows in [1, 7, 67, 576, 1536] {
		for &cols in all_cols {
			let bytes = weights(&mut rng, format, rows, cols)?;
			anyhow::ensure!(bytes.len() == rows * row_bytes(format, cols)?);
			let w = gpu.upload(&bytes)?;
			for n in [1, 3, 8, 9, 17] {
				let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
				let mut want = vec![0f32; n * rows];
				gemm(format, &bytes, rows, cols, &x, &mut want)?;
				let x_gpu = gpu.upload(&x)?;
				// NaNs where nothing has been written, so that a missed output fails.
				let mut y = gpu.upload(&vec![f32::NAN; n * rows])?;
				quant::gemv(gpu, format, &w, rows, cols, &x_gpu, n, &mut y)?;
				let got = gpu.download(&y)?;
				let what = format!("{} {rows}×{cols}, n = {n}", format.name());
				crate::compare(&what, &got, &want, 1e-4 * (cols as f32).sqrt(), 1e-5)?;
				// Reading x the other way (directly or staged in shared memory): the same bits.
				let other = match XReads::for_format(format) {
					XReads::Direct => XReads::Staged,
					XReads::Staged => XReads::Direct,
				};
				let mut y = gpu.upload(&vec![f32::NAN; n * rows])?;
				quant::gemv_reading(gpu, other, format, &w, rows, cols, &x_gpu, n, &mut y)?;
				let same =
					gpu.download(&y)?.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
				anyhow::ensure!(same, "{what}: reading x {other:?} changes bits");
			}
		}
	}
	Ok(())
}

fn shape_errors(gpu: &Gpu) -> anyhow::Result<()> {
	let (rows, cols, n) = (3, 64, 2);
	let values: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 - 3.0).collect();
	let bytes = quantize(Format::Q8_0, &values, rows, cols)?;
	let x_host: Vec<f32> = (0..n * cols).map(|i| (i % 5) as f32 * 0.25).collect();
	let mut want = vec![0f32; n * rows];
	gemm(Format::Q8_0, &bytes, rows, cols, &x_host, &mut want)?;
	let w = gpu.upload(&bytes)?;
	let x = gpu.upload(&x_host)?;
	let mut y = gpu.upload(&vec![f32::NAN; n * rows])?;
	let bad = [
		quant::gemv(gpu, Format::Q4_0, &w, rows, cols, &x, n, &mut y),
		quant::gemv(gpu, Format::Q8_0, &w, rows + 1, cols, &x, n, &mut y),
		quant::gemv(gpu, Format::Q8_0, &w, rows, 48, &x, n, &mut y),
		quant::gemv(gpu, Format::Q8_0, &w, rows, cols, &x, n + 1, &mut y),
		quant::gemv(gpu, Format::Q4K, &w, rows, cols, &x, n, &mut y),
	];
	for (i, result) in bad.into_iter().enumerate() {
		anyhow::ensure!(result.is_err(), "bad shape {i} was accepted");
	}
	// Nothing was launched by the refused calls; the good one writes every output.
	anyhow::ensure!(gpu.download(&y)?.iter().all(|v| v.is_nan()), "a refused call wrote y");
	quant::gemv(gpu, Format::Q8_0, &w, rows, cols, &x, n, &mut y)?;
	crate::compare("q8_0 3×64, n = 2", &gpu.download(&y)?, &want, 1e-4 * 8.0, 1e-5)
}
