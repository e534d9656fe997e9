//! Multi-LoRA over a paged adapter pool (S-LoRA's unified paging, Punica's SGMV/BGMV).
//!
//! Thousands of adapters stay resident without one allocation each: one pool of fixed-size
//! pages (`[num_pages, page_len]` `f32`) holds every resident adapter's rows, one row per page —
//! the `rank` rows of `A` (`[rank, in]`) and the `rank` rows of `s·Bᵀ` (`[rank, out]`) — so
//! loading and evicting an adapter is taking and giving back pages, never a fresh allocation
//! or a compaction. `page_len` is at least the longest row a projection has.
//!
//! A batch is described by a [`LoraPlan`]: its segments (rows that share an adapter) cut into
//! tiles of at most [`TILE_ROWS`] rows. The shrink and expand here are the CPU reference of the
//! CUDA kernels in `kernels/cuda/lora.cu`, with the same arithmetic in the same order (fused
//! multiply-adds, a 32-lane butterfly for the shrink's dot products), so the two agree to the
//! bit. A decode batch whose rows use different adapters is the BGMV case (tiles of one row);
//! a prefill segment is the SGMV case (tiles of up to 16 rows that read each adapter row once).

use std::ops::Range;

use crate::ShapeError;

/// The most rows of one segment that one tile (one thread block on the GPU) handles.
pub const TILE_ROWS: usize = 16;

/// Lanes of the shrink's dot products (a CUDA warp).
const LANES: usize = 32;

/// Hands out the pages of a pool: all-or-nothing, lowest free pages first.
#[derive(Clone, Debug)]
pub struct PageAllocator {
	/// Free pages, highest first, so that `pop` gives the lowest.
	free: Vec<u32>,
	num_pages: u32,
}

impl PageAllocator {
	/// A pool of `num_pages` pages, all free.
	pub fn new(num_pages: u32) -> Self {
		Self { free: (0..num_pages).rev().collect(), num_pages }
	}

	/// Pages in the pool.
	pub fn num_pages(&self) -> u32 {
		self.num_pages
	}

	/// Pages not handed out.
	pub fn free_pages(&self) -> usize {
		self.free.len()
	}

	/// `count` pages, or `None` (taking nothing) when fewer are free.
	pub fn allocate(&mut self, count: usize) -> Option<Vec<u32>> {
		if count > self.free.len() {
			return None;
		}
		let at = self.free.len() - count;
		let mut pages = self.free.split_off(at);
		pages.reverse();
		Some(pages)
	}

	/// Gives `pages` back. A page that is out of the pool or already free is refused, and then
	/// nothing is given back.
	pub fn release(&mut self, pages: &[u32]) -> Result<(), ShapeError> {
		let mut seen = std::collections::HashSet::with_capacity(pages.len());
		for &page in pages {
			if page >= self.num_pages || self.free.contains(&page) || !seen.insert(page) {
				return Err(ShapeError(format!("page {page} is not an allocated page")));
			}
		}
		self.free.extend_from_slice(pages);
		self.free.sort_unstable_by(|a, b| b.cmp(a));
		Ok(())
	}
}

/// One adapter's pair for one projection, resident in a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagedAdapter {
	/// The rank.
	pub rank: u32,
	/// `2·rank` pages: `A`'s rows, then `s·Bᵀ`'s rows.
	pub pages: Vec<u32>,
}

impl PagedAdapter {
	/// The pages of `A`'s rows.
	pub fn a_pages(&self) -> &[u32] {
		&self.pages[..self.rank as usize]
	}

	/// The pages of `s·Bᵀ`'s rows.
	pub fn b_pages(&self) -> &[u32] {
		&self.pages[self.rank as usize..]
	}
}

/// Writes an adapter's rows into the pages it was given: `a` is `[rank, in_dim]`, `b_t` is
/// `[rank, out_dim]`. (On the GPU: one copy of `a` and `b_t` to the device, then a scatter.)
pub fn write_rows(
	pool: &mut [f32],
	page_len: usize,
	adapter: &PagedAdapter,
	a: &[f32],
	in_dim: usize,
	b_t: &[f32],
	out_dim: usize,
) -> Result<(), ShapeError> {
	let rank = adapter.rank as usize;
	check_pool(pool, page_len, &adapter.pages)?;
	if adapter.pages.len() != 2 * rank
		|| a.len() != rank * in_dim
		|| b_t.len() != rank * out_dim
		|| in_dim > page_len
		|| out_dim > page_len
	{
		return Err(ShapeError(format!(
			"an adapter of rank {rank} on {} pages of {page_len}: A has {} values for {in_dim} \
			 in, sBᵀ {} for {out_dim} out",
			adapter.pages.len(),
			a.len(),
			b_t.len()
		)));
	}
	for (j, &page) in adapter.a_pages().iter().enumerate() {
		let at = page as usize * page_len;
		pool[at..at + in_dim].copy_from_slice(&a[j * in_dim..(j + 1) * in_dim]);
	}
	for (j, &page) in adapter.b_pages().iter().enumerate() {
		let at = page as usize * page_len;
		pool[at..at + out_dim].copy_from_slice(&b_t[j * out_dim..(j + 1) * out_dim]);
	}
	Ok(())
}

