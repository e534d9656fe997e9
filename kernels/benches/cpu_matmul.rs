//! The CPU quantized matrix product of the serving path ([`QuantMatrix`]) against candle's
//! (`QMatMul` over the same GGML blocks), side by side in one run: a 576 × 1536 matrix (the
//! size of SmolLM2-135M's FFN down projection) in each block format, at batch sizes 1 to 64.
//!
//! `cargo bench -p openledger-kernels --bench cpu_matmul`

use std::time::Instant;

use candle_core::{
	quantized::{GgmlDType, QMatMul, QTensor},
	Device, Module, Tensor,
};
use openledger_kernels::{cpu_matmul::QuantMatrix, quant::Format};

/// Seconds per call of `f`: the median of `runs` samples, each the mean of as many calls as
/// take about 5 ms (a single batch-1 call is ~0.1 ms, where the thread pool's wake-up alone
/// moves one call's time by tens of percent), after warm-up calls.
fn median(runs: usize, mut f: impl FnMut()) -> f64 {
	let start = Instant::now();
	f();
	f();
	let calls = (0.005 / (start.elapsed().as_secs_f64() / 2.0)).ceil().max(1.0) as usize;
	let mut times: Vec<f64> = (0..runs)
		.map(|_| {
			let start = Instant::now();
			for _ in 0..calls {
				f();
			}
			start.elapsed().as_secs_f64() / calls as f64
		})
		.collect();
	times.sort_by(f64::total_cmp);
	times[runs / 2]
}

fn main() -> anyhow::Result<()> {
	// `cargo test --benches` runs bench targets without `--bench`: measure only when asked.
	if !std::env::args().any(|a| a == "--bench") {
		return Ok(());
	}
	let (rows, cols) = (576, 1536);
	let device = Device::Cpu;
	let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
	println!(
		"{rows}x{cols} weight, CPU, {threads} threads; input rows per second (median of 21 samples of ~5 ms of calls)\n"
	);
	println!("| format | batch | ours rows/s | candle QMatMul rows/s | ours / candle |");
	println!("|---|---|---|---|---|");
	let formats = [
		(GgmlDType::Q4_0, Format::Q4_0),
		(GgmlDType::Q4_1, Format::Q4_1),
		(GgmlDType::Q8_0, Format::Q8_0),
		(GgmlDType::Q4K, Format::Q4K),
		(GgmlDType::Q6K, Format::Q6K),
	];
	let w = Tensor::randn(0f32, 0.05, (rows, cols), &device)?;
	for (dtype, format) in formats {
		let q = QTensor::quantize(&w, dtype)?;
		let ours = QuantMatrix::new(format, rows, cols, q.data()?.into_owned())?;
		let theirs = QMatMul::from_qtensor(q)?;
		for n in [1usize, 4, 16, 64] {
			let x = Tensor::randn(0f32, 1.0, (n, cols), &device)?;
			let xs = x.flatten_all()?.to_vec1::<f32>()?;
			let mut y = vec![0f32; n * rows];
			let t_ours = median(21, || ours.matmul(&xs, &mut y).expect("shapes fit"));
			let t_theirs = median(21, || {
				theirs.forward(&x).expect("candle product");
			});
			// Same blocks, same inputs: the two agree to the inputs' 8-bit quantization in
			// candle's product.
			let want = theirs.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
			let (mut err, mut norm) = (0f64, 0f64);
			for (a, b) in y.iter().zip(&want) {
				err += ((a - b) as f64).powi(2);
				norm += (*b as f64).powi(2);
			}
			anyhow::ensure!(
				(err / norm).sqrt() < 0.02,
				"{}: ours and candle's differ by {}",
				format.name(),
				(err / norm).sqrt()
			);
			println!(
				"| {} | {n} | {:.0} | {:.0} | {:.2}x |",
				format.name(),
				n as f64 / t_ours,
				n as f64 / t_theirs,
				t_theirs / t_ours
			);
		}
	}
	Ok(())
}
