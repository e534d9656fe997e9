//! End-to-end: a contributor's JavaScript tooling (@polkadot/api) registers a DataNet with
//! records, curation and rewards, and a prompt, on a `--dev` node, then reads them back through
//! storage and the runtime API (`scripts/registry-client/register-assets.mjs`).
//!
//! Needs Node.js and the client's npm packages (`npm ci` in `scripts/registry-client`, which
//! `scripts/test.sh` runs).

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{ensure, Context, Result};
use common::Node;

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

	let url = node.ws_url();
	let output = tokio::task::spawn_blocking(move || {
		Command::new("node").arg("register-assets.mjs").arg(url).current_dir(client).output()
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
	Ok(())
}
