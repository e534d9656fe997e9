//! How many threads the CPU paths use, settled once per process.
//!
//! candle-core 0.11.1 asks for its thread count on every CPU f32 matrix product
//! (`utils::get_num_threads`) and, unless `RAYON_NUM_THREADS` is set, works it out each time by
//! reading and parsing `/proc/cpuinfo`. The decoder's attention makes two such products per
//! layer per token, so on the real model that file was read thousands of times per prefill:
//! setting the variable made prefill 1.7x faster (`benches/engine.rs`, docs/BENCHMARKS.md).

/// Sets `RAYON_NUM_THREADS` to candle's own choice (the physical cores, or candle's CPU mask)
/// unless it is already set, so that candle reads its thread count from the environment from
/// then on, and rayon's global pool (the CPU quantized product,
/// `openledger_kernels::cpu_matmul`) uses the same count as candle's products. Returns the
/// count.
///
/// # Safety
/// It sets an environment variable: call it before the process starts any other thread (first
/// thing in `main`), as [`std::env::set_var`] requires.
pub unsafe fn settle_cpu_threads() -> usize {
	if let Some(threads) = std::env::var("RAYON_NUM_THREADS")
		.ok()
		.and_then(|v| v.parse::<usize>().ok())
		.filter(|&n| n > 0)
	{
		return threads;
	}
	let threads = candle_core::utils::get_num_threads();
	std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
	threads
}
