//! The CUDA emulator's own checks (kernels/emulator/selftest.cu), run only when the device is the
//! emulator: its shuffles and barriers give what a GPU gives, and code that is wrong on a GPU —
//! a missing barrier, a shuffle after lanes left, a misaligned vector load, a read or write
//! past the end of a buffer, a launch past `__launch_bounds__` or the shared-memory limit —
//! fails on it rather than passing by luck.

use anyhow::{ensure, Result};
use openledger_kernels::gpu::{Gpu, LaunchConfig, PushKernelArg, Source};

/// The self-test kernels (compiled into the emulator, and by NVRTC for their PTX).
const SELFTEST: Source =
	Source { name: "selftest", code: include_str!("../../emulator/selftest.cu") };

pub const CHECKS: &[crate::Check] = &[
	("shuffles", shuffles),
	("a_missing_barrier_shows", missing_barrier),
	("static_shared_memory_is_poisoned_for_every_block", static_shared),
	("a_shuffle_after_lanes_left_fails", shuffle_after_exit),
	("a_misaligned_vector_load_fails", misaligned_load),
	("reads_and_writes_past_a_buffer_fail", out_of_bounds),
	("launch_limits_hold", launch_limits),
];

fn config(blocks: u32, threads: u32, shared: u32) -> LaunchConfig {
	LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: shared }
}

fn shuffles(gpu: &Gpu) -> Result<()> {
	let (blocks, threads) = (3u32, 96u32);
	let n = (blocks * threads) as usize;
	let mut sums = gpu.zeros::<f32>(n)?;
	let mut scans = gpu.zeros::<u32>(n)?;
	let f = gpu.function(&SELFTEST, "selftest_shuffles")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch.arg(&mut sums).arg(&mut scans);
	// SAFETY: selftest_shuffles(float*, unsigned*), one value per thread of the grid.
	unsafe { launch.launch(config(blocks, threads, 0)) }?;
	let sums = gpu.download(&sums)?;
	let scans = gpu.download(&scans)?;
	for t in 0..n {
		let lane = (t % 32) as u32;
		ensure!(sums[t] == 528.0, "thread {t}: warp sum {} (want 528)", sums[t]);
		let want = (lane + 1) * (lane + 2) / 2;
		ensure!(scans[t] == want, "thread {t}: prefix sum {} (want {want})", scans[t]);
	}
	Ok(())
}

fn exchange(gpu: &Gpu, sync: i32) -> Result<Vec<f32>> {
	let threads = 64u32;
	let mut out = gpu.zeros::<f32>(threads as usize)?;
	let f = gpu.function(&SELFTEST, "selftest_exchange")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch.arg(&mut out).arg(&sync);
	// SAFETY: selftest_exchange(float*, int), one float per thread, one float of shared memory
	// per thread.
	unsafe { launch.launch(config(1, threads, threads * 4)) }?;
	Ok(gpu.download(&out)?)
}

fn missing_barrier(gpu: &Gpu) -> Result<()> {
	let synced = exchange(gpu, 1)?;
	for (t, v) in synced.iter().enumerate() {
		ensure!(*v == (63 - t) as f32, "with the barrier, thread {t} read {v}");
	}
	// Whichever end the emulator starts from (OPENLEDGER_CUDA_EMULATOR_ORDER), the first thread
	// to run reads a cell its partner has not written yet.
	let racy = exchange(gpu, 0)?;
	ensure!(racy.iter().any(|v| v.is_nan()), "without the barrier no thread read poison: {racy:?}");
	Ok(())
}

fn static_shared(gpu: &Gpu) -> Result<()> {
	let f = gpu.function(&SELFTEST, "selftest_static_shared")?;
	for launch_number in 0..2 {
		let mut out = gpu.zeros::<f32>(8)?;
		let mut launch = gpu.stream().launch_builder(&f);
		launch.arg(&mut out);
		// SAFETY: selftest_static_shared(float*), one float per block, 8 blocks of one thread.
		unsafe { launch.launch(config(8, 1, 0)) }?;
		let out = gpu.download(&out)?;
		ensure!(
			out.iter().all(|v| v.is_nan()),
			"launch {launch_number}: blocks read {out:?} from unwritten shared memory, not poison"
		);
	}
	Ok(())
}

