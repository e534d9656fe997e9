//! `gpu::fused` against `fused`.
//!
//! Tolerances: the norms, RoPE and the add do the same f32 operations in the same order on both
//! sides (the CPU reference mirrors the block reduction, the kernels round every product
//! explicitly), so they are compared at 1e-6 relative, which leaves room only for a one-ulp
//! difference in the result. SiLU calls `expf`, whose CUDA version is within 2 ulp of the
//! correctly rounded value glibc's gives, so silu_mul is compared at 1e-5 relative.

use anyhow::Result;
use openledger_kernels::{
	fused::{self, RopeStyle},
	gpu::{fused as gpu_fused, Gpu},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::compare;

pub const CHECKS: &[crate::Check] = &[
	("rms_norm", rms_norm),
	("add_rms_norm", add_rms_norm),
	("rope", rope),
	("silu_mul", silu_mul),
	("add_assign", add_assign),
];

/// (rows, dim): dims of one, below a warp, not a multiple of the block, above 1024 threads.
const NORM_SHAPES: [(usize, usize); 9] =
	[(1, 1), (7, 576), (3, 4097), (2, 8192), (9, 255), (1, 2), (4, 33), (5, 256), (8, 1536)];

fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
	(0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn rms_norm(gpu: &Gpu) -> Result<()> {
	let mut rng = StdRng::seed_from_u64(11);
	for (rows, dim) in NORM_SHAPES {
		let x = random(&mut rng, rows * dim, 3.0);
		let w = random(&mut rng, dim, 2.0);
		let mut want = vec![0f32; rows * dim];
		fused::rms_norm(&x, &w, 1e-5, &mut want)?;
		let (dx, dw) = (gpu.upload(&x)?, gpu.upload(&w)?);
		let mut dout = gpu.zeros::<f32>(rows * dim)?;
		gpu_fused::rms_norm(gpu, &dx, &dw, 1e-5, &mut dout)?;
		compare(&format!("rms_norm {rows}x{dim}"), &gpu.download(&dout)?, &want, 1e-7, 1e-6)?;
	}
	Ok(())
}

fn add_rms_norm(gpu: &Gpu) -> Result<()> {
	let mut rng = StdRng::seed_from_u64(12);
	for (rows, dim) in NORM_SHAPES {
		let r0 = random(&mut rng, rows * dim, 2.0);
		let x = random(&mut rng, rows * dim, 2.0);
		let w = random(&mut rng, dim, 2.0);
		let mut residual = r0.clone();
		let mut want = vec![0f32; rows * dim];
		fused::add_rms_norm(&mut residual, &x, &w, 1e-6, &mut want)?;
		let (mut dr, dx, dw) = (gpu.upload(&r0)?, gpu.upload(&x)?, gpu.upload(&w)?);
		let mut dout = gpu.zeros::<f32>(rows * dim)?;
		gpu_fused::add_rms_norm(gpu, &mut dr, &dx, &dw, 1e-6, &mut dout)?;
		let what = format!("add_rms_norm {rows}x{dim}");
		compare(&format!("{what} residual"), &gpu.download(&dr)?, &residual, 0.0, 0.0)?;
		compare(&what, &gpu.download(&dout)?, &want, 1e-7, 1e-6)?;
	}
	Ok(())
}

fn rope(gpu: &Gpu) -> Result<()> {
	let mut rng = StdRng::seed_from_u64(13);
	let max_pos = 4096;
	// (tokens, heads, head_dim): decode and prefill, GQA's query and key head counts.
	for (tokens, heads, d) in [(1, 1, 2), (5, 9, 64), (3, 3, 64), (17, 32, 128), (1, 8, 128)] {
		let (cos, sin) = fused::rope_tables(d, max_pos, 10000.0)?;
		let (dcos, dsin) = (gpu.upload(&cos)?, gpu.upload(&sin)?);
		for style in [RopeStyle::Neox, RopeStyle::Gptj] {
			let x = random(&mut rng, tokens * heads * d, 2.0);
			let positions: Vec<u32> =
				(0..tokens).map(|_| rng.random_range(0..max_pos as u32)).collect();
			let mut want = x.clone();
			fused::rope(&mut want, heads, d, &positions, &cos, &sin, style)?;
			let mut dx = gpu.upload(&x)?;
			let dpos = gpu.upload(&positions)?;
			gpu_fused::rope(gpu, &mut dx, heads, d, &dpos, &dcos, &dsin, style)?;
			let what = format!("rope {style:?} {tokens}x{heads}x{d}");
			compare(&what, &gpu.download(&dx)?, &want, 1e-7, 1e-6)?;
		}
	}
	Ok(())
}

fn silu_mul(gpu: &Gpu) -> Result<()> {
	let mut rng = StdRng::seed_from_u64(14);
	for (rows, inter) in [(1, 1), (7, 1536), (3, 1001), (9, 4097), (2, 8192)] {
		let gate_up = random(&mut rng, rows * 2 * inter, 8.0);
		let mut want = vec![0f32; rows * inter];
		fused::silu_mul(&gate_up, inter, &mut want)?;
		let dgu = gpu.upload(&gate_up)?;
		let mut dout = gpu.zeros::<f32>(rows * inter)?;
		gpu_fused::silu_mul(gpu, &dgu, inter, &mut dout)?;
		compare(&format!("silu_mul {rows}x{inter}"), &gpu.download(&dout)?, &want, 1e-7, 1e-5)?;

		let gate = random(&mut rng, rows * inter, 8.0);
		let up = random(&mut rng, rows * inter, 8.0);
		fused::silu_mul_split(&gate, &up, &mut want)?;
		let (dg, du) = (gpu.upload(&gate)?, gpu.upload(&up)?);
		gpu_fused::silu_mul_split(gpu, &dg, &du, &mut dout)?;
		let what = format!("silu_mul_split {rows}x{inter}");
		compare(&what, &gpu.download(&dout)?, &want, 1e-7, 1e-5)?;
	}
	Ok(())
}

fn add_assign(gpu: &Gpu) -> Result<()> {
	let mut rng = StdRng::seed_from_u64(15);
	for n in [1, 255, 256, 257, 7 * 576, 100_003] {
		let a = random(&mut rng, n, 4.0);
		let b = random(&mut rng, n, 4.0);
		let mut want = a.clone();
		fused::add_assign(&mut want, &b)?;
		let (mut da, db) = (gpu.upload(&a)?, gpu.upload(&b)?);
		gpu_fused::add_assign(gpu, &mut da, &db)?;
		compare(&format!("add_assign {n}"), &gpu.download(&da)?, &want, 0.0, 0.0)?;
	}
	Ok(())
}
