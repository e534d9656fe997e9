//! What the CUDA kernels achieve on the GPU, against the device's own limits, side by side:
//!
//! - decode GEMV per weight format: achieved HBM bandwidth, as a share of the device's peak;
//! - paged decode attention: bandwidth over the keys and values it reads, as a share of peak;
//! - multi-LoRA: a batch's base product plus its adapters' shrink/expand, with 1 and with 1,000
//!   distinct adapters in the mix, against the base product alone at the same batch size;
//! - adapter upload from host: bytes per second, against a plain page-locked copy of the same
//!   size (what the bus gives);
//! - the activation-sparse FFN down projection against the dense one, at several sparsities.
//!
//! `cargo bench -p openledger-kernels --bench gpu` (NVRTC on `LD_LIBRARY_PATH`:
//! `scripts/fetch-nvrtc.sh` prints its folder). Without a GPU it says so and measures nothing.
//!
//! `OPENLEDGER_BENCH_DRY_RUN=1` runs every step once at toy sizes, also on the CUDA emulator
//! (`scripts/build-cuda-emulator.sh`), to show the whole bench runs before a lent GPU's minutes
//! are spent on it; its numbers mean nothing.

use std::time::Instant;

use openledger_kernels::{
	adapter_pool::{adapter_pages, LoraPlan, PagedAdapter},
	attention::{AttentionParams, KvLayout},
	gpu::{
		attention::{self, GpuBlockTables, GpuPagedKv},
		lora::{self, DeviceAdapterPool, DevicePlan},
		quant, sparse, Gpu, GpuError,
	},
	quant::{self as host_quant, Format},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Whether this is a dry run (`OPENLEDGER_BENCH_DRY_RUN=1`): toy sizes, one timed call.
fn dry_run() -> bool {
	std::env::var("OPENLEDGER_BENCH_DRY_RUN").as_deref() == Ok("1")
}

/// `full`, or `toy` in a dry run.
fn size(full: usize, toy: usize) -> usize {
	if dry_run() {
		toy
	} else {
		full
	}
}

/// Median seconds of `runs` timed calls of `f` (after two warm-up calls), each synchronised;
/// one call in a dry run.
fn time(gpu: &Gpu, runs: usize, mut f: impl FnMut() -> Result<(), GpuError>) -> f64 {
	let runs = size(runs, 1);
	let mut run = || -> Result<f64, GpuError> {
		gpu.synchronize()?;
		let start = Instant::now();
		f()?;
		gpu.synchronize()?;
		Ok(start.elapsed().as_secs_f64())
	};
	for _ in 0..2 {
		run().expect("warm-up run");
	}
	let mut times: Vec<f64> = (0..runs).map(|_| run().expect("timed run")).collect();
	times.sort_by(f64::total_cmp);
	times[runs / 2]
}

fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
	(0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn main() -> anyhow::Result<()> {
	// `cargo test --benches` runs bench targets with `--bench`-less arguments; measure only
	// when asked to.
	if !std::env::args().any(|a| a == "--bench") {
		return Ok(());
	}
	let Some(gpu) = Gpu::first()? else {
		println!("SKIPPED: no CUDA driver or device on this machine; nothing measured.");
		return Ok(());
	};
	if dry_run() {
		println!(
			"DRY RUN (OPENLEDGER_BENCH_DRY_RUN=1): toy sizes, one call each; numbers mean nothing."
		);
	} else if gpu.is_emulator() {
		println!("SKIPPED: the CUDA emulator runs kernels on the CPU; nothing measured.");
		return Ok(());
	}
	let peak = gpu.peak_bandwidth()?;
	println!(
		"device: {} ({}), peak memory bandwidth {:.0} GB/s",
		gpu.name()?,
		gpu.arch(),
		peak / 1e9
	);
	let mut rng = StdRng::seed_from_u64(1);

	// Decode GEMV: a weight matrix well past the L2 cache (≥ 256 MB dequantized to bf16
	// terms), batch 1.
	println!(
		"\n## Decode GEMV (batch 1, 8192 columns; x read directly and staged in shared memory)"
	);
	println!(
		"| format | x reads | rows | weight MB | µs | GB/s | share of peak | staged / direct |"
	);
	println!("|---|---|---|---|---|---|---|---|");
	let cols = 8192;
	for format in Format::ALL {
		let row_bytes = host_quant::row_bytes(format, cols)?;
		let rows = size(512 << 20, 1 << 20) / row_bytes;
		// Quantize one 64-row band and repeat it: the values do not change the timing.
		let band_rows = 64.min(rows);
		let band = match format {
			Format::Q4K | Format::Q6K => {
				// Read-only formats here: random bytes with finite f16 scales.
				let mut bytes: Vec<u8> = (0..band_rows * row_bytes).map(|_| rng.random()).collect();
				for block in bytes.chunks_mut(format.block_bytes()) {
					let at = if format == Format::Q4K { 0 } else { block.len() - 2 };
					block[at..at + 2].copy_from_slice(&0x2c00u16.to_le_bytes());
					if format == Format::Q4K {
						block[2..4].copy_from_slice(&0x2c00u16.to_le_bytes());
					}
				}
				bytes
			}
			_ => host_quant::quantize(
				format,
				&random(&mut rng, band_rows * cols, 1.0),
				band_rows,
				cols,
			)?,
		};
		let mut weights_host = Vec::with_capacity(rows * row_bytes);
		while weights_host.len() < rows * row_bytes {
			let take = band.len().min(rows * row_bytes - weights_host.len());
			weights_host.extend_from_slice(&band[..take]);
		}
		let weights = gpu.upload(&weights_host)?;
		let x = gpu.upload(&random(&mut rng, cols, 1.0))?;
		let mut y = gpu.zeros::<f32>(rows)?;
		let bytes = (rows * row_bytes + cols * 4 + rows * 4) as f64;
		let mut direct = f64::NAN;
		for reads in [quant::XReads::Direct, quant::XReads::Staged] {
			let seconds = time(&gpu, 20, || {
				quant::gemv_reading(&gpu, reads, format, &weights, rows, cols, &x, 1, &mut y)
			});
			if reads == quant::XReads::Direct {
				direct = seconds;
			}
			let chosen = if reads == quant::XReads::for_format(format) { " (used)" } else { "" };
			println!(
				"| {} | {reads:?}{chosen} | {rows} | {:.0} | {:.1} | {:.0} | {:.2} | {:.2}x |",
				format.name(),
				(rows * row_bytes) as f64 / 1e6,
				seconds * 1e6,
				bytes / seconds / 1e9,
				bytes / seconds / peak,
				direct / seconds
			);
		}
	}

	// Paged decode attention: 64 sequences of 2,048 tokens, 32 query heads on 8 kv heads of
	// 128, 16-token blocks scattered over the pool.
	println!("\n## Paged decode attention (64 sequences, 32/8 heads of 128, 16-token blocks)");
	println!("| context | KV MB read | µs | GB/s | share of peak |");
	println!("|---|---|---|---|---|");
	for context in [512usize, 2048, 8192] {
		let context = size(context, context / 16 + 7);
		let (seqs, heads, kv_heads, head_dim, block_size) = (size(64, 2), 32, 8, 128, 16);
		let layout = KvLayout { block_size, num_kv_heads: kv_heads, head_dim };
		let blocks_per_seq = context.div_ceil(block_size);
		let num_blocks = seqs * blocks_per_seq;
		let mut order: Vec<u32> = (0..num_blocks as u32).collect();
		for i in (1..order.len()).rev() {
			order.swap(i, rng.random_range(0..=i));
		}
		let cache_len = num_blocks * layout.block_len();
		let k = gpu.upload(&random(&mut rng, cache_len, 1.0))?;
		let v = gpu.upload(&random(&mut rng, cache_len, 1.0))?;
		let cache = GpuPagedKv::new(&k, &v, layout)?;
		let tables = gpu.upload(&order)?;
		let lens = gpu.upload(&vec![context as u32; seqs])?;
		let block_tables = GpuBlockTables {
			tables: &tables,
			max_blocks_per_seq: blocks_per_seq,
			context_lens: &lens,
		};
		let q = gpu.upload(&random(&mut rng, seqs * heads * head_dim, 1.0))?;
		let params = AttentionParams {
			num_heads: heads,
			scale: 1.0 / (head_dim as f32).sqrt(),
			window: None,
		};
		let seconds = time(&gpu, 20, || {
			attention::decode(
				&gpu,
				&q,
				&params,
				&cache,
				&block_tables,
				attention::DECODE_PARTITION_SIZE,
			)
			.map(drop)
		});
		let bytes = (2 * seqs * context * kv_heads * head_dim * 4) as f64;
		println!(
			"| {context} | {:.0} | {:.1} | {:.0} | {:.2} |",
			bytes / 1e6,
			seconds * 1e6,
			bytes / seconds / 1e9,
			bytes / seconds / peak
		);
	}

	// Multi-LoRA at one projection of a 4096-wide model (bf16 weights), 64 rows each with its
	// own request: base alone, base + one adapter for all rows, base + 64 of 1,000 resident
	// adapters (rank 16), in pool pages of 1376 floats (what the decoder picks for Llama-2-7B's
	// widths, 4096 and 11008: a row on 3 pages, the last one part full).
	println!("\n## Multi-LoRA (4096 x 4096 bf16 projection, rank 16, batch 64, pages of 1376)");
	let (dim, rank, batch, resident) = (size(4096, 256), 16usize, size(64, 9), 1000usize);
	let page_len = size(1376, 96);
	let per_adapter = adapter_pages(rank, dim, dim, page_len)
		.ok_or_else(|| anyhow::anyhow!("an adapter of rank {rank} takes more than usize pages"))?;
	let w = host_quant::quantize(Format::Bf16, &random(&mut rng, dim * dim, 0.05), dim, dim)?;
	let weights = gpu.upload(&w)?;
	let x = gpu.upload(&random(&mut rng, batch * dim, 1.0))?;
	let mut y = gpu.zeros::<f32>(batch * dim)?;
	let mut pool = DeviceAdapterPool::new(&gpu, page_len, (per_adapter * resident) as u32)?;
	let a = random(&mut rng, rank * dim, 0.02);
	let b_t = random(&mut rng, rank * dim, 0.02);
	let mut adapters = Vec::with_capacity(resident);
	for _ in 0..resident {
		adapters.push(pool.upload(&gpu, &a, dim, &b_t, dim)?);
	}
	let one: Vec<_> = vec![(0..batch, &adapters[0])];
	let many: Vec<_> = (0..batch).map(|r| (r..r + 1, &adapters[(r * 997) % resident])).collect();
	let mut shrunk = gpu.zeros::<f32>(batch * rank)?;
	let base =
		time(&gpu, 50, || quant::gemv(&gpu, Format::Bf16, &weights, dim, dim, &x, batch, &mut y));
	let mut with = |segments: &[(std::ops::Range<usize>, &PagedAdapter)]| -> anyhow::Result<f64> {
		let plan = DevicePlan::upload(&gpu, &pool, &LoraPlan::new(batch, segments)?)?;
		Ok(time(&gpu, 50, || {
			quant::gemv(&gpu, Format::Bf16, &weights, dim, dim, &x, batch, &mut y)?;
			lora::shrink(&gpu, &pool, &plan, &x, dim, &mut shrunk)?;
			lora::expand(&gpu, &pool, &plan, &shrunk, &mut y, dim)
		}))
	};
	let one_s = with(&one)?;
	let many_s = with(&many)?;
	println!("| mix | µs | throughput vs base alone |");
	println!("|---|---|---|");
	println!("| base alone | {:.1} | 1.00 |", base * 1e6);
	println!("| 1 adapter | {:.1} | {:.2} |", one_s * 1e6, base / one_s);
	println!("| 64 of 1,000 resident adapters | {:.1} | {:.2} |", many_s * 1e6, base / many_s);

	// Adapter upload: a rank-16 q/k/v/o adapter of a 4096-wide model is 4 × 2 × 16 × 4096
	// floats; here one projection pair at a time, as the pool takes them, against one plain
	// page-locked copy of the same bytes.
	println!(
		"\n## Adapter upload (rank 16, 4096 wide, one projection pair = 512 KiB, pages of 1376)"
	);
	let mut upload_pool = DeviceAdapterPool::new(&gpu, page_len, (per_adapter * 8) as u32)?;
	let mut last = None;
	let upload = time(&gpu, 50, || {
		if let Some(adapter) = last.take() {
			upload_pool.release(&adapter)?;
		}
		last = Some(upload_pool.upload(&gpu, &a, dim, &b_t, dim)?);
		Ok(())
	});
	let bytes = ((a.len() + b_t.len()) * 4) as f64;
	let mut pinned = gpu.pinned::<f32>(a.len() + b_t.len())?;
	pinned.as_mut_slice()?.fill(1.0);
	let mut dst = gpu.zeros::<f32>(a.len() + b_t.len())?;
	let plain = time(&gpu, 50, || Ok(gpu.stream().memcpy_htod(&pinned, &mut dst)?));
	println!("| copy | µs | GB/s | share of the plain copy |");
	println!("|---|---|---|---|");
	println!(
		"| pool upload (copy + scatter) | {:.1} | {:.1} | {:.2} |",
		upload * 1e6,
		bytes / upload / 1e9,
		plain / upload
	);
	println!("| plain page-locked copy | {:.1} | {:.1} | 1.00 |", plain * 1e6, bytes / plain / 1e9);
	let big = size(256 << 20, 1 << 20);
	let mut big_pinned = gpu.pinned::<u8>(big)?;
	big_pinned.as_mut_slice()?.fill(1);
	let mut big_dst = gpu.zeros::<u8>(big)?;
	let big_s = time(&gpu, 10, || Ok(gpu.stream().memcpy_htod(&big_pinned, &mut big_dst)?));
	println!(
		"| plain page-locked copy of 256 MiB (the bus) | {:.1} | {:.1} | |",
		big_s * 1e6,
		big as f64 / big_s / 1e9
	);

	// Activation-sparse FFN down projection (8 rows, 14336 → 4096, f32 weights).
	println!("\n## FFN down projection, sparse vs dense (8 rows, 14336 -> 4096)");
	println!("| zero activations | dense µs | sparse µs | speed-up |");
	println!("|---|---|---|---|");
	let (rows, inter, hidden) = (8usize, size(14336, 1000), size(4096, 300));
	let w_t = gpu.upload(&random(&mut rng, inter * hidden, 0.02))?;
	let mut out = gpu.zeros::<f32>(rows * hidden)?;
	for zero_share in [0.0f64, 0.5, 0.9] {
		let h: Vec<f32> =
			(0..rows * inter)
				.map(|_| {
					if rng.random::<f64>() < zero_share {
						0.0
					} else {
						rng.random_range(-1.0..1.0)
					}
				})
				.collect();
		let h = gpu.upload(&h)?;
		let dense = time(&gpu, 20, || sparse::down_dense(&gpu, &h, inter, &w_t, hidden, &mut out));
		let sparse_s = time(&gpu, 20, || {
			sparse::down_sparse(&gpu, &h, inter, &w_t, hidden, 0.0, &mut out).map(drop)
		});
		println!(
			"| {:.0}% | {:.1} | {:.1} | {:.2} |",
			zero_share * 100.0,
			dense * 1e6,
			sparse_s * 1e6,
			dense / sparse_s
		);
	}
	Ok(())
}
