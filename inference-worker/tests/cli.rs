//! The `openledger-worker generate` command, as an outside check drives it: one JSON object
//! with the prompt's ids, the generated ids, their log-probabilities and the text; clear errors
//! for bad input.

use std::process::Command;

use openledger_inference_worker::models;
use serde_json::{json, Value};

fn worker() -> Command {
	Command::new(env!("CARGO_BIN_EXE_openledger-worker"))
}

#[test]
fn generate_prints_one_json_object_that_matches_transformers() {
	let model = models::smollm2_gguf();
	assert!(model.exists(), "{} is missing: run scripts/fetch-models.sh", model.display());
	let fixture: Value =
		serde_json::from_str(include_str!("fixtures/hf_smollm2.json")).expect("fixture");
	let case = &fixture["cases"][0];
	let output = worker()
		.args(["generate", "--model"])
		.arg(&model)
		.args(["--prompt", case["prompt"].as_str().unwrap()])
		.args(["--max-tokens", "8", "--temperature", "0", "--dequantize", "--json"])
		.args(["--top-logprobs", "3", "--prompt-logprobs", "2"])
		.output()
		.expect("the worker runs");
	let stdout = String::from_utf8_lossy(&output.stdout);
	assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
	let lines: Vec<&str> = stdout.lines().collect();
	assert_eq!(lines.len(), 1, "exactly one line of JSON: {stdout}");
	let out: Value = serde_json::from_str(lines[0]).expect("valid JSON");
	assert_eq!(out["prompt_tokens"], case["prompt_tokens"]);
	let tokens = out["tokens"].as_array().expect("tokens");
	assert_eq!(tokens.len(), 8);
	assert_eq!(tokens[..], case["base"]["tokens"].as_array().unwrap()[..8]);
	let logprobs = out["logprobs"].as_array().expect("logprobs");
	assert_eq!(logprobs.len(), 8);
	assert!(logprobs.iter().all(|l| l.as_f64().is_some_and(|l| l <= 0.0)));
	// Greedy: each step's most likely token, of the three listed, is the one generated.
	let top = out["top_logprobs"].as_array().expect("top_logprobs");
	assert_eq!(top.len(), 8);
	for (i, step) in top.iter().enumerate() {
		assert_eq!(step.as_array().map(Vec::len), Some(3), "{step}");
		assert_eq!(step[0], json!([tokens[i], logprobs[i]]), "step {i}");
	}
	assert!(out["text"].as_str().is_some_and(|t| !t.is_empty()), "{out}");
	assert_eq!(out["finish_reason"], "length");
	// The prompt's log-probabilities are transformers' (dequantized weights).
	let prompt = &out["prompt_logprobs"];
	let theirs = case["base"]["prompt_logprobs"]["logprobs"].as_array().unwrap();
	let ours = prompt["logprobs"].as_array().expect("prompt logprobs");
	assert_eq!(ours.len(), theirs.len());
	for (a, b) in ours.iter().zip(theirs) {
		assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4, "{a} vs {b}");
	}
	let top = prompt["top_logprobs"].as_array().unwrap();
	assert!(top.iter().all(|t| t.as_array().map(Vec::len) == Some(2)), "{prompt}");
}

/// `--kernels` (the decoder composed of the compute kernels, on their CPU references) gives the
/// tokens the candle path gives on the same dequantized values, with and without an adapter;
/// `--gpu` without a GPU is a clear error.
#[test]
fn the_kernel_decoder_generates_what_the_candle_decoder_generates() {
	let model = models::smollm2_gguf();
	let dir = tempfile::tempdir().unwrap();
	let spec = openledger_inference_worker::lora::synthetic::SyntheticAdapter {
		seed: 3,
		rank: 8,
		alpha: 16.0,
		targets: openledger_inference_worker::lora::Projection::ALL.to_vec(),
		rank_pattern: Default::default(),
		alpha_pattern: Default::default(),
	};
	let (dense, _) = openledger_inference_worker::model::Llama::load(
		&model,
		&candle_core::Device::Cpu,
		openledger_inference_worker::model::WeightFormat::AsStored,
	)
	.unwrap();
	openledger_inference_worker::lora::synthetic::write(&spec, &dense.config, dir.path()).unwrap();
	for adapter in [None, Some(dir.path())] {
		let run = |extra: &[&str]| {
			let mut command = worker();
			command.args(["generate", "--model"]).arg(&model);
			if let Some(adapter) = adapter {
				command.arg("--adapter").arg(adapter);
			}
			let output = command
				.args(["--prompt", "The capital of France is", "--max-tokens", "6"])
				.args(["--temperature", "0", "--json"])
				.args(extra)
				.output()
				.unwrap();
			assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
			serde_json::from_slice::<Value>(&output.stdout).unwrap()
		};
		let kernels = run(&["--kernels"]);
		let candle = run(&["--dequantize"]);
		assert_eq!(kernels["tokens"], candle["tokens"], "adapter {adapter:?}");
		assert_eq!(kernels["text"], candle["text"]);
	}
	let output = worker()
		.args(["generate", "--model"])
		.arg(&model)
		.args(["--prompt", "hello", "--kernels", "--gpu"])
		.output()
		.unwrap();
	if openledger_kernels::gpu::Gpu::first().ok().flatten().is_none() {
		assert!(!output.status.success());
		let stderr = String::from_utf8_lossy(&output.stderr);
		assert!(stderr.contains("no CUDA driver or device"), "{stderr}");
	}
}

