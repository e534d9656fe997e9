//! Paged attention on the GPU against the CPU references of `openledger_kernels::attention`:
//! the cache write, decode (multi-partition, grouped-query, windows, shuffled block tables) and
//! flash prefill (with and without a cached prefix, windows).

use openledger_kernels::{
	attention::{self, AttentionParams, BlockTables, KvLayout, PagedKv},
	gpu::{
		attention::{self as gpu_attention, GpuBlockTables, GpuPagedKv},
		Gpu,
	},
};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

/// The GPU against CPU checks of this family.
pub const CHECKS: &[crate::Check] =
	&[("write_kv", write_kv), ("decode", decode), ("prefill", prefill), ("copy_block", copy_block)];

const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-4;

fn random(rng: &mut StdRng, n: usize, amplitude: f32) -> Vec<f32> {
	(0..n).map(|_| rng.random_range(-amplitude..amplitude)).collect()
}

/// Random caches with a few spare blocks and, for each length, a table of distinct blocks in
/// shuffled order covering it.
fn caches(
	rng: &mut StdRng,
	layout: KvLayout,
	lens: &[usize],
) -> (Vec<f32>, Vec<f32>, Vec<Vec<u32>>) {
	let per_seq: Vec<usize> = lens.iter().map(|l| l.div_ceil(layout.block_size)).collect();
	let num_blocks = per_seq.iter().sum::<usize>() + 5;
	let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
	ids.shuffle(rng);
	let mut tables = Vec::new();
	let mut next = 0;
	for n in per_seq {
		tables.push(ids[next..next + n].to_vec());
		next += n;
	}
	let len = num_blocks * layout.block_len();
	(random(rng, len, 1.0), random(rng, len, 1.0), tables)
}

fn write_kv(gpu: &Gpu) -> anyhow::Result<()> {
	let mut rng = StdRng::seed_from_u64(41);
	for (block_size, num_kv_heads, head_dim, tokens) in
		[(16, 8, 128, 37usize), (1, 1, 3, 5), (16, 2, 80, 300), (8, 3, 70, 1)]
	{
		let layout = KvLayout { block_size, num_kv_heads, head_dim };
		let num_blocks = tokens.div_ceil(block_size) + 4;
		let cache_len = num_blocks * layout.block_len();
		let mut k_cache = random(&mut rng, cache_len, 1.0);
		let mut v_cache = random(&mut rng, cache_len, 1.0);
		let mut slots: Vec<i64> = (0..(num_blocks * block_size) as i64).collect();
		slots.shuffle(&mut rng);
		slots.truncate(tokens);
		// Padding tokens, skipped.
		for slot in slots.iter_mut().skip(1).step_by(4) {
			*slot = -1;
		}
		let k = random(&mut rng, tokens * layout.row_len(), 1.0);
		let v = random(&mut rng, tokens * layout.row_len(), 1.0);

		let mut k_dev = gpu.upload(&k_cache)?;
		let mut v_dev = gpu.upload(&v_cache)?;
		gpu_attention::write_kv(
			gpu,
			&mut k_dev,
			&mut v_dev,
			layout,
			&gpu.upload(&k)?,
			&gpu.upload(&v)?,
			&gpu.upload(&slots)?,
		)?;
		attention::write_kv(&mut k_cache, &mut v_cache, layout, &k, &v, &slots)?;
		let what = format!("write_kv {layout:?} {tokens} tokens");
		crate::compare(&format!("{what} K"), &gpu.download(&k_dev)?, &k_cache, 0.0, 0.0)?;
		crate::compare(&format!("{what} V"), &gpu.download(&v_dev)?, &v_cache, 0.0, 0.0)?;
	}
	Ok(())
}

