//! The CUDA kernels against their CPU references.
//!
//! A plain `main` (harness = false) so that what is skipped is said on the console whatever
//! the test runner captures:
//! 1. every CUDA source is compiled by NVRTC, for the baseline architecture and for Hopper,
//!    when `libnvrtc` can be loaded (no GPU needed). With `OPENLEDGER_REQUIRE_NVRTC=1`, as
//!    `scripts/test.sh` sets after fetching NVRTC, a missing NVRTC is a failure, not a skip;
//! 2. when a CUDA device is present, every kernel is run on it and compared with its CPU
//!    reference over many shapes, each family in its own module below. Without a device these
//!    checks are skipped, and the line saying so is printed last; with
//!    `OPENLEDGER_REQUIRE_GPU=1` (`scripts/test.sh`, which puts the CUDA emulator of
//!    `kernels/emulator/` on the library path) a missing device is a failure. On the emulator the
//!    emulator's own checks run too (`emulator.rs`).

mod attention;
mod emulator;
mod fused;
mod lora;
mod quant;
mod sampling;
mod sparse;

use std::time::Instant;

use openledger_kernels::gpu::{self, Gpu};

/// One GPU-against-CPU check.
pub type Check = (&'static str, fn(&Gpu) -> anyhow::Result<()>);

fn main() {
	let mut failed = Vec::new();

	println!("NVRTC compilation of kernels/cuda/*.cu");
	if gpu::nvrtc_available() {
		for source in gpu::SOURCES {
			for arch in [gpu::BASELINE_ARCH, "sm_90"] {
				let start = Instant::now();
				match gpu::compile(&source, arch) {
					Ok(_) => println!(
						"  ok    {}.cu for {arch} ({:.1} s)",
						source.name,
						start.elapsed().as_secs_f64()
					),
					Err(e) => {
						println!("  FAIL  {}.cu for {arch}: {e}", source.name);
						failed.push(format!("compile {}.cu for {arch}", source.name));
					}
				}
			}
		}
		// And a broken source is refused with NVRTC's log, not loaded.
		let broken = gpu::Source {
			name: "broken",
			code: "extern \"C\" __global__ void f() { not_declared_anywhere(); }",
		};
		match gpu::compile(&broken, gpu::BASELINE_ARCH) {
			Err(gpu::GpuError::Compile { log, .. }) if log.contains("not_declared_anywhere") => {
				println!("  ok    a broken source is refused with NVRTC's log")
			}
			other => {
				println!("  FAIL  a broken source gave {other:?}");
				failed.push("broken source".into());
			}
		}
	} else if std::env::var("OPENLEDGER_REQUIRE_NVRTC").as_deref() == Ok("1") {
		println!("  FAIL  OPENLEDGER_REQUIRE_NVRTC=1 but libnvrtc cannot be loaded");
		failed.push("NVRTC missing".into());
	} else {
		println!(
			"  SKIPPED: libnvrtc cannot be loaded (scripts/fetch-nvrtc.sh fetches it; put its \
			 folder on LD_LIBRARY_PATH)"
		);
	}

	let families: [(&str, &[Check]); 6] = [
		("attention", attention::CHECKS),
		("fused", fused::CHECKS),
		("lora", lora::CHECKS),
		("quant", quant::CHECKS),
		("sampling", sampling::CHECKS),
		("sparse", sparse::CHECKS),
	];
	let total: usize = families.iter().map(|(_, checks)| checks.len()).sum();
	let skipped = match Gpu::first() {
		Ok(Some(gpu)) => {
			println!(
				"GPU against CPU on {} ({}), {total} checks",
				gpu.name().unwrap_or_else(|e| e.to_string()),
				gpu.arch()
			);
			for (family, checks) in families {
				for (name, check) in checks {
					let start = Instant::now();
					match check(&gpu) {
						Ok(()) => println!(
							"  ok    {family}::{name} ({:.2} s)",
							start.elapsed().as_secs_f64()
						),
						Err(e) => {
							println!("  FAIL  {family}::{name}: {e:#}");
							failed.push(format!("{family}::{name}"));
						}
					}
				}
			}
			if gpu.is_emulator() {
				for (name, check) in emulator::CHECKS {
					match check(&gpu) {
						Ok(()) => println!("  ok    emulator::{name}"),
						Err(e) => {
							println!("  FAIL  emulator::{name}: {e:#}");
							failed.push(format!("emulator::{name}"));
						}
					}
				}
			}
			None
		}
		Ok(None) if std::env::var("OPENLEDGER_REQUIRE_GPU").as_deref() == Ok("1") => {
			println!("  FAIL  OPENLEDGER_REQUIRE_GPU=1 but there is no CUDA driver or device");
			failed.push("GPU missing".into());
			None
		}
		Ok(None) => Some("no CUDA driver or device on this machine".to_string()),
		Err(e) => {
			println!("  FAIL  opening the GPU: {e}");
			failed.push("open GPU".into());
			None
		}
	};
	if let Some(why) = skipped {
		println!();
		println!("**********************************************************************");
		println!("  SKIPPED: {total} GPU-against-CPU kernel checks ({why}).");
		println!("  Only the CPU references and the NVRTC compilation were tested.");
		println!("**********************************************************************");
	}
	if !failed.is_empty() {
		println!("failed: {}", failed.join(", "));
		std::process::exit(1);
	}
}

/// Fails unless `got` and `want` have the same length and every `|got - want|` is at most
/// `atol + rtol·|want|`; the message names the worst element.
pub fn compare(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> anyhow::Result<()> {
	anyhow::ensure!(
		got.len() == want.len(),
		"{what}: {} values, expected {}",
		got.len(),
		want.len()
	);
	let mut worst: Option<(usize, f32)> = None;
	for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
		let excess = (g - w).abs() - (atol + rtol * w.abs());
		let bad = excess > 0.0 || excess.is_nan();
		if bad && worst.is_none_or(|(_, e)| excess > e || excess.is_nan()) {
			worst = Some((i, excess));
		}
	}
	match worst {
		None => Ok(()),
		Some((i, _)) => anyhow::bail!(
			"{what}: element {i} is {} on the GPU, {} on the CPU (atol {atol}, rtol {rtol})",
			got[i],
			want[i]
		),
	}
}
