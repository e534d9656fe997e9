//! Multi-LoRA over the paged adapter pool: GPU against [`openledger_kernels::adapter_pool`].
//!
//! The kernels do the CPU reference's arithmetic in its order (explicit fused multiply-adds, the
//! same butterfly), so the comparison is exact: tolerance 0. Rows fit one page or span several
//! (pages of 192, as the decoder cuts SmolLM2's rows; of 40, not a multiple of a warp; of 16,
//! less than one).

use openledger_kernels::{
	adapter_pool::{self, adapter_pages, LoraPlan, PagedAdapter},
	gpu::{
		lora::{self, DeviceAdapterPool, DevicePlan},
		Gpu,
	},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

pub const CHECKS: &[crate::Check] = &[
	("bgmv_and_sgmv_match_the_cpu_bit_for_bit", bgmv_and_sgmv_match_the_cpu_bit_for_bit),
	("released_pages_are_reused_and_a_full_pool_refuses", released_pages_are_reused),
	("plans_uploaded_together_share_one_shrunk_buffer", plans_uploaded_together),
];

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
	(0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Runs one batch on both sides and compares.
#[allow(clippy::too_many_arguments)]
fn run_both(
	gpu: &Gpu,
	device_pool: &DeviceAdapterPool,
	host_pool: &[f32],
	segments: &[(std::ops::Range<usize>, &PagedAdapter)],
	rows: usize,
	in_dim: usize,
	out_dim: usize,
	rng: &mut StdRng,
) -> anyhow::Result<()> {
	let page_len = device_pool.page_len();
	let plan = LoraPlan::new(rows, segments)?;
	let x = random(rng, rows * in_dim);
	let y0 = random(rng, rows * out_dim);
	let mut shrunk = vec![0f32; rows * plan.max_rank];
	adapter_pool::shrink(host_pool, page_len, &plan, &x, in_dim, &mut shrunk)?;
	let mut want = y0.clone();
	adapter_pool::expand(host_pool, page_len, &plan, &shrunk, &mut want, out_dim)?;

	let device_plan = DevicePlan::upload(gpu, device_pool, &plan)?;
	let x_d = gpu.upload(&x)?;
	let mut shrunk_d = gpu.zeros::<f32>(rows * plan.max_rank)?;
	let mut y_d = gpu.upload(&y0)?;
	lora::shrink(gpu, device_pool, &device_plan, &x_d, in_dim, &mut shrunk_d)?;
	lora::expand(gpu, device_pool, &device_plan, &shrunk_d, &mut y_d, out_dim)?;
	let got_shrunk = gpu.download(&shrunk_d)?;
	// Entries past a row's rank are not written on either side (zero on both).
	crate::compare(&format!("shrunk {in_dim}->{out_dim}"), &got_shrunk, &shrunk, 0.0, 0.0)?;
	crate::compare(&format!("y {in_dim}->{out_dim}"), &gpu.download(&y_d)?, &want, 0.0, 0.0)
}

fn bgmv_and_sgmv_match_the_cpu_bit_for_bit(gpu: &Gpu) -> anyhow::Result<()> {
	let mut rng = StdRng::seed_from_u64(21);
	let shapes = [
		((576, 576), 576),
		((576, 192), 192),
		((1536, 576), 192),
		((576, 192), 40),
		((33, 7), 16),
		((33, 7), 33),
		((1, 1), 1),
	];
	for ((in_dim, out_dim), page_len) in shapes {
		let ranks = [1usize, 2, 3, 8, 16, 64, 128, 5];
		let pages = |rank| adapter_pages(rank, in_dim, out_dim, page_len).unwrap();
		let num_pages = (ranks.iter().map(|&r| pages(r)).sum::<usize>() + pages(3)) as u32;
		let mut device_pool = DeviceAdapterPool::new(gpu, page_len, num_pages)?;
		let mut host_pool = vec![0f32; num_pages as usize * page_len];
		let mut adapters = Vec::new();
		for (i, &rank) in ranks.iter().enumerate() {
			let a = random(&mut rng, rank * in_dim);
			let b_t = random(&mut rng, rank * out_dim);
			let adapter = device_pool.upload(gpu, &a, in_dim, &b_t, out_dim)?;
			adapter_pool::write_rows(&mut host_pool, page_len, &adapter, &a, &b_t)?;
			// A hole in the pool, so later adapters' pages are scattered.
			if i == 2 {
				let hole = device_pool.upload(gpu, &a, in_dim, &b_t, out_dim)?;
				adapters.push(adapter);
				device_pool.release(&hole)?;
				continue;
			}
			adapters.push(adapter);
		}
		// Decode (BGMV): one row per adapter, with base rows between.
		let decode: Vec<_> = (0..ranks.len()).map(|i| (2 * i..2 * i + 1, &adapters[i])).collect();
		run_both(
			gpu,
			&device_pool,
			&host_pool,
			&decode,
			2 * ranks.len(),
			in_dim,
			out_dim,
			&mut rng,
		)?;
		// Prefill (SGMV): segments of 1, 15, 16, 17 and 40 rows.
		let lengths = [1usize, 15, 16, 17, 40];
		let mut segments = Vec::new();
		let mut start = 0;
		for (i, &len) in lengths.iter().enumerate() {
			segments.push((start..start + len, &adapters[(i * 3) % adapters.len()]));
			start += len;
		}
		run_both(gpu, &device_pool, &host_pool, &segments, start + 3, in_dim, out_dim, &mut rng)?;
	}
	Ok(())
}

fn released_pages_are_reused(gpu: &Gpu) -> anyhow::Result<()> {
	let mut rng = StdRng::seed_from_u64(4);
	// Pages of 32: a row of A takes 2, a row of sBᵀ 2 (the second half full).
	let (in_dim, out_dim, rank) = (64, 48, 8);
	let mut device_pool = DeviceAdapterPool::new(gpu, 32, 64)?;
	let mut host_pool = vec![0f32; 64 * 32];
	let (a1, b1) = (random(&mut rng, rank * in_dim), random(&mut rng, rank * out_dim));
	let first = device_pool.upload(gpu, &a1, in_dim, &b1, out_dim)?;
	let second = device_pool.upload(gpu, &a1, in_dim, &b1, out_dim)?;
	anyhow::ensure!(device_pool.free_pages() == 0, "two rank-8 adapters fill 64 pages");
	let refused = device_pool.upload(gpu, &a1, in_dim, &b1, out_dim);
	anyhow::ensure!(refused.is_err(), "a full pool refuses an upload");
	anyhow::ensure!(device_pool.free_pages() == 0, "and takes no pages doing so");
	device_pool.release(&first)?;
	let (a2, b2) = (random(&mut rng, rank * in_dim), random(&mut rng, rank * out_dim));
	let third = device_pool.upload(gpu, &a2, in_dim, &b2, out_dim)?;
	anyhow::ensure!(third.pages() == first.pages(), "the released pages are taken again");
	adapter_pool::write_rows(&mut host_pool, 32, &second, &a1, &b1)?;
	adapter_pool::write_rows(&mut host_pool, 32, &third, &a2, &b2)?;
	let segments = [(0..3, &third), (3..5, &second)];
	run_both(gpu, &device_pool, &host_pool, &segments, 5, in_dim, out_dim, &mut rng)
}

/// A step's plans go over in one copy ([`DevicePlan::upload_all`]) and share one shrunk buffer
/// sized for the largest, filled with NaN: each plan's result still equals the CPU's, so no
/// kernel reads an entry of the shared buffer that its own shrink did not write.
fn plans_uploaded_together(gpu: &Gpu) -> anyhow::Result<()> {
	let mut rng = StdRng::seed_from_u64(8);
	let (in_dim, out_dim, rows) = (96, 80, 6);
	let ranks = [4usize, 16, 1];
	let num_pages =
		ranks.iter().map(|&r| adapter_pages(r, in_dim, out_dim, 96).unwrap()).sum::<usize>();
	let num_pages = num_pages as u32;
	let mut device_pool = DeviceAdapterPool::new(gpu, 96, num_pages)?;
	let mut host_pool = vec![0f32; num_pages as usize * 96];
	let mut adapters = Vec::new();
	for &rank in &ranks {
		let (a, b_t) = (random(&mut rng, rank * in_dim), random(&mut rng, rank * out_dim));
		let adapter = device_pool.upload(gpu, &a, in_dim, &b_t, out_dim)?;
		adapter_pool::write_rows(&mut host_pool, 96, &adapter, &a, &b_t)?;
		adapters.push(adapter);
	}
	let plans = [
		LoraPlan::new(rows, &[(0..1, &adapters[0]), (3..6, &adapters[1])])?,
		LoraPlan::new(rows, &[(1..2, &adapters[2])])?,
		LoraPlan::new(rows, &[])?,
		LoraPlan::new(rows, &[(0..6, &adapters[2])])?,
	];
	let device_plans = DevicePlan::upload_all(gpu, &device_pool, &plans)?;
	anyhow::ensure!(device_plans.len() == plans.len(), "one device plan per plan");
	let largest = plans.iter().map(|p| p.rows * p.max_rank).max().unwrap_or(0);
	let mut shrunk_d = gpu.upload(&vec![f32::NAN; largest])?;
	let x = random(&mut rng, rows * in_dim);
	let x_d = gpu.upload(&x)?;
	for (i, (plan, device_plan)) in plans.iter().zip(&device_plans).enumerate() {
		let y0 = random(&mut rng, rows * out_dim);
		let mut shrunk = vec![0f32; rows * plan.max_rank];
		adapter_pool::shrink(&host_pool, 96, plan, &x, in_dim, &mut shrunk)?;
		let mut want = y0.clone();
		adapter_pool::expand(&host_pool, 96, plan, &shrunk, &mut want, out_dim)?;
		let mut y_d = gpu.upload(&y0)?;
		lora::shrink(gpu, &device_pool, device_plan, &x_d, in_dim, &mut shrunk_d)?;
		lora::expand(gpu, &device_pool, device_plan, &shrunk_d, &mut y_d, out_dim)?;
		crate::compare(
			&format!("plan {i} of a shared upload"),
			&gpu.download(&y_d)?,
			&want,
			0.0,
			0.0,
		)?;
	}
	// A shrunk buffer smaller than a plan needs is refused, not overrun.
	let mut small = gpu.zeros::<f32>(largest - 1)?;
	let refused = lora::shrink(gpu, &device_pool, &device_plans[0], &x_d, in_dim, &mut small);
	anyhow::ensure!(refused.is_err(), "a shrunk buffer too small for the plan was accepted");
	// Rows one value wider than A's take two pages of 96, not the plan's one: refused.
	let wide = gpu.upload(&vec![0f32; rows * (in_dim + 1)])?;
	let refused =
		lora::shrink(gpu, &device_pool, &device_plans[0], &wide, in_dim + 1, &mut shrunk_d);
	anyhow::ensure!(refused.is_err(), "inputs wider than the plan's pages were accepted");
	// Rows one value narrower take the plan's one page but are not its rows of A: refused.
	let narrow = gpu.upload(&vec![0f32; rows * (in_dim - 1)])?;
	let refused =
		lora::shrink(gpu, &device_pool, &device_plans[0], &narrow, in_dim - 1, &mut shrunk_d);
	anyhow::ensure!(refused.is_err(), "inputs narrower than the plan's rows were accepted");
	let mut y_narrow = gpu.upload(&vec![0f32; rows * (out_dim - 1)])?;
	let refused =
		lora::expand(gpu, &device_pool, &device_plans[0], &shrunk_d, &mut y_narrow, out_dim - 1);
	anyhow::ensure!(refused.is_err(), "outputs narrower than the plan's rows were accepted");
	Ok(())
}