/// One decode case: head_dim, kv heads, group, block size, context lengths, window, partition.
type DecodeCase = (usize, usize, usize, usize, &'static [usize], Option<usize>, usize);

fn decode(gpu: &Gpu) -> anyhow::Result<()> {
	let mut rng = StdRng::seed_from_u64(43);
	let cases: &[DecodeCase] = &[
		(128, 2, 4, 16, &[1, 15, 16, 17, 500, 513, 1024, 2000], None, 512),
		(80, 4, 1, 16, &[1, 3, 17, 999, 1537, 0], None, 512),
		(70, 1, 3, 16, &[1, 16, 33, 700, 1200], None, 512),
		(64, 2, 4, 1, &[1, 2, 100, 700], Some(300), 256),
		(128, 8, 1, 16, &[2000, 1, 64, 1025], Some(1000), 512),
		(256, 1, 2, 16, &[1999, 5], None, 512),
		(16, 2, 1, 8, &[1, 9, 33, 100], Some(7), 16),
		(96, 2, 3, 16, &[1, 511, 512, 1500], Some(600), 128),
		// An odd partition (the kernel's shared key rows are rounded up to an even count).
		(70, 1, 3, 16, &[1, 7, 37, 38, 75, 300], None, 37),
	];
	for &(head_dim, num_kv_heads, group, block_size, lens, window, partition_size) in cases {
		let layout = KvLayout { block_size, num_kv_heads, head_dim };
		let num_heads = num_kv_heads * group;
		let (k, v, seq_tables) = caches(&mut rng, layout, lens);
		let width = seq_tables.iter().map(Vec::len).max().unwrap_or(0) + 1;
		// Entries past what a context needs are never read.
		let mut flat = vec![u32::MAX; lens.len() * width];
		for (s, table) in seq_tables.iter().enumerate() {
			flat[s * width..s * width + table.len()].copy_from_slice(table);
		}
		let context_lens: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
		let q = random(&mut rng, lens.len() * num_heads * head_dim, 2.0);
		let params = AttentionParams { num_heads, scale: 1.0 / (head_dim as f32).sqrt(), window };

		let mut want = vec![0f32; q.len()];
		let cache = PagedKv::new(&k, &v, layout)?;
		let tables =
			BlockTables { tables: &flat, max_blocks_per_seq: width, context_lens: &context_lens };
		attention::decode(&q, &params, &cache, &tables, partition_size, &mut want)?;

		let (k_dev, v_dev) = (gpu.upload(&k)?, gpu.upload(&v)?);
		let (flat_dev, lens_dev) = (gpu.upload(&flat)?, gpu.upload(&context_lens)?);
		let gpu_cache = GpuPagedKv::new(&k_dev, &v_dev, layout)?;
		let gpu_tables = GpuBlockTables {
			tables: &flat_dev,
			max_blocks_per_seq: width,
			context_lens: &lens_dev,
		};
		let out = gpu_attention::decode(
			gpu,
			&gpu.upload(&q)?,
			&params,
			&gpu_cache,
			&gpu_tables,
			partition_size,
		)?;
		crate::compare(
			&format!(
				"decode hd {head_dim} kv heads {num_kv_heads} group {group} bs {block_size} lens \
				 {lens:?} window {window:?} partition {partition_size}"
			),
			&gpu.download(&out)?,
			&want,
			ATOL,
			RTOL,
		)?;
	}
	Ok(())
}

/// One prefill case: head_dim, kv heads, group, block size, start, tokens, window.
type PrefillCase = (usize, usize, usize, usize, usize, usize, Option<usize>);

fn prefill(gpu: &Gpu) -> anyhow::Result<()> {
	let mut rng = StdRng::seed_from_u64(47);
	let cases: &[PrefillCase] = &[
		(128, 2, 4, 16, 0, 100, None),
		(128, 2, 4, 16, 37, 64, None),
		(80, 4, 1, 16, 0, 1, None),
		(80, 4, 1, 16, 200, 33, Some(50)),
		(64, 1, 3, 1, 5, 17, Some(1)),
		(256, 1, 2, 16, 10, 40, None),
		(200, 1, 1, 16, 3, 20, Some(9)),
		(70, 2, 2, 16, 0, 50, Some(20)),
		(64, 8, 1, 16, 500, 300, Some(128)),
	];
	for &(head_dim, num_kv_heads, group, block_size, start, tokens, window) in cases {
		let layout = KvLayout { block_size, num_kv_heads, head_dim };
		let num_heads = num_kv_heads * group;
		let end = start + tokens;
		// The prefix's K/V are already in the caches; the new tokens' are written first.
		let (mut k_cache, mut v_cache, tables) = caches(&mut rng, layout, &[end]);
		let table = &tables[0];
		let slots: Vec<i64> = (start..end)
			.map(|p| (table[p / block_size] as usize * block_size + p % block_size) as i64)
			.collect();
		let k_new = random(&mut rng, tokens * layout.row_len(), 1.0);
		let v_new = random(&mut rng, tokens * layout.row_len(), 1.0);
		let q = random(&mut rng, tokens * num_heads * head_dim, 2.0);
		let params = AttentionParams { num_heads, scale: 1.0 / (head_dim as f32).sqrt(), window };

		let mut k_dev = gpu.upload(&k_cache)?;
		let mut v_dev = gpu.upload(&v_cache)?;
		gpu_attention::write_kv(
			gpu,
			&mut k_dev,
			&mut v_dev,
			layout,
			&gpu.upload(&k_new)?,
			&gpu.upload(&v_new)?,
			&gpu.upload(&slots)?,
		)?;
		let gpu_cache = GpuPagedKv::new(&k_dev, &v_dev, layout)?;
		let out = gpu_attention::prefill(
			gpu,
			&gpu.upload(&q)?,
			&params,
			&gpu_cache,
			&gpu.upload(table)?,
			start,
		)?;

		attention::write_kv(&mut k_cache, &mut v_cache, layout, &k_new, &v_new, &slots)?;
		let cache = PagedKv::new(&k_cache, &v_cache, layout)?;
		let mut want = vec![0f32; q.len()];
		let tiles = gpu_attention::prefill_tiles(head_dim);
		attention::prefill(&q, &params, &cache, table, start, tiles, &mut want)?;
		crate::compare(
			&format!(
				"prefill hd {head_dim} kv heads {num_kv_heads} group {group} bs {block_size} \
				 start {start} tokens {tokens} window {window:?}"
			),
			&gpu.download(&out)?,
			&want,
			ATOL,
			RTOL,
		)?;
	}
	Ok(())
}

/// A KV block's copy on write through the backend: the same buffer as the CPU's after copies
/// in both directions, and the same refusals.
fn copy_block(gpu: &Gpu) -> anyhow::Result<()> {
	use openledger_kernels::backend::{Backend, Cpu, Cuda};
	let mut rng = StdRng::seed_from_u64(43);
	let host = random(&mut rng, 16 * 1024 + 7, 1.0);
	let cuda = Cuda::new(Gpu::new(gpu.stream().context().ordinal())?);
	let mut on_gpu = cuda.floats(&host)?;
	let mut on_cpu = host.clone();
	for (src, dst, len) in [(0, 8192, 1024), (9000, 100, 4096), (16 * 1024, 3, 7)] {
		cuda.copy_within(&mut on_gpu, src, dst, len)?;
		Cpu.copy_within(&mut on_cpu, src, dst, len)?;
	}
	anyhow::ensure!(cuda.read(&on_gpu)? == on_cpu, "copies differ from the CPU's");
	anyhow::ensure!(cuda.read_range(&on_gpu, 8190, 40)? == on_cpu[8190..8230], "a range read");
	anyhow::ensure!(cuda.read_range(&on_gpu, 16 * 1024, 8).is_err(), "an overrun was read");
	anyhow::ensure!(cuda.copy_within(&mut on_gpu, 0, 10, 20).is_err(), "an overlap was copied");
	anyhow::ensure!(
		cuda.copy_within(&mut on_gpu, 16 * 1024, 0, 8).is_err(),
		"an overrun was copied"
	);
	Ok(())
}
