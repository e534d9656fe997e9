//! How the process's memory allocator treats large blocks, settled once per process.
//!
//! glibc's malloc serves a block above its mmap threshold (128 KiB at first, raised up to
//! 32 MiB as such blocks are freed) with a fresh `mmap` and unmaps it when freed, and gives
//! memory at the top of the heap back to the kernel past its trim threshold. The CPU paths
//! allocate large temporaries at every step (a batch of embeddings' attention scores and
//! activations, megabytes each), which were then page-faulted in, every page zeroed by the
//! kernel, batch after batch (perf: `clear_page_erms` and page faults, about 20% of the
//! samples). With this and embedding batches bounded to 16 MiB temporaries, `embed` on 256
//! texts took 6.9 s instead of 12.2 s (docs/BENCHMARKS.md).

/// Keeps blocks of up to 32 MiB (the most glibc allows) in the heap and freed memory in the
/// process for the next allocation, as a caching allocator does (the process's footprint stays
/// at its peak). Returns whether the C library took the settings: glibc on Linux does; nothing
/// is done elsewhere.
pub fn keep_freed_memory() -> bool {
	#[cfg(all(target_os = "linux", target_env = "gnu"))]
	{
		// SAFETY: `mallopt` only sets malloc's parameters, under malloc's own lock.
		unsafe {
			libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
				&& libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
		}
	}
	#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
	{
		false
	}
}

#[cfg(test)]
mod tests {
	#[test]
	#[cfg(all(target_os = "linux", target_env = "gnu"))]
	fn glibc_takes_the_settings() {
		assert!(super::keep_freed_memory());
	}
}
