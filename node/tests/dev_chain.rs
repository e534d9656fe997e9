//! End-to-end: a `--dev` node on loopback ports takes a signed balance transfer from a Rust
//! client (subxt), includes it, GRANDPA finalizes it, and the balances and fee add up.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::Node;
use subxt::{
	dynamic::{self, Value},
	ext::scale_value::At,
	OnlineClient, PolkadotConfig,
};
use subxt_signer::sr25519::dev;

/// One OPEN in the smallest unit.
const OPEN: u128 = 1_000_000_000_000_000_000;

/// The treasury account: `PalletId(*b"ol/trsry")` as an account ("modl" ++ id, zero padded).
fn treasury() -> [u8; 32] {
	let mut account = [0u8; 32];
	account[..4].copy_from_slice(b"modl");
	account[4..12].copy_from_slice(b"ol/trsry");
	account
}

async fn free_balance(
	api: &OnlineClient<PolkadotConfig>,
	at: subxt::utils::H256,
	who: [u8; 32],
) -> Result<u128> {
	let block = api.at_block(at).await?;
	let address = dynamic::storage::<([u8; 32],), Value>("System", "Account");
	let account = block.storage().fetch(address, (who,)).await?.decode()?;
	account.at("data").at("free").and_then(|v| v.as_u128()).context("System.Account has data.free")
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_node_includes_and_finalizes_a_signed_transfer() -> Result<()> {
	let dir = tempfile::tempdir()?;
	let mut node = Node::start("dev", dir.path(), &["--dev", "--tmp"])?;
	let result = run(&mut node).await;
	node.log_on_error(result)
}

async fn run(node: &mut Node) -> Result<()> {
	let rpc = node.rpc(Duration::from_secs(60)).await?;
	// The dev chain authors and finalizes blocks on its own.
	rpc.wait_for("the first finalized block", Duration::from_secs(60), |_, finalized| {
		finalized >= 1
	})
	.await?;
	let api = node.subxt(Duration::from_secs(10)).await?;

	let (alice, bob, charlie) = (dev::alice(), dev::bob(), dev::charlie());
	let account = |k: &subxt_signer::sr25519::Keypair| -> [u8; 32] { k.public_key().0 };
	let before = api.at_current_block().await?.block_hash();
	let balance_before = |who| free_balance(&api, before, who);
	let (alice_0, bob_0, charlie_0, treasury_0) = (
		balance_before(account(&alice)).await?,
		balance_before(account(&bob)).await?,
		balance_before(account(&charlie)).await?,
		balance_before(treasury()).await?,
	);
	ensure!(bob_0 == 1_000_000 * OPEN, "Bob is endowed with 1,000,000 OPEN, has {bob_0}");

	let amount = 12 * OPEN;
	let transfer = dynamic::transaction(
		"Balances",
		"transfer_keep_alive",
		(charlie.public_key().to_address::<()>(), amount),
	);
	let mut txs = api.at_current_block().await?.transactions();
	let signed = txs.create_signed(&transfer, &bob, Default::default()).await?;
	let quoted_fee = signed.partial_fee_estimate().await?;
	let encoded = signed.encoded().to_vec();
	let in_block = signed.submit_and_watch().await?.wait_for_finalized().await?;
	let block_hash = in_block.block_hash();
	let events = in_block.wait_for_success().await?;
	// The fee is computed with the fee multiplier of the state the transfer was applied on (the
	// including block's parent); the quote before submission used an earlier multiplier.
	let parent = rpc.parent_hash(&format!("{block_hash:?}")).await?;
	let expected_fee = rpc.query_fee(&encoded, &parent).await?;
	ensure!(
		quoted_fee.abs_diff(expected_fee) <= quoted_fee / 100,
		"the fee moved more than 1% in a block: quoted {quoted_fee}, charged {expected_fee}"
	);

	let mut fee_events = 0;
	for event in events.iter() {
		let event = event?;
		if event.pallet_name() == "TransactionPayment" && event.event_name() == "TransactionFeePaid"
		{
			let fields = event.decode_fields_unchecked_as::<Value>()?;
			let fee = fields.at("actual_fee").and_then(|v| v.as_u128()).context("actual_fee")?;
			ensure!(fee == expected_fee, "charged {fee}, payment_queryInfo says {expected_fee}");
			fee_events += 1;
		}
	}
	ensure!(fee_events == 1, "one TransactionFeePaid event, got {fee_events}");

	// The block holding the transfer is final.
	let finalized = rpc.finalized_number().await?;
	let included: u32 = api.at_block(block_hash).await?.block_number().try_into()?;
	ensure!(finalized >= included, "finalized #{finalized} is behind the transfer's #{included}");

	let balance_after = |who| free_balance(&api, block_hash, who);
	let (alice_1, bob_1, charlie_1, treasury_1) = (
		balance_after(account(&alice)).await?,
		balance_after(account(&bob)).await?,
		balance_after(account(&charlie)).await?,
		balance_after(treasury()).await?,
	);
	let fee = expected_fee;
	ensure!(fee > 0, "transfers are not free");
	ensure!(bob_1 == bob_0 - amount - fee, "Bob: {bob_0} -> {bob_1}, fee {fee}");
	ensure!(charlie_1 == charlie_0 + amount, "Charlie: {charlie_0} -> {charlie_1}");
	// 20% of the fee to the treasury, the rest to Alice, the dev chain's only author.
	let to_treasury = fee / 5;
	ensure!(treasury_1 == treasury_0 + to_treasury, "treasury: {treasury_0} -> {treasury_1}");
	ensure!(alice_1 == alice_0 + fee - to_treasury, "Alice: {alice_0} -> {alice_1}");
	Ok(())
}
