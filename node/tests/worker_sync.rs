//! End-to-end: an inference worker (`openledger-worker serve --chain`) follows a DataNet on a
//! `--dev` node. Alice creates an open DataNet and contributes records from a Rust client
//! (subxt); the worker reads the accepted records at finalized blocks, checks them against the
//! DataNet's commitment and their contents against their hashes, and retrieves them by their
//! on-chain ids; a record contributed later is served too; a chat retrieves them and its answer
//! is attributed to them by those ids; a chat names a prompt Alice registered (its latest
//! version off chain, in the content folder), which the answer names and attributes; a
//! request names an adapter Bob registered for the real model (trained on the DataNet, its
//! files stored with `openledger-worker content-hash --adapter --store`), served and named in
//! the answer until Bob retires it; the sync's metrics are in `/metrics`.
//!
//! The worker binary is the one cargo builds beside the node (`cargo test --workspace`, as
//! `scripts/test.sh` runs it); the real models come from `scripts/fetch-models.sh`.

mod common;

use std::{
	fs::File,
	io::{Read, Write},
	net::TcpStream,
	path::{Path, PathBuf},
	process::{Child, Command, Stdio},
	time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use common::{node_binary, write_adapter, Node, Rpc};
use serde_json::{json, Value as Json};
use subxt::{
	dynamic::{self, Value},
	OnlineClient, PolkadotConfig,
};
use subxt_signer::sr25519::{dev, Keypair};

/// The worker binary built beside the node.
fn worker_binary() -> PathBuf {
	node_binary().with_file_name("openledger-worker")
}

/// Where `scripts/fetch-models.sh` put the models (`$OPENLEDGER_MODELS` or
/// `~/.cache/openledger/models`).
fn models_dir() -> PathBuf {
	match std::env::var_os("OPENLEDGER_MODELS") {
		Some(dir) => PathBuf::from(dir),
		None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
			.join(".cache/openledger/models"),
	}
}

/// A running worker, killed when dropped.
struct Worker {
	child: Child,
	log: PathBuf,
}

impl Worker {
	fn log_tail(&self) -> String {
		let text = std::fs::read_to_string(&self.log).unwrap_or_default();
		let lines: Vec<&str> = text.lines().collect();
		lines[lines.len().saturating_sub(30)..].join("\n")
	}

	/// Waits for the worker's "serving ... on http://ADDRESS" line; returns the address.
	fn address(&mut self, timeout: Duration) -> Result<String> {
		let deadline = Instant::now() + timeout;
		loop {
			let text = std::fs::read_to_string(&self.log).unwrap_or_default();
			if let Some(line) = text.lines().find(|l| l.starts_with("openledger-worker: serving")) {
				return Ok(line.rsplit("http://").next().unwrap_or_default().to_string());
			}
			if let Some(status) = self.child.try_wait()? {
				bail!("the worker exited ({status}):\n{}", self.log_tail());
			}
			if Instant::now() > deadline {
				bail!("the worker did not start serving:\n{}", self.log_tail());
			}
			std::thread::sleep(Duration::from_millis(200));
		}
	}
}

impl Drop for Worker {
	fn drop(&mut self) {
		let _ = self.child.kill();
		let _ = self.child.wait();
	}
}

/// One HTTP/1.1 request to the worker; its status and JSON body.
fn http(address: &str, method: &str, path: &str, body: Option<&Json>) -> Result<(u16, Json)> {
	let mut stream = TcpStream::connect(address)?;
	stream.set_read_timeout(Some(Duration::from_secs(120)))?;
	let body = body.map(Json::to_string).unwrap_or_default();
	write!(
		stream,
		"{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
		 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
		body.len()
	)?;
	let mut response = String::new();
	stream.read_to_string(&mut response)?;
	let (head, body) = response.split_once("\r\n\r\n").context("an HTTP response")?;
	let status = head.split_whitespace().nth(1).context("a status line")?.parse()?;
	Ok((status, serde_json::from_str(body).with_context(|| format!("JSON body: {body}"))?))
}

/// Submits `call` signed by `signer` and waits until it is finalized and succeeded.
async fn submit(
	api: &OnlineClient<PolkadotConfig>,
	signer: &Keypair,
	call: impl subxt::transactions::Payload,
) -> Result<()> {
	let mut txs = api.at_current_block().await?.transactions();
	let signed = txs.create_signed(&call, signer, Default::default()).await?;
	signed.submit_and_watch().await?.wait_for_finalized().await?.wait_for_success().await?;
	Ok(())
}

/// Contributes `content` to DataNet 0 and stores it in the worker's content folder.
async fn contribute(
	api: &OnlineClient<PolkadotConfig>,
	content_dir: &Path,
	content: &str,
) -> Result<()> {
	let hash = openledger_primitives::content_hash_of(content.as_bytes());
	std::fs::write(content_dir.join(hex::encode(hash)), content)?;
	let call = dynamic::transaction(
		"DataNets",
		"contribute",
		(
			0u32,
			hash,
			format!("ipfs://{}", hex::encode(&hash[..8])).into_bytes(),
			content.len() as u64,
			None::<Vec<u8>>,
		),
	);
	submit(api, &dev::alice(), call).await
}

/// Polls the worker's `/v1/datanets` until DataNet 0 has `indexed` records.
fn wait_indexed(worker: &Worker, address: &str, indexed: u64) -> Result<Json> {
	let deadline = Instant::now() + Duration::from_secs(120);
	loop {
		let (status, body) = http(address, "GET", "/v1/datanets", None)?;
		ensure!(status == 200, "/v1/datanets: {status} {body}");
		let net = &body["data"][0];
		if net["indexed"] == json!(indexed) {
			return Ok(body);
		}
		if Instant::now() > deadline {
			bail!("DataNet 0 never had {indexed} records indexed: {body}\n{}", worker.log_tail());
		}
		std::thread::sleep(Duration::from_millis(500));
	}
}

const RECORDS: [&str; 3] = [
	"The Eiffel Tower is a wrought-iron lattice tower in Paris, finished in 1889.",
	"Photosynthesis turns light, water and carbon dioxide into glucose and oxygen.",
	"Jupiter is the largest planet in the Solar System.",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_serves_the_accepted_records_of_a_datanet_on_chain() -> Result<()> {
	ensure!(
		worker_binary().exists(),
		"{} is missing: build the workspace (cargo test --workspace builds it)",
		worker_binary().display()
	);
	let models = models_dir();
	ensure!(
		models.join("all-MiniLM-L6-v2").exists(),
		"{} has no models: run scripts/fetch-models.sh",
		models.display()
	);
	let dir = tempfile::tempdir()?;
	let mut node = Node::start("dev", dir.path(), &["--dev", "--tmp"])?;
	let result = run(&mut node, dir.path(), &models).await;
	node.log_on_error(result)
}

async fn run(node: &mut Node, dir: &Path, models: &Path) -> Result<()> {
	let rpc = node.rpc(Duration::from_secs(60)).await?;
	rpc.wait_for("the first finalized block", Duration::from_secs(60), |_, f| f >= 1).await?;
	let api = node.subxt(Duration::from_secs(10)).await?;
	let create = dynamic::transaction(
		"DataNets",
		"create_datanet",
		(
			b"facts".to_vec(),
			b"ipfs://facts".to_vec(),
			[0u8; 32],
			b"CC-BY-4.0".to_vec(),
			Value::unnamed_variant("Open", []),
			Vec::<[u8; 32]>::new(),
			0u32,
		),
	);
	submit(&api, &dev::alice(), create).await?;
	let content_dir = dir.join("content");
	std::fs::create_dir(&content_dir)?;
	for record in &RECORDS[..2] {
		contribute(&api, &content_dir, record).await?;
	}
	// A prompt: version 1 on chain, version 2 off chain (its text in the content folder).
	let register = dynamic::transaction(
		"Prompts",
		"register_prompt",
		(
			b"landmarks".to_vec(),
			Value::unnamed_variant("Inline", [Value::from_bytes(PROMPT_V1)]),
			1_000u128,
		),
	);
	submit(&api, &dev::alice(), register).await?;
	let v2_hash = openledger_primitives::content_hash_of(PROMPT_V2.as_bytes());
	std::fs::write(content_dir.join(hex::encode(v2_hash)), PROMPT_V2)?;
	let external = Value::named_variant(
		"External",
		[("uri", Value::from_bytes("ipfs://landmarks-v2")), ("hash", Value::from_bytes(v2_hash))],
	);
	let publish = dynamic::transaction("Prompts", "publish_version", (0u64, external, 2_000u128));
	submit(&api, &dev::alice(), publish).await?;
	// The real model as base model 0 (governance: sudo), and an adapter of it Bob registers,
	// trained on DataNet 0, its files stored where the worker reads them.
	let base = Value::unnamed_variant(
		"Adapters",
		[Value::named_variant(
			"register_base_model",
			[
				("name", Value::from_bytes("SmolLM2-135M-Instruct")),
				("architecture", Value::from_bytes("llama")),
				("weights_hash", Value::from_bytes(hex::decode(SMOLLM2_SHA256)?)),
				("quantization", Value::from_bytes("Q4_1")),
				("context_length", Value::u128(8192)),
				("license", Value::from_bytes("Apache-2.0")),
			],
		)],
	);
	submit(&api, &dev::alice(), dynamic::transaction("Sudo", "sudo", (base,))).await?;
	// (A failed call under sudo is a successful extrinsic: read the model back.)
	let model = rpc.call("adapters_getBaseModel", vec![json!(0)]).await?;
	ensure!(
		model["weightsHash"] == json!(format!("0x{SMOLLM2_SHA256}")),
		"base model 0 registered: {model}"
	);
	let adapter_hash = store_adapter(dir, &content_dir)?;
	let register = dynamic::transaction(
		"Adapters",
		"register_adapter",
		(
			b"landmarks-lora".to_vec(),
			0u32,
			adapter_hash,
			2u32,
			vec![Value::unnamed_variant("Q", [])],
			b"ipfs://landmarks-lora".to_vec(),
			Value::u128(5_000),
			vec![(0u32, 1_000_000_000u32)],
		),
	);
	submit(&api, &dev::bob(), register).await?;

	let log = dir.join("worker.log");
	let mut worker = Worker {
		child: Command::new(worker_binary())
			.arg("serve")
			.arg("--model")
			.arg(models.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
			.args(["--listen", "127.0.0.1:0", "--embedding-model"])
			.arg(models.join("all-MiniLM-L6-v2"))
			.args(["--chain", &node.ws_url(), "--datanet", "0", "--chain-interval-secs", "1"])
			.arg("--content-dir")
			.arg(&content_dir)
			.stdout(Stdio::null())
			.stderr(File::create(&log)?)
			.spawn()
			.context("starting the worker")?,
		log,
	};
	let address = worker.address(Duration::from_secs(120))?;
	let status = wait_indexed(&worker, &address, 2)?;
	let ids = accepted_ids(&rpc).await?;
	ensure!(ids.len() == 2, "two accepted records on chain: {ids:?}");
	let net = &status["data"][0];
	let chain_net = rpc.call("datanets_getDataNet", vec![json!(0)]).await?;
	ensure!(
		net["commitment"] == chain_net["commitment"] && net["verified"] == json!(2),
		"the worker's commitment {} is the chain's {}",
		net["commitment"],
		chain_net["commitment"]
	);
	ensure!(status["connected"] == json!(true) && status["error"].is_null(), "{status}");

	let retrieve = |query: &str| {
		http(&address, "POST", "/v1/retrieve", Some(&json!({"query": query, "top_k": 1})))
	};
	let (code, found) = retrieve("Which tower was built in Paris?")?;
	ensure!(code == 200, "/v1/retrieve: {code} {found}");
	ensure!(
		found["data"][0]["id"] == json!(ids[0].to_string())
			&& found["data"][0]["datanet"] == json!("0")
			&& found["data"][0]["text"] == json!(RECORDS[0]),
		"the Eiffel Tower record (id {}) first: {found}",
		ids[0]
	);

	// A record contributed while the worker runs is served once finalized.
	contribute(&api, &content_dir, RECORDS[2]).await?;
	wait_indexed(&worker, &address, 3)?;
	let ids = accepted_ids(&rpc).await?;
	let (_, found) = retrieve("the biggest planet")?;
	ensure!(found["data"][0]["id"] == json!(ids[2].to_string()), "Jupiter's record: {found}");

	// A chat grounded on the records retrieved, its answer attributed to them by their
	// on-chain ids.
	let chat = json!({
		"messages": [{"role": "user", "content": "When was the Eiffel Tower finished?"}],
		"retrieval": {"top_k": 2},
		"attribution": {"method": "leave_one_out"},
		"max_tokens": 12,
		"temperature": 0,
	});
	let (code, answer) = http(&address, "POST", "/v1/chat/completions", Some(&chat))?;
	ensure!(code == 200, "/v1/chat/completions: {code} {answer}");
	let retrieved: Vec<&Json> =
		answer["retrieved"].as_array().context("retrieved")?.iter().collect();
	ensure!(
		retrieved.len() == 2 && retrieved[0]["id"] == json!(ids[0].to_string()),
		"the Eiffel Tower record retrieved first: {answer}"
	);
	let scores = answer["choices"][0]["attribution"]["scores"].as_array().context("scores")?;
	let scored: Vec<&Json> = scores.iter().map(|s| &s["id"]).collect();
	let listed: Vec<&Json> = retrieved.iter().map(|r| &r["id"]).collect();
	ensure!(scored == listed, "each retrieved record scored under its id: {answer}");
	ensure!(scores.iter().all(|s| s["score"].as_f64().is_some_and(f64::is_finite)), "{answer}");

	// A chat that names the registered prompt: its latest version, read from the content
	// folder, opens the system message; the answer names it and attributes its part.
	let version = rpc.call("prompts_getVersion", vec![json!(0), json!(2)]).await?;
	ensure!(
		version["template"]["external"]["uri"] == "ipfs://landmarks-v2"
			&& version["contentHash"] == json!(format!("0x{}", hex::encode(v2_hash)))
			&& version["pricePerUse"] == "2000"
			&& version["deprecated"] == json!(false),
		"prompts_getVersion: {version}"
	);
	let prompt = rpc.call("prompts_getPrompt", vec![json!(0)]).await?;
	ensure!(prompt["latest"] == 2 && prompt["name"] == "landmarks", "prompts_getPrompt: {prompt}");
	for (method, params) in
		[("prompts_getPrompt", json!([9])), ("prompts_getVersion", json!([0, 9]))]
	{
		let missing = rpc.call(method, params.as_array().context("params")?.clone()).await?;
		ensure!(missing.is_null(), "{method} of an unknown id is null: {missing}");
	}
	let chat = json!({
		"messages": [{"role": "user", "content": "When was the Eiffel Tower finished?"}],
		"prompt": {"id": 0, "variables": {"city": "Paris"}},
		"documents": [{"id": "note", "text": RECORDS[0]}],
		"attribution": {"method": "leave_one_out"},
		"max_tokens": 8,
		"temperature": 0,
	});
	let (code, answer) = http(&address, "POST", "/v1/chat/completions", Some(&chat))?;
	ensure!(code == 200, "/v1/chat/completions with a prompt: {code} {answer}");
	ensure!(
		answer["prompt"]["id"] == 0
			&& answer["prompt"]["version"] == 2
			&& answer["prompt"]["owner"] == prompt["owner"]
			&& answer["prompt"]["content_hash"] == version["contentHash"]
			&& answer["prompt"]["price_per_use"] == "2000",
		"the prompt used: {answer}"
	);
	let scored = &answer["choices"][0]["attribution"]["prompt"];
	ensure!(
		scored["version"] == 2 && scored["score"].as_f64().is_some_and(f64::is_finite),
		"{answer}"
	);
	let chat = json!({
		"messages": [{"role": "user", "content": "Hi"}],
		"prompt": {"id": 0, "version": 1, "variables": {"city": "Paris"}},
		"max_tokens": 2,
	});
	let (code, answer) = http(&address, "POST", "/v1/chat/completions", Some(&chat))?;
	ensure!(
		code == 200 && answer["prompt"]["version"] == 1,
		"version 1, on chain: {code} {answer}"
	);

	// A chat served with Bob's adapter, named by its id on chain: the answer names it, with the
	// DataNet it was trained on, and attributes its part to Bob.
	let registered = rpc.call("adapters_getAdapter", vec![json!(0)]).await?;
	ensure!(
		registered["contentHash"] == json!(format!("0x{}", hex::encode(adapter_hash))),
		"adapters_getAdapter: {registered}"
	);
	let chat = json!({
		"model": "chain:0",
		"messages": [{"role": "user", "content": "When was the Eiffel Tower finished?"}],
		"documents": [{"id": "note", "text": RECORDS[0]}],
		"attribution": {"method": "leave_one_out"},
		"max_tokens": 8,
		"temperature": 0,
	});
	let (code, answer) = http(&address, "POST", "/v1/chat/completions", Some(&chat))?;
	ensure!(code == 200, "/v1/chat/completions with chain:0: {code} {answer}");
	ensure!(
		answer["model"] == "chain:0"
			&& answer["adapter"]["id"] == 0
			&& answer["adapter"]["owner"] == registered["owner"]
			&& answer["adapter"]["content_hash"] == registered["contentHash"]
			&& answer["adapter"]["price_per_1k_tokens"] == "5000"
			&& answer["adapter"]["datanets"] == json!([{"datanet": 0, "weight": 1_000_000_000}]),
		"the adapter used: {answer}"
	);
	let part = &answer["choices"][0]["attribution"]["adapter"];
	ensure!(
		part["owner"] == registered["owner"] && part["score"].as_f64().is_some_and(f64::is_finite),
		"the adapter's part: {answer}"
	);
	// Retired, it is no longer served.
	let retire = dynamic::transaction("Adapters", "retire_adapter", (0u64,));
	submit(&api, &dev::bob(), retire).await?;
	let (code, answer) = http(&address, "POST", "/v1/chat/completions", Some(&chat))?;
	ensure!(
		code == 404 && answer["error"]["message"].as_str().is_some_and(|m| m.contains("retired")),
		"a retired adapter: {code} {answer}"
	);

	// The sync's metrics.
	let mut stream = TcpStream::connect(&address)?;
	write!(stream, "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
	let mut metrics = String::new();
	stream.read_to_string(&mut metrics)?;
	for line in [
		"openledger_worker_datanet_records_indexed{datanet=\"0\"} 3",
		"openledger_worker_datanet_sync_connected 1",
	] {
		ensure!(metrics.lines().any(|l| l == line), "{line} not in /metrics:\n{metrics}");
	}
	Ok(())
}

/// The SHA-256 of SmolLM2-135M-Instruct.Q4_1.gguf, as published (what `fetch-models.sh`
/// checks).
const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Writes a LoRA adapter of the real model (PEFT's format: rank 2 on the query projections of
/// its first two layers, small deterministic weights) under `dir` and stores it in
/// `content_dir` with `openledger-worker content-hash --adapter --store`; its content hash.
fn store_adapter(dir: &Path, content_dir: &Path) -> Result<[u8; 32]> {
	let adapter = dir.join("landmarks-lora");
	write_adapter(&adapter, 2, &[("q_proj", 576, 576)], 2)?;
	let output = Command::new(worker_binary())
		.arg("content-hash")
		.arg("--adapter")
		.arg(&adapter)
		.arg("--store")
		.arg(content_dir)
		.output()?;
	ensure!(output.status.success(), "content-hash: {}", String::from_utf8_lossy(&output.stderr));
	let line: Json = serde_json::from_slice(&output.stdout)?;
	let hash = line["content_hash"].as_str().context("content_hash")?;
	let mut bytes = [0u8; 32];
	hex::decode_to_slice(hash.trim_start_matches("0x"), &mut bytes)?;
	Ok(bytes)
}

/// The registered prompt's versions: on chain, and off chain.
const PROMPT_V1: &str = "You answer questions about the landmarks of {{city}}.";
const PROMPT_V2: &str = "You answer questions about the landmarks of {{city}} in one sentence.";

/// The ids of DataNet 0's accepted records, in acceptance order.
async fn accepted_ids(rpc: &Rpc) -> Result<Vec<u64>> {
	let page = rpc.call("datanets_acceptedRecords", vec![json!(0), json!(0), json!(10)]).await?;
	page.as_array()
		.context("a page of records")?
		.iter()
		.map(|r| r["id"].as_u64().context("a record id"))
		.collect()
}
