//! End-to-end: a contributor's JavaScript tooling (@polkadot/api,
//! `scripts/registry-client/register-assets.mjs`) registers a DataNet with records, curation and
//! rewards, a prompt, a base model, an adapter and a tool on a `--dev` node, then reads them back
//! through storage and the runtime APIs; this test reads them again through the node's
//! `datanets_*`, `adapters_*`, `prompts_*` and `tools_*` RPC methods.
//!
//! Needs Node.js and the client's npm packages (`npm ci` in `scripts/registry-client`, which
//! `scripts/test.sh` runs).

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{ensure, Context, Result};
use common::{write_adapter, Node};
use openledger_primitives::{adapter_content_hash, ADAPTER_FILES};
use serde_json::json;

/// One OPEN in the smallest unit.
const OPEN: u128 = 1_000_000_000_000_000_000;

fn client_dir() -> PathBuf {
	PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/registry-client")
}

#[tokio::test(flavor = "multi_thread")]
async fn polkadot_js_registers_and_reads_back_assets() -> Result<()> {
	let dir = tempfile::tempdir()?;
	let mut node = Node::start("registry", dir.path(), &["--dev", "--tmp"])?;
	let result = run(&mut node).await;
	node.log_on_error(result)
}

async fn run(node: &mut Node) -> Result<()> {
	let client = client_dir();
	ensure!(
		client.join("node_modules/@polkadot/api").is_dir(),
		"the client's npm packages are missing: run `npm ci` in {} (scripts/test.sh does)",
		client.display()
	);
	let rpc = node.rpc(Duration::from_secs(60)).await?;
	rpc.wait_for("the first block", Duration::from_secs(60), |best, _| best >= 1).await?;

	// The adapter Bob registers, whose content hash the client computes as the README says.
	let files = tempfile::tempdir()?;
	let adapter_dir = files.path().join("medical-qa-lora");
	write_adapter(&adapter_dir, 8, &[("q_proj", 576, 576), ("v_proj", 576, 192)], 2)?;
	let [config, weights] = ADAPTER_FILES.map(|file| std::fs::read(adapter_dir.join(file)));
	let adapter_hash = format!("0x{}", hex::encode(adapter_content_hash(&config?, &weights?)));

	let url = node.ws_url();
	let output = tokio::task::spawn_blocking(move || {
		let mut command = Command::new("node");
		command.arg("register-assets.mjs").arg(&adapter_dir).arg(url).current_dir(client);
		command.output()
	})
	.await?
	.context("running Node.js (is `node` installed?)")?;
	let stdout = String::from_utf8_lossy(&output.stdout);
	let stderr = String::from_utf8_lossy(&output.stderr);
	ensure!(output.status.success(), "the client failed:\n{stdout}\n{stderr}");

	let summary: serde_json::Value =
		serde_json::from_str(stdout.lines().last().context("no summary")?)?;
	ensure!(summary["version"] == 1, "one accepted record: {summary}");
	ensure!(summary["promptVersions"] == 2, "two prompt versions: {summary}");
	ensure!(summary["adapter"] == "0", "an adapter was registered: {summary}");
	ensure!(summary["tool"] == "0", "a tool was registered: {summary}");

	// The node's `datanets_*` RPC methods read the same registry.
	let datanet = summary["datanet"].clone();
	let commitment = rpc.call("datanets_commitment", vec![datanet.clone()]).await?;
	ensure!(commitment["version"] == 1, "datanets_commitment: {commitment}");
	ensure!(commitment["commitment"] == summary["commitment"], "commitment: {commitment}");
	let at_zero = rpc.call("datanets_commitment", vec![datanet.clone(), json!(0)]).await?;
	ensure!(at_zero["commitment"] == format!("0x{}", "00".repeat(32)), "version 0: {at_zero}");
	let page =
		rpc.call("datanets_acceptedRecords", vec![datanet.clone(), json!(0), json!(10)]).await?;
	let page = page.as_array().context("a page is an array")?;
	ensure!(page.len() == 1, "one accepted record: {page:?}");
	ensure!(page[0]["status"]["accepted"] == 0, "accepted first: {page:?}");
	ensure!(page[0]["commitment"] == summary["commitment"], "commitment of the record: {page:?}");
	let bob = page[0]["contributor"].clone();
	let mine =
		rpc.call("datanets_contributorRecords", vec![bob.clone(), json!(null), json!(10)]).await?;
	ensure!(mine.as_array().map(Vec::len) == Some(1), "Bob's records: {mine}");
	let net = rpc.call("datanets_getDataNet", vec![datanet.clone()]).await?;
	ensure!(net["name"] == "medical-qa" && net["curation"] == "Curated", "DataNet: {net}");
	let claimable = rpc.call("datanets_claimable", vec![datanet.clone(), bob]).await?;
	ensure!(claimable == "0", "Bob claimed everything: {claimable}");
	let missing = rpc.call("datanets_getDataNet", vec![json!(999)]).await?;
	ensure!(missing.is_null(), "an unknown DataNet is null: {missing}");
	let bad = rpc.call("datanets_claimable", vec![datanet.clone(), json!("not-an-address")]).await;
	ensure!(bad.is_err(), "a malformed address is an error");

	// The model registry and the tools registry.
	let adapter = rpc.call("adapters_getAdapter", vec![json!(0)]).await?;
	ensure!(adapter["owner"] == page[0]["contributor"], "adapter owner: {adapter}");
	// @polkadot/util-crypto's hash of the files, as the README writes it, is the worker's.
	ensure!(adapter["contentHash"] == adapter_hash, "{adapter} is not {adapter_hash}");
	ensure!(adapter["rank"] == 8 && adapter["targetModules"] == json!(["Q", "V"]), "{adapter}");
	ensure!(
		adapter["datanets"] == json!([{ "datanet": datanet, "weight": 1_000_000_000 }]),
		"trained on the DataNet: {adapter}"
	);
	ensure!(adapter["retired"] == false && adapter["pendingOwner"].is_null(), "{adapter}");
	let model = rpc.call("adapters_getBaseModel", vec![adapter["baseModel"].clone()]).await?;
	ensure!(model["name"] == "SmolLM2-135M-Instruct" && model["quantization"] == "Q4_1", "{model}");
	ensure!(
		model["weightsHash"]
			== "0xb179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
		"base model weights hash: {model}"
	);
	let tool = rpc.call("tools_getTool", vec![json!(0)]).await?;
	ensure!(tool["endpoint"] == "https://tools.example/mcp", "tool endpoint: {tool}");
	ensure!(tool["pricePerCall"] == (OPEN / 200).to_string(), "tool price: {tool}");
	ensure!(tool["paused"] == false, "tool running: {tool}");
	// The prompts registry: version 1 on chain, version 2 off chain.
	let id: u64 = summary["prompt"].as_str().context("prompt id")?.parse()?;
	let prompt = rpc.call("prompts_getPrompt", vec![json!(id)]).await?;
	ensure!(prompt["name"] == "medical-assistant" && prompt["latest"] == 2, "prompt: {prompt}");
	let v1 = rpc.call("prompts_getVersion", vec![json!(id), json!(1)]).await?;
	let text = v1["template"]["inline"].as_str().context("an inline template")?;
	ensure!(
		v1["contentHash"]
			== format!(
				"0x{}",
				hex::encode(openledger_primitives::content_hash_of(text.as_bytes()))
			),
		"version 1's hash is its text's: {v1}"
	);
	ensure!(v1["pricePerUse"] == (OPEN / 100).to_string() && v1["deprecated"] == false, "{v1}");
	let v2 = rpc.call("prompts_getVersion", vec![json!(id), json!(2)]).await?;
	ensure!(v2["template"]["external"]["uri"] == "ipfs://bafy-prompt-v2", "version 2: {v2}");
	ensure!(v2["template"]["external"]["hash"] == v2["contentHash"], "version 2: {v2}");
	let missing = rpc.call("prompts_getVersion", vec![json!(id), json!(3)]).await?;
	ensure!(missing.is_null(), "no version 3: {missing}");
	for (method, id) in [
		("adapters_getAdapter", 99),
		("adapters_getBaseModel", 99),
		("tools_getTool", 99),
		("prompts_getPrompt", 99),
	] {
		let missing = rpc.call(method, vec![json!(id)]).await?;
		ensure!(missing.is_null(), "{method} of an unknown id is null: {missing}");
	}
	Ok(())
}