/// A batch's adapted rows, cut into tiles for the kernels. Rows in no segment are left alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoraPlan {
	/// Each tile's first row.
	pub tile_row_start: Vec<u32>,
	/// Each tile's row count (1 to [`TILE_ROWS`]).
	pub tile_rows: Vec<u32>,
	/// Each tile's adapter rank.
	pub tile_rank: Vec<u32>,
	/// Where each tile's adapter pages start in [`Self::pages`].
	pub tile_pages: Vec<u32>,
	/// The adapters' pages, `2·rank` per segment.
	pub pages: Vec<u32>,
	/// The largest rank: the row stride of the shrunk buffer.
	pub max_rank: usize,
	/// The batch's row count.
	pub rows: usize,
}

impl LoraPlan {
	/// Plans `segments` (rows that share an adapter) of a batch of `rows` rows. Segments must
	/// not overlap.
	pub fn new(
		rows: usize,
		segments: &[(Range<usize>, &PagedAdapter)],
	) -> Result<Self, ShapeError> {
		let mut plan = Self { rows, ..Self::default() };
		let mut covered = vec![false; rows];
		for (range, adapter) in segments {
			if range.end > rows
				|| adapter.rank == 0
				|| adapter.pages.len() != 2 * adapter.rank as usize
			{
				return Err(ShapeError(format!(
					"a segment of rows {range:?} (of {rows}) with rank {} on {} pages",
					adapter.rank,
					adapter.pages.len()
				)));
			}
			if covered[range.clone()].iter().any(|&c| c) {
				return Err(ShapeError(format!("segments overlap at rows {range:?}")));
			}
			covered[range.clone()].iter_mut().for_each(|c| *c = true);
			let offset = u32::try_from(plan.pages.len())
				.map_err(|_| ShapeError("more than 2³² pages in one plan".into()))?;
			plan.pages.extend_from_slice(&adapter.pages);
			plan.max_rank = plan.max_rank.max(adapter.rank as usize);
			for start in range.clone().step_by(TILE_ROWS) {
				plan.tile_row_start.push(start as u32);
				plan.tile_rows.push((range.end - start).min(TILE_ROWS) as u32);
				plan.tile_rank.push(adapter.rank);
				plan.tile_pages.push(offset);
			}
		}
		Ok(plan)
	}

	/// Checks what the kernels rely on, for a plan that may have been put together by hand:
	/// every tile lies in the batch, has 1 to [`TILE_ROWS`] rows and a rank of 1 to `max_rank`,
	/// and its pages exist in [`Self::pages`] and in a pool of `num_pages`.
	pub fn validate(&self, num_pages: usize) -> Result<(), ShapeError> {
		let tiles = self.num_tiles();
		if [self.tile_rows.len(), self.tile_rank.len(), self.tile_pages.len()] != [tiles; 3] {
			return Err(ShapeError("tile arrays of different lengths".into()));
		}
		for t in 0..tiles {
			let (start, rows, rank) = (
				self.tile_row_start[t] as usize,
				self.tile_rows[t] as usize,
				self.tile_rank[t] as usize,
			);
			let pages = self.tile_pages[t] as usize;
			if rows == 0
				|| rows > TILE_ROWS
				|| start + rows > self.rows
				|| rank == 0 || rank > self.max_rank
				|| pages + 2 * rank > self.pages.len()
			{
				return Err(ShapeError(format!(
					"tile {t}: rows {start}..{} of {}, rank {rank} of at most {}, pages from 					 {pages} of {}",
					start + rows,
					self.rows,
					self.max_rank,
					self.pages.len()
				)));
			}
		}
		match self.pages.iter().find(|&&p| p as usize >= num_pages) {
			Some(page) => Err(ShapeError(format!("page {page} of a pool of {num_pages}"))),
			None => Ok(()),
		}
	}

