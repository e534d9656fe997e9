//! Multi-LoRA over a paged adapter pool (S-LoRA's unified paging, Punica's SGMV/BGMV).
//!
//! Thousands of adapters stay resident without one allocation each: one pool of fixed-size
//! pages (`[num_pages, page_len]` `f32`) holds every resident adapter's rows — the `rank` rows
//! of `A` (`[rank, in]`) and the `rank` rows of `s·Bᵀ` (`[rank, out]`) — so loading and
//! evicting an adapter is taking and giving back pages, never a fresh allocation or a
//! compaction. A row takes `⌈width / page_len⌉` pages of its own (see [`row_pages`]), so a
//! pool whose page length divides every projection's width wastes nothing, whichever
//! projections an adapter adapts (the decoder picks a page length that leaves at most 1%
//! unused where one does, with the fewest pages a row).
//!
//! A batch is described by a [`LoraPlan`]: its segments (rows that share an adapter) cut into
//! tiles of at most [`TILE_ROWS`] rows. The shrink and expand here are the CPU reference of the
//! CUDA kernels in `kernels/cuda/lora.cu`, with the same arithmetic in the same order (fused
//! multiply-adds, a 32-lane butterfly for the shrink's dot products), so the two agree to the
//! bit; the order does not depend on how rows are cut into pages. A decode batch whose rows use
//! different adapters is the BGMV case (tiles of one row); a prefill segment is the SGMV case
//! (tiles of up to 16 rows that read each adapter row once).

use std::{cmp::Reverse, collections::BinaryHeap, ops::Range};

use crate::ShapeError;

/// The most rows of one segment that one tile (one thread block on the GPU) handles.
pub const TILE_ROWS: usize = 16;

/// Lanes of the shrink's dot products (a CUDA warp).
const LANES: usize = 32;

/// Pages one row of `width` floats takes in a pool of pages of `page_len` (0 when `page_len`
/// is 0).
pub fn row_pages(width: usize, page_len: usize) -> usize {
	if page_len == 0 {
		0
	} else {
		width.div_ceil(page_len)
	}
}

/// Pages an adapter pair of `rank` for a projection of `in_dim` inputs and `out_dim` outputs
/// takes in a pool of pages of `page_len` (`None` past `usize`).
pub fn adapter_pages(rank: usize, in_dim: usize, out_dim: usize, page_len: usize) -> Option<usize> {
	rank.checked_mul(row_pages(in_dim, page_len).checked_add(row_pages(out_dim, page_len))?)
}

/// Hands out the pages of a pool: all-or-nothing, lowest free pages first. Taking or giving
/// back `k` pages costs `O(k log n)` in a pool of `n` (a pool holds hundreds of thousands of
/// pages, and an eviction gives back thousands).
#[derive(Clone, Debug)]
pub struct PageAllocator {
	/// Free pages, the lowest on top.
	free: BinaryHeap<Reverse<u32>>,
	/// Whether each page is free.
	is_free: Vec<bool>,
	num_pages: u32,
}

impl PageAllocator {
	/// A pool of `num_pages` pages, all free.
	pub fn new(num_pages: u32) -> Self {
		Self {
			free: (0..num_pages).map(Reverse).collect(),
			is_free: vec![true; num_pages as usize],
			num_pages,
		}
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
		let pages: Vec<u32> =
			(0..count).filter_map(|_| self.free.pop()).map(|Reverse(page)| page).collect();
		for &page in &pages {
			self.is_free[page as usize] = false;
		}
		Some(pages)
	}

	/// Gives `pages` back. A page that is out of the pool, already free or named twice is
	/// refused, and then nothing is given back.
	pub fn release(&mut self, pages: &[u32]) -> Result<(), ShapeError> {
		for (i, &page) in pages.iter().enumerate() {
			match self.is_free.get_mut(page as usize) {
				// Marked free as it goes, so that a page named twice is caught the second time.
				Some(free) if !*free => *free = true,
				_ => {
					for &given in &pages[..i] {
						self.is_free[given as usize] = false;
					}
					return Err(ShapeError(format!("page {page} is not an allocated page")));
				}
			}
		}
		self.free.extend(pages.iter().map(|&page| Reverse(page)));
		Ok(())
	}

