//! What the worker's benches share: their adapters, whether this is a dry run, and running a
//! Python baseline.

// Each bench uses only some of these.
#![allow(dead_code)]

use std::{collections::BTreeMap, path::Path, process::Command};

use openledger_inference_worker::{
	config::LlamaConfig,
	lora::{
		synthetic::{self, SyntheticAdapter},
		Projection,
	},
};

/// Whether this is a dry run (`OPENLEDGER_BENCH_DRY_RUN=1`): toy sizes, also on the CUDA
/// emulator, numbers meaningless.
pub fn dry_run() -> bool {
	std::env::var("OPENLEDGER_BENCH_DRY_RUN").as_deref() == Ok("1")
}

/// Writes `count` synthetic PEFT adapters of rank `rank` on q and v (seeds 0, 1, …) into
/// folders of `root` named `adapter-0000`, …; returns their names.
pub fn write_qv_adapters(
	config: &LlamaConfig,
	root: &Path,
	count: usize,
	rank: usize,
) -> Vec<String> {
	(0..count)
		.map(|i| {
			let name = format!("adapter-{i:04}");
			let spec = SyntheticAdapter {
				seed: i as u64,
				rank,
				alpha: 2.0 * rank as f64,
				targets: vec![Projection::Q, Projection::V],
				rank_pattern: BTreeMap::new(),
				alpha_pattern: BTreeMap::new(),
			};
			synthetic::write(&spec, config, &root.join(&name)).unwrap();
			name
		})
		.collect()
}

/// Runs `scripts/reference/SCRIPT` with `input` (a JSON file) and reads the JSON object it
/// prints; or the last line of its errors. The script is looked for from the repository's root
/// (a copy of the tree on a GPU machine), else where the bench was built.
pub fn run_reference(script: &str, input: &Path) -> Result<serde_json::Value, String> {
	let relative = Path::new("scripts/reference").join(script);
	let path = Some(relative.clone())
		.filter(|p| p.exists())
		.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&relative));
	let output = Command::new("python3")
		.arg(path)
		.arg(input)
		.output()
		.map_err(|e| format!("python3: {e}"))?;
	if !output.status.success() {
		let stderr = String::from_utf8_lossy(&output.stderr);
		return Err(stderr.lines().last().unwrap_or("no output").to_string());
	}
	serde_json::from_slice(&output.stdout).map_err(|e| format!("its output: {e}"))
}