	/// Tiles in the plan.
	pub fn num_tiles(&self) -> usize {
		self.tile_row_start.len()
	}

	fn tile(&self, t: usize) -> (usize, usize, usize, &[u32]) {
		let start = self.tile_row_start[t] as usize;
		let rank = self.tile_rank[t] as usize;
		let offset = self.tile_pages[t] as usize;
		(start, self.tile_rows[t] as usize, rank, &self.pages[offset..offset + 2 * rank])
	}
}

fn check_pool(pool: &[f32], page_len: usize, pages: &[u32]) -> Result<(), ShapeError> {
	if page_len == 0 || !pool.len().is_multiple_of(page_len) {
		return Err(ShapeError(format!("a pool of {} values in pages of {page_len}", pool.len())));
	}
	let num_pages = pool.len() / page_len;
	match pages.iter().find(|&&p| p as usize >= num_pages) {
		Some(page) => Err(ShapeError(format!("page {page} of a pool of {num_pages}"))),
		None => Ok(()),
	}
}

/// Checks a shrink or expand call: the pool is whole pages, the plan fits it, the activation
/// buffer (`x` or `y`: its name, length and row width) has the plan's rows of at most a page,
/// and the shrunk buffer has the plan's rows of `max_rank`.
fn check_call(
	pool: &[f32],
	page_len: usize,
	plan: &LoraPlan,
	(what, len, width): (&str, usize, usize),
	shrunk_len: usize,
) -> Result<(), ShapeError> {
	check_pool(pool, page_len, &[])?;
	plan.validate(pool.len() / page_len)?;
	if width == 0 || width > page_len || len != plan.rows * width {
		return Err(ShapeError(format!(
			"{what} has {len} values for {} rows of {width} (pages of {page_len})",
			plan.rows
		)));
	}
	if shrunk_len != plan.rows * plan.max_rank {
		return Err(ShapeError(format!(
			"shrunk has {shrunk_len} values for {} rows of rank {}",
			plan.rows, plan.max_rank
		)));
	}
	Ok(())
}

/// The shrink: `shrunk[r, j] = x[r] · A_j` for every planned row `r` and rank `j` of its
/// adapter (`shrunk` is `[rows, plan.max_rank]`; entries past a row's rank are left alone).
///
/// Order, as the GPU's warp does it: lane `l` of 32 accumulates `c = l, l+32, …` with fused
/// multiply-adds, then a butterfly adds lanes `l` and `l ^ 16`, `l ^ 8`, … `l ^ 1`.
pub fn shrink(
	pool: &[f32],
	page_len: usize,
	plan: &LoraPlan,
	x: &[f32],
	in_dim: usize,
	shrunk: &mut [f32],
) -> Result<(), ShapeError> {
	check_call(pool, page_len, plan, ("x", x.len(), in_dim), shrunk.len())?;
	for t in 0..plan.num_tiles() {
		let (start, rows, rank, pages) = plan.tile(t);
		for (j, &page) in pages[..rank].iter().enumerate() {
			let a = &pool[page as usize * page_len..][..in_dim];
			for r in start..start + rows {
				let x_row = &x[r * in_dim..(r + 1) * in_dim];
				let mut lanes = [0f32; LANES];
				for (c, (&xv, &av)) in x_row.iter().zip(a).enumerate() {
					lanes[c % LANES] = xv.mul_add(av, lanes[c % LANES]);
				}
				shrunk[r * plan.max_rank + j] = butterfly(lanes);
			}
		}
	}
	Ok(())
}

/// A warp's `__shfl_xor_sync` reduction: after it every lane holds the same sum, in an order
/// that pairs lane `l` with `l ^ offset` for offsets 16, 8, 4, 2, 1.
fn butterfly(mut lanes: [f32; LANES]) -> f32 {
	let mut offset = LANES / 2;
	while offset > 0 {
		let before = lanes;
		for (l, lane) in lanes.iter_mut().enumerate() {
			*lane = before[l] + before[l ^ offset];
		}
		offset /= 2;
	}
	lanes[0]
}

