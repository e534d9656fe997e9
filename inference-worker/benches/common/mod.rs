//! What the worker's benches share: their adapters, and whether this is a dry run.

use std::{collections::BTreeMap, path::Path};

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