#[test]
fn chat_wraps_the_prompt_in_the_models_template() {
	let model = models::smollm2_gguf();
	let fixture: Value =
		serde_json::from_str(include_str!("fixtures/hf_smollm2.json")).expect("fixture");
	let chat = &fixture["chats"][0];
	let message = chat["messages"][0]["content"].as_str().unwrap();
	let output = worker()
		.args(["generate", "--model"])
		.arg(&model)
		.args(["--chat", "--prompt", message, "--max-tokens", "2", "--json"])
		.output()
		.expect("the worker runs");
	assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
	let out: Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
	assert_eq!(
		out["prompt_tokens"], chat["prompt_tokens"],
		"the template as transformers renders it"
	);
}

/// `--regex`: the printed text matches the expression whole (as the regex crate finds), sampled
/// hot; an expression that cannot be served is a clear error.
#[test]
fn generate_holds_the_output_to_a_regular_expression() {
	let model = models::smollm2_gguf();
	let pattern = r"[A-Z][a-z]{1,12} is [0-9]{1,3} years old\.";
	let full = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
	for seed in ["1", "2"] {
		let output = worker()
			.args(["generate", "--model"])
			.arg(&model)
			.args(["--prompt", "Tell me about someone.", "--max-tokens", "40"])
			.args(["--temperature", "2", "--seed", seed, "--regex", pattern, "--json"])
			.output()
			.expect("the worker runs");
		assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
		let out: Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
		let text = out["text"].as_str().unwrap();
		assert_eq!(out["finish_reason"], "eos", "{text:?}");
		assert!(full.is_match(text), "{text:?}");
	}
	let output = worker()
		.args(["generate", "--model"])
		.arg(&model)
		.args(["--prompt", "x", "--regex", "(unclosed"])
		.output()
		.unwrap();
	assert!(!output.status.success());
	let stderr = String::from_utf8_lossy(&output.stderr);
	assert!(
		stderr.contains("--regex \"(unclosed\"") && stderr.contains("unclosed group"),
		"{stderr}"
	);
}

/// `generate --grammar` and `--grammar-file`: the whole output is a sentence of the GBNF
/// grammar (checked by the regex crate against an expression of the same language written
/// by hand), and a grammar that cannot be served is refused with where and why.
#[test]
fn generate_holds_the_output_to_a_grammar() {
	let model = models::smollm2_gguf();
	let grammar = "root ::= name \" is \" age \" years old.\"\n\
	               name ::= [A-Z] [a-z]{1,12}\n\
	               age ::= [1-9] [0-9]? | \"100\"";
	let full = regex::Regex::new(r"^[A-Z][a-z]{1,12} is ([1-9][0-9]?|100) years old\.$").unwrap();
	let dir = tempfile::tempdir().unwrap();
	let file = dir.path().join("age.gbnf");
	std::fs::write(&file, grammar).unwrap();
	for (seed, from_file) in [("1", true), ("2", false)] {
		let mut command = worker();
		command.args(["generate", "--model"]).arg(&model);
		command.args(["--prompt", "Tell me about someone.", "--max-tokens", "40"]);
		command.args(["--temperature", "2", "--seed", seed, "--json"]);
		match from_file {
			true => command.arg("--grammar-file").arg(&file),
			false => command.args(["--grammar", grammar]),
		};
		let output = command.output().expect("the worker runs");
		assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
		let out: Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
		let text = out["text"].as_str().unwrap();
		assert_eq!(out["finish_reason"], "eos", "{text:?}");
		assert!(full.is_match(text), "{text:?}");
	}
	std::fs::write(&file, "root ::= name\n").unwrap();
	let output = worker()
		.args(["generate", "--model"])
		.arg(&model)
		.args(["--prompt", "x", "--grammar-file"])
		.arg(&file)
		.output()
		.unwrap();
	assert!(!output.status.success());
	let stderr = String::from_utf8_lossy(&output.stderr);
	assert!(
		stderr.contains("age.gbnf")
			&& stderr.contains("the rule \"name\" (at line 1, column 10) is not defined"),
		"{stderr}"
	);
}