/// The expand: `y[r] += Σ_j shrunk[r, j] · (s·Bᵀ)_j` for every planned row, the sum over `j`
/// in rank order with fused multiply-adds into a zeroed accumulator, then one add into `y`.
pub fn expand(
	pool: &[f32],
	page_len: usize,
	plan: &LoraPlan,
	shrunk: &[f32],
	y: &mut [f32],
	out_dim: usize,
) -> Result<(), ShapeError> {
	check_call(pool, page_len, plan, ("y", y.len(), out_dim), shrunk.len())?;
	for t in 0..plan.num_tiles() {
		let (start, rows, rank, pages) = plan.tile(t);
		for r in start..start + rows {
			let s = &shrunk[r * plan.max_rank..][..rank];
			for o in 0..out_dim {
				let mut acc = 0f32;
				for (j, &page) in pages[rank..].iter().enumerate() {
					acc = s[j].mul_add(pool[page as usize * page_len + o], acc);
				}
				y[r * out_dim + o] += acc;
			}
		}
	}
	Ok(())
}

#[cfg(test)]
mod tests {
	use rand::{rngs::StdRng, Rng, SeedableRng};

	use super::*;
	use crate::lora::{sgmv, LoraPair, Segment};

	fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
		(0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
	}

	#[test]
	fn allocator_is_all_or_nothing_and_refuses_bad_releases() {
		let mut pages = PageAllocator::new(5);
		let a = pages.allocate(3).unwrap();
		assert_eq!(a, vec![0, 1, 2]);
		assert!(pages.allocate(3).is_none(), "only two are free");
		assert_eq!(pages.free_pages(), 2);
		assert!(pages.release(&[3]).is_err(), "page 3 is free");
		assert!(pages.release(&[0, 0]).is_err(), "twice in one release");
		assert!(pages.release(&[7]).is_err(), "out of the pool");
		assert_eq!(pages.free_pages(), 2, "a refused release gives nothing back");
		pages.release(&[1]).unwrap();
		assert_eq!(pages.allocate(2).unwrap(), vec![1, 3], "lowest free pages first");
	}

	/// Adapters written into scattered pages of a pool give what the contiguous kernel gives,
	/// within float rounding (the two sum in different orders), for every row.
	#[test]
	fn paged_matches_the_contiguous_kernel_over_ranks_and_tiles() {
		let mut rng = StdRng::seed_from_u64(11);
		for &(in_dim, out_dim) in &[(1, 1), (33, 7), (576, 192), (100, 300)] {
			let page_len = in_dim.max(out_dim) + 3;
			let ranks = [1usize, 8, 3, 128, 16];
			let mut allocator = PageAllocator::new(2 * ranks.iter().sum::<usize>() as u32 + 10);
			// Take and give back some pages first so the adapters' pages are not in order.
			let hole = allocator.allocate(10).unwrap();
			let mut pool = vec![f32::NAN; allocator.num_pages() as usize * page_len];
			let mut adapters = Vec::new();
			for (i, &rank) in ranks.iter().enumerate() {
				let a = random(&mut rng, rank * in_dim);
				let b_t = random(&mut rng, rank * out_dim);
				let pages = allocator.allocate(2 * rank).unwrap();
				let adapter = PagedAdapter { rank: rank as u32, pages };
				write_rows(&mut pool, page_len, &adapter, &a, in_dim, &b_t, out_dim).unwrap();
				adapters.push((a, b_t, adapter));
				if i == 1 {
					allocator.release(&hole).unwrap();
				}
			}
			// Segments of 1 row (decode), 17 and 40 rows (more than one tile), a base row.
			let lengths = [1usize, 17, 1, 40, 2];
			let rows = lengths.iter().sum::<usize>() + 1;
			let mut segments = Vec::new();
			let mut start = 1;
			for (i, &len) in lengths.iter().enumerate() {
				segments.push((start..start + len, i));
				start += len;
			}
			let x = random(&mut rng, rows * in_dim);
			let y0 = random(&mut rng, rows * out_dim);
			let plan_segments: Vec<_> =
				segments.iter().map(|(r, i)| (r.clone(), &adapters[*i].2)).collect();
			let plan = LoraPlan::new(rows, &plan_segments).unwrap();
			assert_eq!(plan.num_tiles(), 1 + 2 + 1 + 3 + 1);
			let mut shrunk = vec![0f32; rows * plan.max_rank];
			shrink(&pool, page_len, &plan, &x, in_dim, &mut shrunk).unwrap();
			let mut y = y0.clone();
			expand(&pool, page_len, &plan, &shrunk, &mut y, out_dim).unwrap();

			let contiguous: Vec<_> = segments
				.iter()
				.map(|(r, i)| {
					let (a, b_t, adapter) = &adapters[*i];
					let pair = LoraPair { a, b_t, rank: adapter.rank as usize };
					Segment { rows: r.clone(), pair }
				})
				.collect();
			let mut want = y0.clone();
			sgmv(&x, in_dim, &mut want, out_dim, &contiguous).unwrap();
			assert_eq!(y[..out_dim], y0[..out_dim], "the base row is untouched");
			for (k, (g, w)) in y.iter().zip(&want).enumerate() {
				let bound = 1e-5 * (in_dim * 128) as f32;
				assert!((g - w).abs() <= bound, "{in_dim}x{out_dim} value {k}: {g} vs {w}");
			}
		}
	}

