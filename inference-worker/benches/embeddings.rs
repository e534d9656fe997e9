//! Sentence embeddings against sentence-transformers, side by side in one run: the same model
//! folder (all-MiniLM-L6-v2), the same texts (DataNet-like records of 10 to about 200 tokens),
//! on the CPU with the same thread count.
//!
//! - sentence-transformers (`scripts/reference/st_throughput.py`, run from here): `encode` with
//!   its own batching (inputs sorted by length, 32 a batch, its default), torch's threads set to
//!   the worker's;
//! - ours: `EmbeddingModel::tokenize` and `embed` (inputs sorted by length, batches of at most
//!   16 MiB of temporaries), tokenization included as in `encode`, with malloc keeping freed
//!   blocks as the worker's `main` has it (`allocator`).
//!
//! Each side embeds all the texts once to warm up, then three times; the fastest pass counts.
//! Then the first 64 texts one call each (a request at a time). Needs python3 with torch and
//! sentence-transformers (`scripts/bench-worker.sh` installs them when missing); without them
//! the baseline row says why it is missing. Prints a Markdown table.

use std::time::Instant;

use openledger_inference_worker::{embeddings::EmbeddingModel, models};

mod common;

const TEXTS: usize = 512;
const SINGLE: usize = 64;
const REPEATS: usize = 3;
const ST_BATCH: usize = 32;

/// Deterministic record-like texts of varied lengths.
fn texts() -> Vec<String> {
	const WORDS: [&str; 16] = [
		"contributors",
		"curated",
		"records",
		"dataset",
		"reward",
		"adapter",
		"attribution",
		"model",
		"inference",
		"proof",
		"token",
		"validator",
		"prompt",
		"retrieval",
		"chain",
		"worker",
	];
	(0..TEXTS)
		.map(|i| {
			let words = 6 + (i * 37) % 120;
			let body: Vec<&str> = (0..words).map(|w| WORDS[(i * 7 + w * 3 + w / 5) % 16]).collect();
			format!("Record {i} of DataNet {}: {}.", i % 9, body.join(" "))
		})
		.collect()
}

/// The fastest of `REPEATS` timed calls of `f`, after one untimed.
fn best_of(mut f: impl FnMut()) -> f64 {
	f();
	(0..REPEATS)
		.map(|_| {
			let start = Instant::now();
			f();
			start.elapsed().as_secs_f64()
		})
		.fold(f64::INFINITY, f64::min)
}

/// sentence-transformers' seconds for all the texts and for the first `SINGLE` one by one, and
/// its versions; or why it could not run.
fn sentence_transformers(texts: &[String], threads: usize) -> Result<(f64, f64, String), String> {
	let root = tempfile::tempdir().map_err(|e| e.to_string())?;
	let spec = serde_json::json!({
		"model": models::minilm_dir(), "texts": texts, "batch": ST_BATCH, "repeats": REPEATS,
		"threads": threads, "single": SINGLE,
	});
	let input = root.path().join("texts.json");
	std::fs::write(&input, spec.to_string()).map_err(|e| e.to_string())?;
	let out = common::run_reference("st_throughput.py", &input)?;
	let versions = format!(
		"torch {}, sentence-transformers {}, {} threads",
		out["torch"], out["sentence_transformers"], out["threads"]
	);
	Ok((
		out["seconds"].as_f64().unwrap_or(f64::NAN),
		out["single_seconds"].as_f64().unwrap_or(f64::NAN),
		versions.replace('"', ""),
	))
}

fn main() {
	// SAFETY: first thing in `main`, before any other thread exists.
	let threads = unsafe { openledger_inference_worker::threads::settle_cpu_threads() };
	// As the worker's `main` does.
	openledger_inference_worker::allocator::keep_freed_memory();
	let dir = models::minilm_dir();
	assert!(dir.exists(), "{} is missing: run scripts/fetch-models.sh", dir.display());
	let model = EmbeddingModel::load(&dir).unwrap();
	let texts = texts();
	let tokens: usize =
		texts.iter().map(|t| model.tokenize(t, Some(model.max_tokens())).unwrap().len()).sum();
	let embed = |texts: &[String]| {
		let inputs: Vec<Vec<u32>> =
			texts.iter().map(|t| model.tokenize(t, Some(model.max_tokens())).unwrap()).collect();
		model.embed(&inputs).unwrap()
	};
	let ours = best_of(|| {
		embed(&texts);
	});
	let start = Instant::now();
	for text in &texts[..SINGLE] {
		embed(std::slice::from_ref(text));
	}
	let ours_single = start.elapsed().as_secs_f64();
	let baseline = sentence_transformers(&texts, threads);

	println!(
		"all-MiniLM-L6-v2 on the CPU ({threads} threads): {TEXTS} texts, {tokens} tokens (with \
		 [CLS] and [SEP]); fastest of {REPEATS} passes; then {SINGLE} texts one call each"
	);
	println!();
	println!("| system | all texts: s | texts/s | tokens/s | vs sentence-transformers | one at a time: ms/text | vs sentence-transformers |");
	println!("|---|---|---|---|---|---|---|");
	let row = |name: &str, seconds: f64, single: f64, base: Option<(f64, f64)>| {
		let ratio = |b: f64, ours: f64| format!("{:.2}x", b / ours);
		println!(
			"| {name} | {seconds:.3} | {:.1} | {:.0} | {} | {:.2} | {} |",
			TEXTS as f64 / seconds,
			tokens as f64 / seconds,
			base.map_or_else(|| "-".into(), |(b, _)| ratio(b, seconds)),
			single * 1e3 / SINGLE as f64,
			base.map_or_else(|| "-".into(), |(_, b)| ratio(b, single)),
		)
	};
	let base = match &baseline {
		Ok((seconds, single, versions)) => {
			row(
				&format!("sentence-transformers, batch {ST_BATCH} ({versions})"),
				*seconds,
				*single,
				Some((*seconds, *single)),
			);
			Some((*seconds, *single))
		}
		Err(why) => {
			println!("| sentence-transformers | SKIPPED: {why} | | | | | |");
			None
		}
	};
	row("ours (candle-transformers BERT)", ours, ours_single, base);
}
