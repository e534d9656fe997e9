//! The adapter pool's page allocator ([`PageAllocator`]) against the one it replaced (a sorted
//! free list with a linear search per released page and a sort per release), side by side in
//! one run: evicting one adapter and uploading another in a 512 MiB pool of 192-float pages
//! (SmolLM2's page length: 699,050 pages; an adapter of rank 8 on q/v is 60 modules of 40
//! pages), with the pool full and half full.
//!
//! `cargo bench -p openledger-kernels --bench page_allocator`

use std::time::Instant;

use openledger_kernels::adapter_pool::PageAllocator;

/// What both allocators do.
trait Pages {
	fn allocate(&mut self, count: usize) -> Option<Vec<u32>>;
	fn release(&mut self, pages: &[u32]);
	fn free_pages(&self) -> usize;
}

impl Pages for PageAllocator {
	fn allocate(&mut self, count: usize) -> Option<Vec<u32>> {
		PageAllocator::allocate(self, count)
	}
	fn release(&mut self, pages: &[u32]) {
		PageAllocator::release(self, pages).expect("allocated pages");
	}
	fn free_pages(&self) -> usize {
		PageAllocator::free_pages(self)
	}
}

/// The allocator before session 8: free pages highest first in a vector.
struct SortedList {
	free: Vec<u32>,
	num_pages: u32,
}

impl Pages for SortedList {
	fn allocate(&mut self, count: usize) -> Option<Vec<u32>> {
		let at = self.free.len().checked_sub(count)?;
		let mut pages = self.free.split_off(at);
		pages.reverse();
		Some(pages)
	}
	fn release(&mut self, pages: &[u32]) {
		let mut seen = std::collections::HashSet::with_capacity(pages.len());
		for &page in pages {
			assert!(page < self.num_pages && !self.free.contains(&page) && seen.insert(page));
		}
		self.free.extend_from_slice(pages);
		self.free.sort_unstable_by(|a, b| b.cmp(a));
	}
	fn free_pages(&self) -> usize {
		self.free.len()
	}
}

const MODULES: usize = 60;
const MODULE_PAGES: usize = 40;

/// Milliseconds to evict one adapter and upload another, in a pool filled with adapters until
/// `leave` pages are free (the mean over 20 evictions spread over the pool).
fn evict_and_upload(pool: &mut impl Pages, leave: usize) -> f64 {
	let adapter = |pool: &mut dyn Pages| -> Vec<Vec<u32>> {
		(0..MODULES).map(|_| pool.allocate(MODULE_PAGES).expect("room")).collect()
	};
	let mut adapters = Vec::new();
	while pool.free_pages() >= leave.max(MODULES * MODULE_PAGES) {
		adapters.push(adapter(pool));
	}
	let runs = 20;
	let start = Instant::now();
	for i in 0..runs {
		let victim = i * adapters.len() / runs;
		for module in &adapters[victim] {
			pool.release(module);
		}
		adapters[victim] = adapter(pool);
	}
	start.elapsed().as_secs_f64() * 1e3 / runs as f64
}

fn main() {
	// `cargo test --benches` runs bench targets without `--bench`: measure only when asked.
	if !std::env::args().any(|a| a == "--bench") {
		return;
	}
	let pages = (512usize << 20) / (192 * 4);
	println!("{pages} pages of 192 floats; evict one rank-8 q/v SmolLM2 adapter and upload one\n");
	println!("| pool | ours ms | sorted free list ms | speed-up |");
	println!("|---|---|---|---|");
	for (label, leave) in [("full", 0), ("half full", pages / 2)] {
		let ours = evict_and_upload(&mut PageAllocator::new(pages as u32), leave);
		let free = (0..pages as u32).rev().collect();
		let theirs = evict_and_upload(&mut SortedList { free, num_pages: pages as u32 }, leave);
		println!("| {label} | {ours:.3} | {theirs:.3} | {:.0}x |", theirs / ours);
	}
}
