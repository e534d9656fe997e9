//! Four validators (`--chain local`: Alice, Bob, Charlie, Dave) on loopback author and
//! finalize blocks; with Dave stopped the other three keep authoring and finalizing (GRANDPA
//! needs more than two thirds of the votes: 3 of 4); restarted, Dave catches up to the
//! finalized head.
//!
//! Every node is owned by a `Node`, whose drop kills it, so a failure stops them all.

mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use common::Node;

#[tokio::test(flavor = "multi_thread")]
async fn four_validators_finalize_and_survive_one_outage() -> Result<()> {
	let dir = tempfile::tempdir()?;
	let mut nodes = Vec::new();
	let result = run(dir.path(), &mut nodes).await;
	if result.is_err() {
		for node in &nodes {
			eprintln!("--- {} log ---\n{}", node.name, node.log_tail(30));
		}
	}
	drop(nodes);
	result
}

async fn run(dir: &std::path::Path, nodes: &mut Vec<Node>) -> Result<()> {
	let startup = Duration::from_secs(60);
	let base = |name: &str| dir.join(name).to_string_lossy().into_owned();

	// Validators must have a persistent network key (the node refuses to invent one).
	let node_key = |index: u8| format!("{index:064x}");
	let alice_base = base("alice");
	let alice_key = node_key(1);
	nodes.push(Node::start(
		"alice",
		dir,
		&[
			"--chain",
			"local",
			"--alice",
			"--validator",
			"--base-path",
			&alice_base,
			"--node-key",
			&alice_key,
		],
	)?);
	let alice_rpc = nodes[0].rpc(startup).await?;
	let bootnode =
		format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", nodes[0].p2p_port, alice_rpc.peer_id().await?);

	for (index, name) in [(2, "bob"), (3, "charlie"), (4, "dave")] {
		let path = base(name);
		let flag = format!("--{name}");
		let key = node_key(index);
		nodes.push(Node::start(
			name,
			dir,
			&[
				"--chain",
				"local",
				&flag,
				"--validator",
				"--base-path",
				&path,
				"--bootnodes",
				&bootnode,
				"--node-key",
				&key,
			],
		)?);
	}
	let mut rpcs = Vec::new();
	for node in nodes.iter_mut() {
		rpcs.push(node.rpc(startup).await?);
	}

	// All four see each other and finalize.
	for rpc in &rpcs {
		let deadline = std::time::Instant::now() + startup;
		while rpc.peers().await? < 3 {
			ensure!(std::time::Instant::now() < deadline, "a validator did not find its 3 peers");
			tokio::time::sleep(Duration::from_millis(500)).await;
		}
	}
	let (_, finalized) = rpcs[0]
		.wait_for("finality with 4 validators", Duration::from_secs(90), |best, fin| {
			best >= 4 && fin >= 3
		})
		.await?;
	for rpc in &rpcs[1..] {
		rpc.wait_for("every validator to follow finality", Duration::from_secs(30), |_, fin| {
			fin >= finalized
		})
		.await?;
	}

	// Dave goes down; three of four keep authoring and finalizing.
	nodes[3].stop();
	let (best_at_stop, finalized_at_stop) =
		(rpcs[0].best_number().await?, rpcs[0].finalized_number().await?);
	let (_, finalized_without_dave) = rpcs[0]
		.wait_for("finality without Dave", Duration::from_secs(120), |best, fin| {
			best >= best_at_stop + 4 && fin >= finalized_at_stop + 4
		})
		.await?;
	for rpc in &rpcs[1..3] {
		rpc.wait_for("Bob and Charlie to follow", Duration::from_secs(30), |_, fin| {
			fin >= finalized_without_dave
		})
		.await?;
	}

	// Dave comes back with his database and catches up to the finalized head.
	nodes[3].restart()?;
	let dave = nodes[3].rpc(startup).await?;
	let target = rpcs[0].finalized_number().await?;
	dave.wait_for("Dave to catch up", Duration::from_secs(120), |best, fin| {
		best >= target && fin >= target
	})
	.await?;
	// And the network, Dave included, keeps finalizing.
	dave.wait_for("finality after Dave's return", Duration::from_secs(90), |_, fin| {
		fin >= target + 2
	})
	.await?;
	Ok(())
}