	#[test]
	fn a_row_gets_the_same_bits_alone_or_in_a_tile() {
		let mut rng = StdRng::seed_from_u64(5);
		let (in_dim, out_dim, page_len, rank) = (70, 50, 70, 8);
		let mut allocator = PageAllocator::new(16);
		let adapter = PagedAdapter { rank, pages: allocator.allocate(16).unwrap() };
		let mut pool = vec![0f32; 16 * page_len];
		let (a, b_t) = (random(&mut rng, 8 * in_dim), random(&mut rng, 8 * out_dim));
		write_rows(&mut pool, page_len, &adapter, &a, in_dim, &b_t, out_dim).unwrap();
		let rows = 20;
		let x = random(&mut rng, rows * in_dim);
		let run = |x: &[f32], rows: usize| {
			let plan = LoraPlan::new(rows, &[(0..rows, &adapter)]).unwrap();
			let mut shrunk = vec![0f32; rows * 8];
			shrink(&pool, page_len, &plan, x, in_dim, &mut shrunk).unwrap();
			let mut y = vec![0f32; rows * out_dim];
			expand(&pool, page_len, &plan, &shrunk, &mut y, out_dim).unwrap();
			y
		};
		let batched = run(&x, rows);
		for r in [0, 15, 16, 19] {
			let alone = run(&x[r * in_dim..(r + 1) * in_dim], 1);
			assert_eq!(alone[..], batched[r * out_dim..(r + 1) * out_dim], "row {r}");
		}
	}

	#[test]
	fn bad_shapes_are_refused() {
		let adapter = PagedAdapter { rank: 1, pages: vec![0, 1] };
		let mut pool = vec![0f32; 8];
		assert!(write_rows(&mut pool, 4, &adapter, &[0.0; 4], 4, &[0.0; 4], 4).is_ok());
		assert!(write_rows(&mut pool, 4, &adapter, &[0.0; 5], 5, &[0.0; 4], 4).is_err());
		assert!(write_rows(&mut pool, 3, &adapter, &[0.0; 3], 3, &[0.0; 3], 3).is_err());
		let far = PagedAdapter { rank: 1, pages: vec![0, 9] };
		assert!(write_rows(&mut pool, 4, &far, &[0.0; 4], 4, &[0.0; 4], 4).is_err());
		assert!(LoraPlan::new(2, &[(0..3, &adapter)]).is_err(), "rows past the batch");
		assert!(LoraPlan::new(4, &[(0..2, &adapter), (1..3, &adapter)]).is_err(), "overlap");
		let odd = PagedAdapter { rank: 2, pages: vec![0, 1] };
		assert!(LoraPlan::new(2, &[(0..1, &odd)]).is_err(), "pages for rank 1, not 2");
		let plan = LoraPlan::new(2, &[(0..2, &adapter)]).unwrap();
		let mut shrunk = vec![0f32; 2];
		assert!(shrink(&pool, 4, &plan, &[0.0; 8], 4, &mut shrunk).is_ok());
		assert!(shrink(&pool, 4, &plan, &[0.0; 6], 3, &mut [0.0; 1]).is_err());
		assert!(shrink(&pool, 4, &plan, &[0.0; 10], 5, &mut shrunk).is_err(), "row > page");
		assert!(expand(&pool, 4, &plan, &shrunk, &mut [0.0; 8], 4).is_ok());
		assert!(expand(&pool, 4, &plan, &shrunk, &mut [0.0; 7], 4).is_err());
		assert!(expand(&pool[..7], 4, &plan, &shrunk, &mut [0.0; 8], 4).is_err(), "ragged pool");
		assert!(expand(&pool[..4], 4, &plan, &shrunk, &mut [0.0; 8], 4).is_err(), "page 1 of 1");
		let mut bad = plan.clone();
		bad.tile_rows[0] = 3;
		assert!(shrink(&pool, 4, &bad, &[0.0; 8], 4, &mut shrunk).is_err(), "tile past the batch");
		let mut bad = plan.clone();
		bad.tile_rank[0] = 2;
		assert!(bad.validate(2).is_err(), "rank above max_rank");
	}
}
