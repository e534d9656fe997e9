//! Throughput of plain balance transfers on a `--dev` node: the baseline later work compares
//! against. Ignored by default (it loads the machine for a minute); run it with
//! `scripts/bench-transfers.sh`, which prints the numbers recorded in `docs/BENCHMARKS.md`.
//!
//! 256 endowed dev accounts (`//Sender//0` ... `//Sender//255`) each pre-sign transfers with
//! consecutive nonces; all are submitted at once over JSON-RPC; the test then follows the
//! chain until every transfer is included and reports transfers per block and per second.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::Node;
use futures::{stream, StreamExt, TryStreamExt};
use serde_json::Value;
use subxt::{config::DefaultExtrinsicParamsBuilder, dynamic, rpcs::rpc_params, PolkadotConfig};
use subxt_signer::{sr25519::Keypair, SecretUri};

const SENDERS: u32 = 256;
const TRANSFERS_PER_SENDER: u64 = 40;
/// The target block time of the chain.
const BLOCK_TIME_SECS: f64 = 6.0;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run with scripts/bench-transfers.sh"]
async fn transfers_per_second_on_a_dev_node() -> Result<()> {
	let dir = tempfile::tempdir()?;
	let mut node = Node::start(
		"throughput",
		dir.path(),
		&["--dev", "--tmp", "--pool-limit", "20000", "--pool-kbytes", "65536"],
	)?;
	let result = run(&mut node).await;
	node.log_on_error(result)
}

async fn run(node: &mut Node) -> Result<()> {
	let rpc = node.rpc(Duration::from_secs(60)).await?;
	rpc.wait_for("the first finalized block", Duration::from_secs(60), |_, fin| fin >= 1).await?;
	let api = node.subxt(Duration::from_secs(10)).await?;
	let at = api.at_current_block().await?;
	let txs = at.transactions();

	let started = Instant::now();
	let dest = subxt_signer::sr25519::dev::ferdie().public_key().to_address::<()>();
	let mut encoded = Vec::new();
	for index in 0..SENDERS {
		let uri: SecretUri = format!("//Sender//{index}").parse()?;
		let signer = Keypair::from_uri(&uri)?;
		for nonce in 0..TRANSFERS_PER_SENDER {
			let call = dynamic::transaction(
				"Balances",
				"transfer_keep_alive",
				(dest.clone(), 1_000_000_000_000_000u128),
			);
			let params =
				DefaultExtrinsicParamsBuilder::<PolkadotConfig>::new().nonce(nonce).build();
			let tx = txs.create_signable_offline(&call, params)?.sign(&signer)?;
			encoded.push(format!("0x{}", hex::encode(tx.encoded())));
		}
	}
	let total = encoded.len();
	let signing = started.elapsed();

	let start_block = rpc.best_number().await?;
	let submit_started = Instant::now();
	let client = rpc.0.clone();
	stream::iter(encoded)
		.map(|tx| {
			let client = client.clone();
			async move {
				client
					.request::<String>("author_submitExtrinsic", rpc_params![tx])
					.await
					.context("author_submitExtrinsic")
			}
		})
		.buffer_unordered(64)
		.try_collect::<Vec<_>>()
		.await?;
	let submitting = submit_started.elapsed();

	// Follow the chain until every transfer is in a block.
	let mut included = 0usize;
	let mut per_block = Vec::new();
	let mut next = start_block + 1;
	let deadline = Instant::now() + Duration::from_secs(600);
	while included < total {
		ensure!(Instant::now() < deadline, "only {included} of {total} transfers included");
		if rpc.best_number().await? < next {
			tokio::time::sleep(Duration::from_millis(200)).await;
			continue;
		}
		let hash: String = rpc.0.request("chain_getBlockHash", rpc_params![next]).await?;
		let block: Value = rpc.0.request("chain_getBlock", rpc_params![hash]).await?;
		let extrinsics = block["block"]["extrinsics"].as_array().context("block extrinsics")?.len();
		// Every block starts with the timestamp inherent; the rest are our transfers.
		let transfers = extrinsics.saturating_sub(1);
		if transfers > 0 || !per_block.is_empty() {
			per_block.push(transfers);
		}
		included += transfers;
		next += 1;
	}
	// Trailing blocks that were only partly used understate capacity; report both.
	let blocks = per_block.len();
	let max = per_block.iter().copied().max().unwrap_or(0);
	let sustained = total as f64 / (blocks as f64 * BLOCK_TIME_SECS);
	println!("transfers:                 {total} from {SENDERS} senders");
	println!("signing (client):          {:.2} s", signing.as_secs_f64());
	println!(
		"submission over RPC:       {:.2} s ({:.0} tx/s accepted by the pool)",
		submitting.as_secs_f64(),
		total as f64 / submitting.as_secs_f64()
	);
	println!("blocks used:               {blocks}  per block: {per_block:?}");
	println!(
		"max transfers per block:   {max}  ({:.1} tx/s at 6 s blocks)",
		max as f64 / BLOCK_TIME_SECS
	);
	println!("sustained:                 {sustained:.1} transfers/s");
	ensure!(included == total, "{included} included, {total} submitted");
	Ok(())
}