	/// Pages for an adapter pair of `rank` for a projection of `dims` (inputs, outputs) in a
	/// pool of pages of `page_len`: the shape is checked first, then the pages are taken
	/// all-or-nothing (an error, taking nothing, when too few are free).
	pub fn allocate_adapter(
		&mut self,
		rank: usize,
		dims: (usize, usize),
		page_len: usize,
	) -> Result<PagedAdapter, ShapeError> {
		let shape = AdapterShape::new(rank, dims, page_len)?;
		let pages = self.allocate(shape.pages).ok_or_else(|| {
			ShapeError(format!(
				"the adapter pool has {} free pages, an adapter of rank {rank} needs {}",
				self.free_pages(),
				shape.pages
			))
		})?;
		Ok(shape.with_pages(pages))
	}
}

/// An adapter pair's shape in a pool: its rank, widths, pages per row and pages in all.
struct AdapterShape {
	rank: u32,
	dims: (u32, u32),
	row_pages: (u32, u32),
	pages: usize,
}

impl AdapterShape {
	/// Refused unless the rank, both widths and the page length are at least 1 and every count
	/// fits a `u32`.
	fn new(rank: usize, dims: (usize, usize), page_len: usize) -> Result<Self, ShapeError> {
		let bad = || {
			ShapeError(format!(
				"an adapter of rank {rank} for {} inputs and {} outputs in pages of {page_len}",
				dims.0, dims.1
			))
		};
		if rank == 0 || dims.0 == 0 || dims.1 == 0 || page_len == 0 {
			return Err(bad());
		}
		let u32_of = |n: usize| u32::try_from(n).map_err(|_| bad());
		let pages = adapter_pages(rank, dims.0, dims.1, page_len).ok_or_else(bad)?;
		u32_of(pages)?;
		Ok(Self {
			rank: u32_of(rank)?,
			dims: (u32_of(dims.0)?, u32_of(dims.1)?),
			row_pages: (u32_of(row_pages(dims.0, page_len))?, u32_of(row_pages(dims.1, page_len))?),
			pages,
		})
	}

	/// The adapter of this shape on `pages` (as many as [`Self::pages`]).
	fn with_pages(self, pages: Vec<u32>) -> PagedAdapter {
		PagedAdapter { rank: self.rank, dims: self.dims, row_pages: self.row_pages, pages }
	}
}

/// One adapter's pair for one projection, resident in a pool (see
/// [`PageAllocator::allocate_adapter`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagedAdapter {
	/// The rank.
	rank: u32,
	/// Floats per row of `A` (the projection's inputs) and of `s·Bᵀ` (its outputs).
	dims: (u32, u32),
	/// Pages per row of `A` and per row of `s·Bᵀ`.
	row_pages: (u32, u32),
	/// `A`'s rows, then `s·Bᵀ`'s, each row's pages in order.
	pages: Vec<u32>,
}

impl PagedAdapter {
	/// An adapter of `rank` for a projection of `dims` (inputs, outputs) on `pages` of a pool
	/// of pages of `page_len`: `A`'s rows first, each row's pages in order. Refused unless the
	/// rank, widths and page length are at least 1 and the pages are exactly as many as the
	/// rows take.
	pub fn new(
		rank: usize,
		dims: (usize, usize),
		page_len: usize,
		pages: Vec<u32>,
	) -> Result<Self, ShapeError> {
		let shape = AdapterShape::new(rank, dims, page_len)?;
		if pages.len() != shape.pages {
			return Err(ShapeError(format!(
				"{} pages for an adapter of rank {rank} for {dims:?} in pages of {page_len}, \
				 which takes {}",
				pages.len(),
				shape.pages
			)));
		}
		Ok(shape.with_pages(pages))
	}

