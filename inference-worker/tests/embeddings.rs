//! Sentence embeddings of the real all-MiniLM-L6-v2 against sentence-transformers' on the same
//! folder (`tests/fixtures/st_minilm.json`, made by `scripts/reference/st_embeddings.py`): the
//! same token ids and the same vectors, whether the texts are embedded alone or batched
//! together (with padding), and the tokenizer's own 128-token padding and truncation off.

use std::{path::Path, process::Command};

use openledger_inference_worker::{
	embeddings::{cosine, EmbeddingModel, Pooling},
	error::Error,
	models,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Fixture {
	model: String,
	max_seq_length: usize,
	dimensions: usize,
	records: Vec<Record>,
}

#[derive(Debug, Deserialize)]
struct Record {
	text: String,
	tokens: Vec<u32>,
	embedding: Vec<f32>,
}

fn fixture() -> Fixture {
	let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/st_minilm.json");
	serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load() -> EmbeddingModel {
	let dir = models::minilm_dir();
	assert!(dir.exists(), "{} is missing: run scripts/fetch-models.sh", dir.display());
	EmbeddingModel::load(&dir).unwrap()
}

/// The largest difference between two vectors' components.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
	assert_eq!(a.len(), b.len());
	a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Asserts that `got` is sentence-transformers' vector `want` (float32 sums in another order:
/// measured, 3e-7 at most per component).
fn assert_close(got: &[f32], want: &[f32], what: &str) {
	let diff = max_diff(got, want);
	let similarity = cosine(got, want);
	assert!(diff < 2e-6 && similarity > 0.999_999, "{what}: max diff {diff}, cosine {similarity}");
}

#[test]
fn matches_sentence_transformers() {
	let fixture = fixture();
	let model = load();
	assert_eq!(fixture.model, models::MINILM_DIR);
	assert_eq!(model.max_tokens(), fixture.max_seq_length);
	assert_eq!(model.dimensions(), fixture.dimensions);
	assert_eq!(model.pooling(), Pooling::Mean);
	assert!(model.normalizes());
	// The texts longer than the tokenizer's own 128-token cut, and one past the model's 256.
	assert!(fixture.records.iter().any(|r| (129..256).contains(&r.tokens.len())));
	let longest = fixture.records.iter().find(|r| r.tokens.len() == 256).unwrap();

	let mut inputs = Vec::new();
	for record in &fixture.records {
		let tokens = model.tokenize(&record.text, Some(model.max_tokens())).unwrap();
		assert_eq!(tokens, record.tokens, "{:?}", record.text);
		inputs.push(tokens);
	}
	// Untruncated, the longest is refused with a reason, and embedding it fails the same way.
	let whole = model.tokenize(&longest.text, None).unwrap();
	assert!(whole.len() > 256);
	match model.check("input 0", &whole) {
		Err(Error::Request(message)) => {
			assert!(message.contains("more than the embedding model's 256"), "{message}")
		}
		other => panic!("{other:?}"),
	}
	assert!(matches!(model.embed(&[whole]), Err(Error::Request(_))));

	// All together (one batch, padded to the longest), then each alone.
	let together = model.embed(&inputs).unwrap();
	for ((record, got), tokens) in fixture.records.iter().zip(&together).zip(&inputs) {
		assert_close(got, &record.embedding, &format!("batched {:?}", record.text));
		let alone = model.embed(std::slice::from_ref(tokens)).unwrap();
		assert_close(&alone[0], &record.embedding, &format!("alone {:?}", record.text));
		let norm = got.iter().map(|x| x * x).sum::<f32>().sqrt();
		assert!((norm - 1.0).abs() < 1e-5, "{norm}");
	}
	// The two sentences about Paris are nearer each other than to the one about adapters.
	let near = cosine(&together[0], &together[1]);
	let far = cosine(&together[0], &together[2]);
	assert!(near > 0.7 && far < 0.3 && near > far + 0.4, "near {near}, far {far}");
}

#[test]
fn many_inputs_split_into_batches_keep_their_order() {
	let model = load();
	// Far past MAX_TEMPORARY_BYTES in all: several batches, longest first.
	let texts: Vec<String> = (0..120)
		.map(|i| format!("record {i}: {}", "a curated datanet record ".repeat(1 + i % 17)))
		.collect();
	let inputs: Vec<Vec<u32>> = texts.iter().map(|t| model.tokenize(t, None).unwrap()).collect();
	assert!(inputs.iter().map(|t| t.len()).max().unwrap() * inputs.len() > 8192);
	let together = model.embed(&inputs).unwrap();
	for i in [0, 1, 16, 17, 59, 119] {
		let alone = model.embed(&inputs[i..=i]).unwrap();
		assert!(max_diff(&together[i], &alone[0]) < 2e-6, "input {i}");
	}
}

#[test]
fn bad_folders_and_inputs_are_refused_with_a_reason() {
	let model = load();
	assert!(matches!(model.embed(&[vec![]]), Err(Error::Request(m)) if m.contains("no tokens")));
	let vocab = model.vocab_size() as u32;
	assert!(matches!(model.embed(&[vec![101, vocab, 102]]), Err(Error::Request(_))));
	// Truncation keeps the special tokens at both ends.
	let cut = model.tokenize("one two three four five six", Some(4)).unwrap();
	assert_eq!(cut.len(), 4);
	assert_eq!((cut[0], cut[3]), (101, 102));

	// A copy of the folder with a corrupt weights file, then with an unserved module.
	let source = models::minilm_dir();
	let dir = tempfile::tempdir().unwrap();
	for name in ["config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json"] {
		std::fs::copy(source.join(name), dir.path().join(name)).unwrap();
	}
	std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
	std::fs::copy(source.join("1_Pooling/config.json"), dir.path().join("1_Pooling/config.json"))
		.unwrap();
	std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
	match EmbeddingModel::load(dir.path()) {
		Err(Error::Format(message)) => assert!(message.contains("model.safetensors"), "{message}"),
		Err(other) => panic!("{other}"),
		Ok(_) => panic!("a corrupt weights file was loaded"),
	}
	std::fs::copy(source.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
	assert!(EmbeddingModel::load(dir.path()).is_ok());
	let modules = std::fs::read_to_string(dir.path().join("modules.json")).unwrap();
	let dense = modules
		.replace("sentence_transformers.models.Normalize", "sentence_transformers.models.Dense");
	std::fs::write(dir.path().join("modules.json"), dense).unwrap();
	match EmbeddingModel::load(dir.path()) {
		Err(Error::Unsupported(message)) => assert!(message.contains("Dense"), "{message}"),
		Err(other) => panic!("{other}"),
		Ok(_) => panic!("a Dense module was taken"),
	}
}

#[test]
fn the_embed_command_prints_the_embeddings() {
	let fixture = fixture();
	let record = &fixture.records[0];
	let output = Command::new(env!("CARGO_BIN_EXE_openledger-worker"))
		.arg("embed")
		.arg("--model")
		.arg(models::minilm_dir())
		.args(["--text", &record.text, "--text", &fixture.records[1].text])
		.output()
		.unwrap();
	assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
	let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
		.unwrap()
		.lines()
		.map(|l| serde_json::from_str(l).unwrap())
		.collect();
	assert_eq!(lines.len(), 2);
	assert_eq!(lines[0]["index"], 0);
	assert_eq!(lines[0]["tokens"], record.tokens.len());
	let got: Vec<f32> = serde_json::from_value(lines[0]["embedding"].clone()).unwrap();
	assert_close(&got, &record.embedding, "embed --text");

	// A text past the model's length is refused unless --truncate.
	let longest = fixture.records.iter().find(|r| r.tokens.len() == 256).unwrap();
	let embed = |truncate: bool| {
		let mut command = Command::new(env!("CARGO_BIN_EXE_openledger-worker"));
		command
			.arg("embed")
			.arg("--model")
			.arg(models::minilm_dir())
			.args(["--text", &longest.text]);
		if truncate {
			command.arg("--truncate");
		}
		command.output().unwrap()
	};
	let refused = embed(false);
	assert!(!refused.status.success());
	assert!(
		String::from_utf8_lossy(&refused.stderr).contains("more than the embedding model's 256")
	);
	let cut = embed(true);
	assert!(cut.status.success());
	let line: serde_json::Value = serde_json::from_slice(&cut.stdout).unwrap();
	let got: Vec<f32> = serde_json::from_value(line["embedding"].clone()).unwrap();
	assert_close(&got, &longest.embedding, "embed --truncate");
}