fn shuffle_after_exit(gpu: &Gpu) -> Result<()> {
	let mut out = gpu.zeros::<f32>(32)?;
	let f = gpu.function(&SELFTEST, "selftest_shuffle_after_exit")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch.arg(&mut out);
	// SAFETY: selftest_shuffle_after_exit(float*), 32 floats.
	let result = unsafe { launch.launch(config(1, 32, 0)) };
	ensure!(result.is_err(), "a shuffle waiting for lanes that left was launched without error");
	Ok(())
}

fn load4(gpu: &Gpu, offset: i32) -> Result<f32> {
	let x = gpu.upload(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])?;
	let mut out = gpu.zeros::<f32>(1)?;
	let f = gpu.function(&SELFTEST, "selftest_load4")?;
	let mut launch = gpu.stream().launch_builder(&f);
	launch.arg(&x).arg(&offset).arg(&mut out);
	// SAFETY: selftest_load4(const float*, int, float*), 8 floats in, offset + 4 <= 8.
	unsafe { launch.launch(config(1, 1, 0)) }?;
	Ok(gpu.download(&out)?[0])
}

fn misaligned_load(gpu: &Gpu) -> Result<()> {
	ensure!(load4(gpu, 4)? == 26.0, "an aligned float4 load summed wrong");
	ensure!(load4(gpu, 1).is_err(), "a float4 load 4 bytes off its alignment did not fail");
	Ok(())
}

/// Launches `selftest_touch` on a fresh buffer of `len` floats (all 2.0): thread 0 of 32 reads
/// or writes element `index`. The value read, or the launch's error.
fn touch(gpu: &Gpu, len: usize, index: i64, write: bool) -> Result<f32> {
	let mut x = gpu.upload(&vec![2.0f32; len])?;
	let mut out = gpu.zeros::<f32>(1)?;
	let f = gpu.function(&SELFTEST, "selftest_touch")?;
	let mut launch = gpu.stream().launch_builder(&f);
	let write = i32::from(write);
	launch.arg(&mut x).arg(&index).arg(&write).arg(&mut out);
	// SAFETY: selftest_touch(float*, long long, int, float*); the index may lie outside x on
	// purpose: on the emulator that fails the launch instead of touching other memory.
	unsafe { launch.launch(config(1, 32, 0)) }?;
	Ok(gpu.download(&out)?[0])
}

fn out_of_bounds(gpu: &Gpu) -> Result<()> {
	// Lengths whose ends fall at different places of their last 16 bytes and of a page.
	for len in [1usize, 3, 4, 1000, 1024, 4096] {
		let last = len as i64 - 1;
		ensure!(touch(gpu, len, last, false)? == 2.0, "{len} floats: the last one read wrong");
		touch(gpu, len, last, true)?;
		ensure!(touch(gpu, len, 0, false)? == 2.0, "{len} floats: the first one read wrong");
		// The first float past the end that is not in the allocation's 16-byte rounding, and one
		// 2 KiB past that (inside the guard page that follows every allocation).
		let past = len.div_ceil(4) as i64 * 4;
		for index in [past, past + 512] {
			for write in [false, true] {
				let result = touch(gpu, len, index, write);
				ensure!(
					result.is_err(),
					"{len} floats: {} element {index} did not fail: {result:?}",
					if write { "writing" } else { "reading" }
				);
			}
		}
	}
	// A buffer of whole pages starts right after the guard page that opens its mapping: the
	// float before it is out of bounds too.
	for write in [false, true] {
		let result = touch(gpu, 1024, -1, write);
		ensure!(result.is_err(), "element -1 of a page of floats did not fail: {result:?}");
	}
	// The emulator goes on after a failed launch.
	ensure!(touch(gpu, 8, 7, false)? == 2.0, "a launch after the faults read wrong");
	Ok(())
}

fn launch_limits(gpu: &Gpu) -> Result<()> {
	let mut out = gpu.zeros::<f32>(128)?;
	let f = gpu.function(&SELFTEST, "selftest_bounded")?;
	for (threads, shared, ok) in
		[(64, 0, true), (128, 0, false), (64, 48 * 1024, true), (64, 49 * 1024, false)]
	{
		let mut launch = gpu.stream().launch_builder(&f);
		launch.arg(&mut out);
		// SAFETY: selftest_bounded(float*), 128 floats, at most 128 threads.
		let result = unsafe { launch.launch(config(1, threads, shared)) };
		ensure!(
			result.is_ok() == ok,
			"{threads} threads with {shared} bytes of shared memory: {result:?}, expected {}",
			if ok { "a launch" } else { "a refusal" }
		);
	}
	Ok(())
}