/// `--allowed-token-ids` keeps the output to those tokens; `--include-stop-str-in-output`
/// keeps the stop text that ended it.
#[test]
fn generate_keeps_to_allowed_tokens_and_may_keep_its_stop() {
	let model = models::smollm2_gguf();
	let run = |extra: &[&str]| {
		let mut command = worker();
		command.args(["generate", "--model"]).arg(&model);
		command.args(["--prompt", "The capital of France is", "--max-tokens", "12", "--json"]);
		command.args(["--temperature", "1.5", "--seed", "3"]).args(extra);
		let output = command.output().expect("the worker runs");
		assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
		serde_json::from_slice::<Value>(&output.stdout).expect("valid JSON")
	};
	let plain = run(&[]);
	let tokens: Vec<u64> =
		plain["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
	let allowed: Vec<u64> = tokens[..tokens.len() / 2].to_vec();
	let list = allowed.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
	let kept = run(&["--allowed-token-ids", &list]);
	let generated = kept["tokens"].as_array().unwrap();
	assert_eq!(generated.len(), 12, "{kept}");
	assert!(generated.iter().all(|t| allowed.contains(&t.as_u64().unwrap())), "{kept}");
	// A stop sequence from the plain answer: cut, or kept with what is before it.
	let text = plain["text"].as_str().unwrap();
	let stop: String = text.chars().skip(4).take(3).collect();
	let cut = run(&["--stop", &stop]);
	let with = run(&["--stop", &stop, "--include-stop-str-in-output"]);
	let before = &text[..text.find(&stop).unwrap()];
	assert_eq!(cut["text"], before);
	assert_eq!(with["text"], format!("{before}{stop}"));
}

#[test]
fn bad_input_gets_a_clear_error() {
	let dir = tempfile::tempdir().unwrap();
	let not_gguf = dir.path().join("model.gguf");
	std::fs::write(&not_gguf, b"definitely not a GGUF file").unwrap();
	let output = worker()
		.args(["generate", "--model"])
		.arg(&not_gguf)
		.args(["--prompt", "hello", "--json"])
		.output()
		.unwrap();
	assert!(!output.status.success());
	let stderr = String::from_utf8_lossy(&output.stderr);
	assert!(stderr.contains("is not a GGUF file"), "{stderr}");

	let model = models::smollm2_gguf();
	let missing_adapter = dir.path().join("no-such-adapter");
	let output = worker()
		.args(["generate", "--model"])
		.arg(&model)
		.arg("--adapter")
		.arg(&missing_adapter)
		.args(["--prompt", "hello", "--json"])
		.output()
		.unwrap();
	assert!(!output.status.success());
	let stderr = String::from_utf8_lossy(&output.stderr);
	assert!(stderr.contains("adapter_config.json"), "{stderr}");

	let output = worker()
		.args(["generate", "--model"])
		.arg(&model)
		.args(["--prompt", "hello", "--max-tokens", "100000"])
		.output()
		.unwrap();
	assert!(!output.status.success());
	let stderr = String::from_utf8_lossy(&output.stderr);
	assert!(stderr.contains("exceed the model's context"), "{stderr}");
}

#[test]
fn content_hash_prints_blake2b_256_and_stores_under_it() {
	let dir = tempfile::tempdir().unwrap();
	let file = dir.path().join("record.txt");
	std::fs::write(&file, "abc").unwrap();
	let store = dir.path().join("content");
	let output =
		worker().arg("content-hash").arg(&file).arg("--store").arg(&store).output().unwrap();
	let stdout = String::from_utf8_lossy(&output.stdout);
	assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
	let line: Value = serde_json::from_str(stdout.trim()).unwrap();
	// BLAKE2b-256 of "abc" (RFC 7693's test vector at 32 bytes; Python's hashlib agrees).
	let hash = "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319";
	assert_eq!(line["content_hash"], json!(format!("0x{hash}")));
	assert_eq!(line["size"], json!(3));
	assert_eq!(std::fs::read_to_string(store.join(hash)).unwrap(), "abc");
	let missing = worker().args(["content-hash", "/no/such/file"]).output().unwrap();
	assert!(!missing.status.success());
	assert!(String::from_utf8_lossy(&missing.stderr).contains("/no/such/file"));
}

#[test]
fn content_hash_of_an_adapter_names_its_two_files_and_stores_them_in_a_folder() {
	let dir = tempfile::tempdir().unwrap();
	let adapter = dir.path().join("my-lora");
	std::fs::create_dir(&adapter).unwrap();
	std::fs::write(adapter.join("adapter_config.json"), r#"{"r": 8}"#).unwrap();
	std::fs::write(adapter.join("adapter_model.safetensors"), [1u8; 40]).unwrap();
	let store = dir.path().join("content");
	let stored_with_hash = || {
		let mut command = worker();
		command.arg("content-hash").arg("--adapter").arg(&adapter).arg("--store").arg(&store);
		command.output().unwrap()
	};
	let output = stored_with_hash();
	let stdout = String::from_utf8_lossy(&output.stdout);
	assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
	let line: Value = serde_json::from_str(stdout.trim()).unwrap();
	let hash = hex::encode(openledger_primitives::adapter_content_hash(br#"{"r": 8}"#, &[1u8; 40]));
	assert_eq!(line["content_hash"], json!(format!("0x{hash}")));
	assert_eq!(line["size"], json!(48));
	let stored = store.join(&hash);
	assert_eq!(std::fs::read(stored.join("adapter_model.safetensors")).unwrap(), [1u8; 40]);
	assert_eq!(std::fs::read_dir(&store).unwrap().count(), 1, "no partial folder left");
	// Stored again over a folder that holds other bytes: the folder replaced whole, nothing
	// left aside.
	std::fs::write(stored.join("adapter_model.safetensors"), b"stale").unwrap();
	assert!(stored_with_hash().status.success());
	assert_eq!(std::fs::read(stored.join("adapter_model.safetensors")).unwrap(), [1u8; 40]);
	assert_eq!(std::fs::read_dir(&stored).unwrap().count(), 2);
	assert_eq!(std::fs::read_dir(&store).unwrap().count(), 1, "nothing left aside");
	std::fs::remove_file(adapter.join("adapter_model.safetensors")).unwrap();
	let missing = worker().arg("content-hash").arg("--adapter").arg(&adapter).output().unwrap();
	assert!(!missing.status.success());
	assert!(String::from_utf8_lossy(&missing.stderr).contains("adapter_model.safetensors"));
}

#[test]
fn serve_refuses_chain_options_that_do_not_go_together() {
	let dir = tempfile::tempdir().unwrap();
	let serve = |extra: &[&str]| {
		let output = worker()
			.args(["serve", "--model", "unused.gguf", "--embedding-model", "unused"])
			.args(extra)
			.output()
			.unwrap();
		assert!(!output.status.success(), "{extra:?} accepted");
		String::from_utf8_lossy(&output.stderr).into_owned()
	};
	let content = dir.path().to_str().unwrap();
	let chain = ["--chain", "ws://127.0.0.1:9", "--datanet", "0", "--content-dir", content];
	assert!(serve(&chain[..2]).contains("--content-dir"));
	assert!(serve(&chain[..4]).contains("--content-dir"));
	let both = [&chain[..], &["--allow-runtime-records"]].concat();
	assert!(serve(&both).contains("cannot be used with"));
	let records = [&chain[..], &["--records", "r.jsonl"]].concat();
	assert!(serve(&records).contains("cannot be used with"));
	let not_a_folder = [&chain[..5], &["/no/such/folder"]].concat();
	assert!(serve(&not_a_folder).contains("is not a folder"));
	assert!(serve(&["--datanet", "0"]).contains("--chain"));
	assert!(serve(&["--adapter", "chain:3=/tmp"]).contains("registered on chain"));
	let named = serve(&["--served-model-name", "chain:0"]);
	assert!(named.contains("--served-model-name \"chain:0\": names that begin"), "{named}");
	let adapters = dir.path().join("adapters");
	std::fs::create_dir_all(adapters.join("chain:3")).unwrap();
	std::fs::write(adapters.join("chain:3/adapter_config.json"), "{}").unwrap();
	let folder = serve(&["--adapters", adapters.to_str().unwrap()]);
	assert!(folder.contains("chain:3") && folder.contains("registered on chain"), "{folder}");
	// DataNets are served with an embedding model; a chain alone (registered prompts) is not.
	let output = worker().args(["serve", "--model", "unused.gguf"]).args(chain).output().unwrap();
	let stderr = String::from_utf8_lossy(&output.stderr);
	assert!(!output.status.success() && stderr.contains("--embedding-model"), "{stderr}");
	let output = worker()
		.args(["serve", "--model", "/no/such/model.gguf", "--chain", "ws://127.0.0.1:9"])
		.args(["--content-dir", content])
		.output()
		.unwrap();
	let stderr = String::from_utf8_lossy(&output.stderr);
	assert!(!output.status.success(), "{stderr}");
	assert!(!stderr.contains("required") && stderr.contains("/no/such/model.gguf"), "{stderr}");
}