	/// The rank.
	pub fn rank(&self) -> u32 {
		self.rank
	}

	/// Floats per row of `A` (the projection's inputs) and of `s·Bᵀ` (its outputs).
	pub fn dims(&self) -> (usize, usize) {
		(self.dims.0 as usize, self.dims.1 as usize)
	}

	/// Pages per row of `A` and per row of `s·Bᵀ`.
	pub fn row_pages(&self) -> (u32, u32) {
		self.row_pages
	}

	/// Every page, `A`'s rows first.
	pub fn pages(&self) -> &[u32] {
		&self.pages
	}

	/// The pages of `A`'s rows.
	pub fn a_pages(&self) -> &[u32] {
		&self.pages[..self.rank as usize * self.row_pages.0 as usize]
	}

	/// The pages of `s·Bᵀ`'s rows.
	pub fn b_pages(&self) -> &[u32] {
		&self.pages[self.rank as usize * self.row_pages.0 as usize..]
	}
}

/// Writes an adapter's rows into the pages it was given: `a` is `[rank, in_dim]`, `b_t` is
/// `[rank, out_dim]` with the adapter's [`PagedAdapter::dims`]. (On the GPU: one copy of `a`
/// and `b_t` to the device, then a scatter.)
pub fn write_rows(
	pool: &mut [f32],
	page_len: usize,
	adapter: &PagedAdapter,
	a: &[f32],
	b_t: &[f32],
) -> Result<(), ShapeError> {
	let rank = adapter.rank as usize;
	let (in_dim, out_dim) = adapter.dims();
	check_pool(pool, page_len, &adapter.pages)?;
	let (a_pages, b_pages) = (row_pages(in_dim, page_len), row_pages(out_dim, page_len));
	if a.len() != rank * in_dim
		|| b_t.len() != rank * out_dim
		|| (a_pages as u32, b_pages as u32) != adapter.row_pages
	{
		return Err(ShapeError(format!(
			"an adapter of rank {rank} for {in_dim} inputs and {out_dim} outputs with rows of \
			 {:?} pages, written in pages of {page_len}: A has {} values, sBᵀ {}",
			adapter.row_pages,
			a.len(),
			b_t.len()
		)));
	}
	let rows = a.chunks_exact(in_dim).zip(adapter.a_pages().chunks_exact(a_pages));
	for (row, pages) in
		rows.chain(b_t.chunks_exact(out_dim).zip(adapter.b_pages().chunks_exact(b_pages)))
	{
		for (part, &page) in row.chunks(page_len).zip(pages) {
			let at = page as usize * page_len;
			pool[at..at + part.len()].copy_from_slice(part);
		}
	}
	Ok(())
}

