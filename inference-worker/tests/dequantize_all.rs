//! Candle's `CANDLE_DEQUANTIZE_ALL` asks it to hold every quantized matrix dequantized to f32 and
//! multiply by that; the worker's own block product (which otherwise takes Q4_0, Q4_1 and Q8_0
//! out of candle's hands) honours it too. The test sets the process environment, so it is the
//! only test of this binary.

use candle_core::Device;
use openledger_inference_worker::{
	model::{Llama, WeightFormat},
	models,
};

mod common;
use common::last_logits;

#[test]
fn with_candle_dequantize_all_the_stored_blocks_serve_as_their_f32_values() {
	let source = models::smollm2_gguf();
	assert!(source.exists(), "{} is missing: run scripts/fetch-models.sh", source.display());
	let load = |format| Llama::from_gguf(&source, &Device::Cpu, format).unwrap();
	let (dense, tokenizer) = load(WeightFormat::F32);
	let prompt = tokenizer.encode("The capital of France is").unwrap();
	let want = last_logits(&dense, &prompt);
	// Unset, the file's Q4_1 and Q8_0 blocks go through the block product: close to the f32
	// weights' logits, not the same bits.
	let (stored, _) = load(WeightFormat::AsStored);
	assert_ne!(last_logits(&stored, &prompt), want, "the block product gave candle's f32 bits");
	// SAFETY: this binary's one test, on the harness's one test thread; no other thread of the
	// process reads the environment meanwhile. (Candle reads the variable once per thread, on
	// the first quantized matrix that thread loads: this thread has loaded some already, so
	// the load below runs on a fresh one.)
	unsafe { std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1") };
	let (stored, _) = std::thread::scope(|s| s.spawn(|| load(WeightFormat::AsStored)).join())
		.expect("the load thread");
	assert_eq!(last_logits(&stored, &prompt), want, "every matrix held and multiplied in f32");
}