/// Copies the row of `width` floats held on `pages` into `row` (resized to `width`).
fn gather_row(pool: &[f32], page_len: usize, pages: &[u32], width: usize, row: &mut Vec<f32>) {
	row.clear();
	for (q, &page) in pages.iter().enumerate() {
		let len = page_len.min(width - q * page_len);
		let at = page as usize * page_len;
		row.extend_from_slice(&pool[at..at + len]);
	}
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
	/// The adapters' pages, [`PagedAdapter::pages`] per segment.
	pub pages: Vec<u32>,
	/// Floats per row of `A` and of `s·Bᵀ` (the projection's inputs and outputs), the same for
	/// every adapter of the plan (they adapt one projection); `(0, 0)` in a plan of no tiles.
	pub dims: (u32, u32),
	/// Pages per row of `A` and of `s·Bᵀ`; `(0, 0)` in a plan of no tiles.
	pub row_pages: (u32, u32),
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
			if range.end > rows {
				return Err(ShapeError(format!("a segment of rows {range:?} (of {rows})")));
			}
			if range.is_empty() {
				continue;
			}
			if plan.tile_rank.is_empty() {
				(plan.dims, plan.row_pages) = (adapter.dims, adapter.row_pages);
			} else if (adapter.dims, adapter.row_pages) != (plan.dims, plan.row_pages) {
				return Err(ShapeError(format!(
					"an adapter for {:?} (inputs, outputs) in a plan for {:?}",
					adapter.dims, plan.dims
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
	/// shares no row with another tile (each adds its product into its rows of `y` without
	/// atomics: two tiles on one row would race on a GPU), and its pages exist in [`Self::pages`] and in a pool of `num_pages`; a plan with tiles
	/// has rows of at least one float and one page.
	pub fn validate(&self, num_pages: usize) -> Result<(), ShapeError> {
		let tiles = self.num_tiles();
		if [self.tile_rows.len(), self.tile_rank.len(), self.tile_pages.len()] != [tiles; 3] {
			return Err(ShapeError("tile arrays of different lengths".into()));
		}
		let per_rank = self.row_pages.0 as usize + self.row_pages.1 as usize;
		let empty = [self.dims.0, self.dims.1, self.row_pages.0, self.row_pages.1].contains(&0);
		if tiles > 0 && empty {
			return Err(ShapeError(format!(
				"rows of {:?} floats on {:?} pages",
				self.dims, self.row_pages
			)));
		}
		let mut covered = vec![false; self.rows];
		for t in 0..tiles {
			let (start, rows, rank) = (
				self.tile_row_start[t] as usize,
				self.tile_rows[t] as usize,
				self.tile_rank[t] as usize,
			);
			let pages = self.tile_pages[t] as usize;
			let overlaps = start
				.checked_add(rows)
				.and_then(|end| covered.get_mut(start..end))
				.is_some_and(|rows| rows.iter_mut().any(|c| std::mem::replace(c, true)));
			if overlaps {
				return Err(ShapeError(format!(
					"tile {t}: rows {start}..{} are another tile's too",
					start + rows
				)));
			}
			if rows == 0
				|| rows > TILE_ROWS
				|| start + rows > self.rows
				|| rank == 0 || rank > self.max_rank
				|| rank
					.checked_mul(per_rank)
					.and_then(|n| n.checked_add(pages))
					.is_none_or(|end| end > self.pages.len())
			{
				return Err(ShapeError(format!(
					"tile {t}: rows {start}..{} of {}, rank {rank} of at most {}, pages from \
					 {pages} of {}",
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

	/// Tile `t`'s first row, row count, rank, and the pages of its `A` rows and `s·Bᵀ` rows.
	fn tile(&self, t: usize) -> (usize, usize, usize, &[u32], &[u32]) {
		let start = self.tile_row_start[t] as usize;
		let rank = self.tile_rank[t] as usize;
		let offset = self.tile_pages[t] as usize;
		let a_end = offset + rank * self.row_pages.0 as usize;
		let b_end = a_end + rank * self.row_pages.1 as usize;
		let (a, b) = (&self.pages[offset..a_end], &self.pages[a_end..b_end]);
		(start, self.tile_rows[t] as usize, rank, a, b)
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

/// Fails unless activation rows of `width` floats (`what` names them) meet adapter rows of
/// `plan_width` floats on `plan_pages` pages of `page_len`: as wide, and so on as many pages. A
/// plan with no tiles (`tiled` false) is met by rows of any width of at least one float.
pub fn check_row_width(
	what: &str,
	width: usize,
	page_len: usize,
	(plan_width, plan_pages): (usize, usize),
	tiled: bool,
) -> Result<(), ShapeError> {
	let fits = !tiled || (width == plan_width && row_pages(width, page_len) == plan_pages);
	if width == 0 || !fits {
		return Err(ShapeError(format!(
			"{what} of {width} values in pages of {page_len}, for adapter rows of {plan_width} \
			 on {plan_pages} pages"
		)));
	}
	Ok(())
}

/// Checks a shrink or expand call: the pool is whole pages, the plan fits it, the activation
/// buffer (`x` or `y`: its name, length and row width) has the plan's rows, each as wide as
/// the plan's adapter rows (`plan_rows`: the width and pages of those of `A` for `x`, of `s·Bᵀ`
/// for `y`), and the shrunk buffer has the plan's rows of `max_rank`.
fn check_call(
	pool: &[f32],
	page_len: usize,
	plan: &LoraPlan,
	(what, len, width): (&str, usize, usize),
	plan_rows: (u32, u32),
	shrunk_len: usize,
) -> Result<(), ShapeError> {
	check_pool(pool, page_len, &[])?;
	plan.validate(pool.len() / page_len)?;
	let plan_rows = (plan_rows.0 as usize, plan_rows.1 as usize);
	check_row_width(&format!("rows of {what}"), width, page_len, plan_rows, plan.num_tiles() > 0)?;
	if len != plan.rows * width {
		return Err(ShapeError(format!(
			"{what} has {len} values for {} rows of {width}",
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
	let plan_rows = (plan.dims.0, plan.row_pages.0);
	check_call(pool, page_len, plan, ("x", x.len(), in_dim), plan_rows, shrunk.len())?;
	let mut a = Vec::with_capacity(in_dim);
	for t in 0..plan.num_tiles() {
		let (start, rows, _, a_pages, _) = plan.tile(t);
		for (j, pages) in a_pages.chunks_exact(plan.row_pages.0 as usize).enumerate() {
			gather_row(pool, page_len, pages, in_dim, &mut a);
			for r in start..start + rows {
				let x_row = &x[r * in_dim..(r + 1) * in_dim];
				let mut lanes = [0f32; LANES];
				for (c, (&xv, &av)) in x_row.iter().zip(&a).enumerate() {
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
	let plan_rows = (plan.dims.1, plan.row_pages.1);
	check_call(pool, page_len, plan, ("y", y.len(), out_dim), plan_rows, shrunk.len())?;
	let (mut row, mut b) = (Vec::with_capacity(out_dim), Vec::new());
	for t in 0..plan.num_tiles() {
		let (start, rows, rank, _, b_pages) = plan.tile(t);
		// The tile's rows of s·Bᵀ, contiguous: [rank, out_dim].
		b.clear();
		for pages in b_pages.chunks_exact(plan.row_pages.1 as usize) {
			gather_row(pool, page_len, pages, out_dim, &mut row);
			b.extend_from_slice(&row);
		}
		for r in start..start + rows {
			let s = &shrunk[r * plan.max_rank..][..rank];
			for o in 0..out_dim {
				let mut acc = 0f32;
				for (j, &sj) in s.iter().enumerate() {
					acc = sj.mul_add(b[j * out_dim + o], acc);
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
		assert!(pages.release(&[2, 1, 2]).is_err(), "a page named twice");
		assert_eq!(pages.free_pages(), 2, "a refused release gives nothing back");
		assert!(pages.release(&[2, 3]).is_err(), "page 3 is free, so 2 stays taken too");
		pages.release(&[2]).unwrap();
		pages.allocate(1).unwrap();
		pages.release(&[1]).unwrap();
		assert_eq!(pages.allocate(2).unwrap(), vec![1, 3], "lowest free pages first");
	}

	#[test]
	fn an_adapter_is_shaped_before_it_takes_pages() {
		let mut pages = PageAllocator::new(10);
		// Rank 2, rows of 12 and 4 floats in pages of 4: 3 + 1 pages a rank row.
		let adapter = pages.allocate_adapter(2, (12, 4), 4).unwrap();
		assert_eq!(adapter.pages(), &(0..8).collect::<Vec<_>>()[..]);
		assert_eq!((adapter.a_pages(), adapter.b_pages()), (&[0, 1, 2, 3, 4, 5][..], &[6, 7][..]));
		assert_eq!((adapter.rank(), adapter.dims(), adapter.row_pages()), (2, (12, 4), (3, 1)));
		let full = pages.allocate_adapter(1, (5, 4), 4).unwrap_err();
		assert!(full.0.contains("2 free pages") && full.0.contains("needs 3"), "{full}");
		for (rank, dims, page_len) in
			[(0, (4, 4), 4), (1, (0, 4), 4), (1, (4, 0), 4), (1, (4, 4), 0)]
		{
			assert!(pages.allocate_adapter(rank, dims, page_len).is_err(), "{rank} {dims:?}");
		}
		assert!(pages.allocate_adapter(usize::MAX, (4, 4), 1).is_err(), "too many pages");
		assert_eq!(pages.free_pages(), 2, "a refused adapter takes nothing");
		let by_hand = PagedAdapter::new(2, (12, 4), 4, (0..8).collect()).unwrap();
		assert_eq!(by_hand, adapter);
		assert!(PagedAdapter::new(2, (12, 4), 4, (0..7).collect()).is_err(), "a page short");
		assert!(PagedAdapter::new(0, (12, 4), 4, vec![]).is_err(), "rank 0");
		assert!(PagedAdapter::new(1, (0, 4), 4, vec![0]).is_err(), "rows of no float");
	}

	/// An adapter of `rank` for `in_dim → out_dim` in `pages` of `allocator`'s pool.
	fn place(
		allocator: &mut PageAllocator,
		rank: usize,
		dims: (usize, usize),
		page_len: usize,
	) -> PagedAdapter {
		allocator.allocate_adapter(rank, dims, page_len).unwrap()
	}

	/// Runs the shrink and the expand of `segments` over `y0`.
	fn apply(
		pool: &[f32],
		page_len: usize,
		segments: &[(Range<usize>, &PagedAdapter)],
		x: &[f32],
		(in_dim, out_dim): (usize, usize),
		y0: &[f32],
	) -> Vec<f32> {
		let rows = y0.len() / out_dim;
		let plan = LoraPlan::new(rows, segments).unwrap();
		let mut shrunk = vec![0f32; rows * plan.max_rank];
		shrink(pool, page_len, &plan, x, in_dim, &mut shrunk).unwrap();
		let mut y = y0.to_vec();
		expand(pool, page_len, &plan, &shrunk, &mut y, out_dim).unwrap();
		y
	}

	#[test]
	fn rows_take_whole_pages_and_a_common_divisor_wastes_nothing() {
		assert_eq!(row_pages(576, 1536), 1);
		assert_eq!(row_pages(576, 192), 3);
		assert_eq!(row_pages(577, 192), 4);
		assert_eq!(row_pages(5, 0), 0);
		// SmolLM2-135M's q_proj (576 → 576) and v_proj (576 → 192), rank 8: in pages of the
		// widest width (1536) they take 32 pages, 49,152 floats for 15,360 values; in pages of
		// 192 (the widths' greatest common divisor) 80 pages, exactly their values.
		let values = 8 * (576 + 576) + 8 * (576 + 192);
		let wide =
			adapter_pages(8, 576, 576, 1536).unwrap() + adapter_pages(8, 576, 192, 1536).unwrap();
		let fitted =
			adapter_pages(8, 576, 576, 192).unwrap() + adapter_pages(8, 576, 192, 192).unwrap();
		assert_eq!((wide, wide * 1536), (32, 49_152));
		assert_eq!(fitted * 192, values);
	}

	/// Adapters written into scattered pages of a pool give what the contiguous kernel gives,
	/// within float rounding (the two sum in different orders), for every row, whether a row
	/// fits one page or spans several (the last one part full).
	#[test]
	fn paged_matches_the_contiguous_kernel_over_ranks_tiles_and_page_lengths() {
		let mut rng = StdRng::seed_from_u64(11);
		for &(in_dim, out_dim) in &[(1, 1), (33, 7), (576, 192), (100, 300)] {
			for page_len in [in_dim.max(out_dim) + 3, 32, 7] {
				let dims = (in_dim, out_dim);
				let ranks = [1usize, 8, 3, 128, 16];
				let need: usize = ranks
					.iter()
					.map(|&r| adapter_pages(r, in_dim, out_dim, page_len).unwrap())
					.sum();
				let mut allocator = PageAllocator::new(need as u32 + 10);
				// Take and give back some pages first so the adapters' pages are not in order.
				let hole = allocator.allocate(10).unwrap();
				let mut pool = vec![f32::NAN; allocator.num_pages() as usize * page_len];
				let mut adapters = Vec::new();
				for (i, &rank) in ranks.iter().enumerate() {
					let a = random(&mut rng, rank * in_dim);
					let b_t = random(&mut rng, rank * out_dim);
					let adapter = place(&mut allocator, rank, dims, page_len);
					write_rows(&mut pool, page_len, &adapter, &a, &b_t).unwrap();
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
				let y = apply(&pool, page_len, &plan_segments, &x, dims, &y0);

				let contiguous: Vec<_> = segments
					.iter()
					.map(|(r, i)| {
						let (a, b_t, adapter) = &adapters[*i];
						let pair = LoraPair { a, b_t, rank: adapter.rank() as usize };
						Segment { rows: r.clone(), pair }
					})
					.collect();
				let mut want = y0.clone();
				sgmv(&x, in_dim, &mut want, out_dim, &contiguous).unwrap();
				assert_eq!(y[..out_dim], y0[..out_dim], "the base row is untouched");
				for (k, (g, w)) in y.iter().zip(&want).enumerate() {
					let bound = 1e-5 * (in_dim * 128) as f32;
					let at = format!("{in_dim}x{out_dim}, pages of {page_len}, value {k}");
					assert!((g - w).abs() <= bound, "{at}: {g} vs {w}");
				}
			}
		}
	}

	/// How rows are cut into pages changes no bit of the result (the GPU kernels rely on the
	/// same order whatever the page length).
	#[test]
	fn the_page_length_changes_no_bit() {
		let mut rng = StdRng::seed_from_u64(3);
		let (dims, rank, rows) = ((200, 130), 5, 19);
		let (a, b_t) = (random(&mut rng, rank * dims.0), random(&mut rng, rank * dims.1));
		let (x, y0) = (random(&mut rng, rows * dims.0), random(&mut rng, rows * dims.1));
		let run = |page_len: usize| {
			let mut allocator =
				PageAllocator::new(adapter_pages(rank, dims.0, dims.1, page_len).unwrap() as u32);
			let adapter = place(&mut allocator, rank, dims, page_len);
			let mut pool = vec![0f32; allocator.num_pages() as usize * page_len];
			write_rows(&mut pool, page_len, &adapter, &a, &b_t).unwrap();
			apply(&pool, page_len, &[(2..rows, &adapter)], &x, dims, &y0)
		};
		let whole = run(200);
		for page_len in [1, 10, 32, 64, 199] {
			assert_eq!(run(page_len), whole, "pages of {page_len}");
		}
	}

	#[test]
	fn a_row_gets_the_same_bits_alone_or_in_a_tile() {
		let mut rng = StdRng::seed_from_u64(5);
		let (dims, page_len, rank) = ((70, 50), 32, 8);
		let mut allocator =
			PageAllocator::new(adapter_pages(rank, 70, 50, page_len).unwrap() as u32);
		let adapter = place(&mut allocator, rank, dims, page_len);
		let mut pool = vec![0f32; allocator.num_pages() as usize * page_len];
		let (a, b_t) = (random(&mut rng, rank * dims.0), random(&mut rng, rank * dims.1));
		write_rows(&mut pool, page_len, &adapter, &a, &b_t).unwrap();
		let rows = 20;
		let x = random(&mut rng, rows * dims.0);
		let run = |x: &[f32], rows: usize| {
			apply(&pool, page_len, &[(0..rows, &adapter)], x, dims, &vec![0f32; rows * dims.1])
		};
		let batched = run(&x, rows);
		for r in [0, 15, 16, 19] {
			let alone = run(&x[r * dims.0..(r + 1) * dims.0], 1);
			assert_eq!(alone[..], batched[r * dims.1..(r + 1) * dims.1], "row {r}");
		}
	}

	#[test]
	fn bad_shapes_are_refused() {
		let adapter = PagedAdapter::new(1, (4, 4), 4, vec![0, 1]).unwrap();
		let mut pool = vec![0f32; 8];
		assert!(write_rows(&mut pool, 4, &adapter, &[0.0; 4], &[0.0; 4]).is_ok());
		assert!(write_rows(&mut pool, 4, &adapter, &[0.0; 5], &[0.0; 4]).is_err(), "A too long");
		assert!(write_rows(&mut pool, 4, &adapter, &[0.0; 3], &[0.0; 4]).is_err(), "A too short");
		assert!(write_rows(&mut pool, 4, &adapter, &[0.0; 4], &[0.0; 3]).is_err(), "sBᵀ short");
		assert!(write_rows(&mut pool, 2, &adapter, &[0.0; 4], &[0.0; 4]).is_err(), "pages of 2");
		assert!(write_rows(&mut pool, 3, &adapter, &[0.0; 4], &[0.0; 4]).is_err(), "ragged");
		let far = PagedAdapter::new(1, (4, 4), 4, vec![0, 9]).unwrap();
		assert!(write_rows(&mut pool, 4, &far, &[0.0; 4], &[0.0; 4]).is_err());
		assert!(LoraPlan::new(2, &[(0..3, &adapter)]).is_err(), "rows past the batch");
		assert!(LoraPlan::new(4, &[(0..2, &adapter), (1..3, &adapter)]).is_err(), "overlap");
		let wider = PagedAdapter::new(1, (5, 4), 4, vec![0, 1, 2]).unwrap();
		assert!(LoraPlan::new(4, &[(0..2, &adapter), (2..3, &wider)]).is_err(), "two widths");
		assert!(LoraPlan::new(4, &[(0..2, &adapter), (2..2, &wider)]).is_ok(), "no rows: skipped");
		// Rows of 3 floats take one page of 4 too, but are not the plan's rows of 4: reading
		// them as rows of 4 would read past their values.
		let narrower = PagedAdapter::new(1, (3, 4), 4, vec![0, 1]).unwrap();
		assert!(LoraPlan::new(4, &[(0..2, &adapter), (2..3, &narrower)]).is_err(), "3 vs 4");
		let plan = LoraPlan::new(2, &[(0..2, &adapter)]).unwrap();
		let mut shrunk = vec![0f32; 2];
		assert!(shrink(&pool, 4, &plan, &[0.0; 8], 4, &mut shrunk).is_ok());
		assert!(shrink(&pool, 4, &plan, &[0.0; 6], 3, &mut [0.0; 1]).is_err());
		assert!(shrink(&pool, 4, &plan, &[0.0; 6], 3, &mut shrunk).is_err(), "3 of the plan's 4");
		assert!(shrink(&pool, 4, &plan, &[0.0; 10], 5, &mut shrunk).is_err(), "rows of 2 pages");
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
		let mut bad = plan.clone();
		bad.row_pages = (2, 1);
		assert!(bad.validate(2).is_err(), "pages past the plan's");
		bad.row_pages = (0, 1);
		assert!(bad.validate(2).is_err(), "rows of no page");
		let mut bad = plan.clone();
		bad.dims = (4, 0);
		assert!(bad.validate(2).is_err(), "rows of no float");
		let mut bad = plan.clone();
		bad.dims = (3, 4);
		assert!(bad.validate(2).is_ok(), "validate knows no page length");
		let mut bad = LoraPlan::new(4, &[(0..2, &adapter), (2..4, &adapter)]).unwrap();
		assert!(bad.validate(2).is_ok());
		bad.tile_row_start[1] = 1;
		let err = bad.validate(2).unwrap_err().to_string();
		assert!(err.contains("tile 1: rows 1..3 are another tile's too"), "{err}");
		assert!(shrink(&pool, 4, &bad, &[0.0; 8], 4, &mut shrunk).is_err(), "4 of the plan's 3");
	}
}
