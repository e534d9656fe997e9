//! Helpers for the node's end-to-end tests: start `openledger-node` processes on free loopback
//! ports and talk to them over JSON-RPC.
//!
//! Every process is owned by a [`Node`], which kills and reaps it when dropped, so a failing
//! test (a panic unwinds through the drop) never leaves a node running.

// Each test binary uses only some of these helpers.
#![allow(dead_code)]

use std::{
	fs::File,
	io::Read,
	net::TcpListener,
	path::{Path, PathBuf},
	process::{Child, Command, Stdio},
	time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype};
use serde_json::{json, Value};
use subxt::{
	rpcs::{rpc_params, RpcClient},
	OnlineClient, PolkadotConfig,
};

/// Writes a LoRA adapter in PEFT's format (`adapter_config.json`, `adapter_model.safetensors`)
/// in the folder `dir`: rank `rank` on each of `projections` (the module's name, its input and
/// output widths, as `q_proj` of SmolLM2-135M is `("q_proj", 576, 576)`) of the first `layers`
/// layers, with small deterministic weights.
pub fn write_adapter(
	dir: &Path,
	rank: usize,
	projections: &[(&str, usize, usize)],
	layers: usize,
) -> Result<()> {
	std::fs::create_dir_all(dir)?;
	let values = |n: usize, seed: usize| -> Vec<u8> {
		(0..n)
			.flat_map(|i| ((((i * 7919 + seed) % 1000) as f32 - 500.0) * 1e-5).to_le_bytes())
			.collect()
	};
	let mut tensors = Vec::new();
	for layer in 0..layers {
		for (seed, &(module, width_in, width_out)) in projections.iter().enumerate() {
			let mlp = ["gate_proj", "up_proj", "down_proj"].contains(&module);
			let group = if mlp { "mlp" } else { "self_attn" };
			let prefix = format!("base_model.model.model.layers.{layer}.{group}.{module}");
			let seed = layer + 10 * seed;
			let a = values(rank * width_in, seed);
			tensors.push((format!("{prefix}.lora_A.weight"), vec![rank, width_in], a));
			let b = values(width_out * rank, seed + 7);
			tensors.push((format!("{prefix}.lora_B.weight"), vec![width_out, rank], b));
		}
	}
	let views = tensors
		.iter()
		.map(|(name, shape, bytes)| {
			Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes)?))
		})
		.collect::<Result<Vec<_>>>()?;
	safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors"))?;
	let modules: Vec<&str> = projections.iter().map(|(module, ..)| *module).collect();
	let config = json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank,
		"lora_alpha": 2 * rank, "target_modules": modules, "bias": "none",
		"fan_in_fan_out": false});
	std::fs::write(dir.join("adapter_config.json"), config.to_string())?;
	Ok(())
}

/// The node binary cargo built for these tests.
pub fn node_binary() -> PathBuf {
	PathBuf::from(env!("CARGO_BIN_EXE_openledger-node"))
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
	TcpListener::bind("127.0.0.1:0")
		.and_then(|listener| listener.local_addr())
		.map(|addr| addr.port())
		.expect("the OS hands out a free loopback port")
}

/// A running `openledger-node` process.
pub struct Node {
	/// A name for messages (`alice`, `dev`, ...).
	pub name: String,
	/// The RPC port on 127.0.0.1.
	pub rpc_port: u16,
	/// The p2p port on 127.0.0.1.
	pub p2p_port: u16,
	child: Option<Child>,
	log_path: PathBuf,
	args: Vec<String>,
}

impl Node {
	/// Starts the node with `args` plus loopback ports for RPC, p2p and Prometheus; its output
	/// goes to `<log_dir>/<name>.log`.
	pub fn start(name: &str, log_dir: &Path, args: &[&str]) -> Result<Self> {
		let (rpc_port, p2p_port) = (free_port(), free_port());
		let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
		args.extend([
			"--rpc-port".to_string(),
			rpc_port.to_string(),
			"--listen-addr".into(),
			format!("/ip4/127.0.0.1/tcp/{p2p_port}"),
			"--prometheus-port".into(),
			free_port().to_string(),
			"--no-telemetry".into(),
			"--no-mdns".into(),
			"--name".into(),
			name.to_string(),
		]);
		let mut node = Node {
			name: name.to_string(),
			rpc_port,
			p2p_port,
			child: None,
			log_path: log_dir.join(format!("{name}.log")),
			args,
		};
		node.spawn()?;
		Ok(node)
	}

	fn spawn(&mut self) -> Result<()> {
		let log = File::options()
			.create(true)
			.append(true)
			.open(&self.log_path)
			.with_context(|| format!("opening {}", self.log_path.display()))?;
		let child = Command::new(node_binary())
			.args(&self.args)
			.stdin(Stdio::null())
			.stdout(log.try_clone()?)
			.stderr(log)
			.spawn()
			.with_context(|| format!("starting {}", node_binary().display()))?;
		self.child = Some(child);
		Ok(())
	}

	/// Stops the process (SIGKILL, as a crash or power loss would) and waits for it to exit.
	pub fn stop(&mut self) {
		if let Some(mut child) = self.child.take() {
			let _ = child.kill();
			let _ = child.wait();
		}
	}

	/// Starts the process again with the same arguments and ports.
	pub fn restart(&mut self) -> Result<()> {
		self.stop();
		self.spawn()
	}

	/// Whether the process is still running.
	pub fn is_running(&mut self) -> bool {
		matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
	}

	/// The WebSocket RPC address.
	pub fn ws_url(&self) -> String {
		format!("ws://127.0.0.1:{}", self.rpc_port)
	}

	/// The last `lines` lines of the node's output, for failure messages.
	pub fn log_tail(&self, lines: usize) -> String {
		let mut text = String::new();
		if let Ok(mut file) = File::open(&self.log_path) {
			let _ = file.read_to_string(&mut text);
		}
		let all: Vec<&str> = text.lines().collect();
		all[all.len().saturating_sub(lines)..].join("\n")
	}

	/// Passes `result` through, printing the node's log first if it is an error.
	pub fn log_on_error<T>(&self, result: Result<T>) -> Result<T> {
		if result.is_err() {
			eprintln!("--- {} log ---\n{}", self.name, self.log_tail(60));
		}
		result
	}

	/// Connects a raw JSON-RPC client, retrying until the node's RPC server is up.
	pub async fn rpc(&mut self, timeout: Duration) -> Result<Rpc> {
		let deadline = Instant::now() + timeout;
		loop {
			if !self.is_running() {
				bail!("node {} exited:\n{}", self.name, self.log_tail(40));
			}
			match RpcClient::from_insecure_url(self.ws_url()).await {
				Ok(client) => return Ok(Rpc(client)),
				Err(error) if Instant::now() > deadline => {
					bail!("no RPC from {}: {error}\n{}", self.name, self.log_tail(40))
				}
				Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
			}
		}
	}

	/// Connects a subxt client (which needs the runtime metadata, so the node must be up).
	pub async fn subxt(&mut self, timeout: Duration) -> Result<OnlineClient<PolkadotConfig>> {
		let rpc = self.rpc(timeout).await?;
		Ok(OnlineClient::<PolkadotConfig>::from_rpc_client(rpc.0).await?)
	}
}

impl Drop for Node {
	fn drop(&mut self) {
		self.stop();
	}
}

/// A JSON-RPC connection to one node.
#[derive(Clone)]
pub struct Rpc(pub RpcClient);

fn parse_number(header: &Value) -> Result<u32> {
	let hex = header["number"].as_str().context("header without a number")?;
	Ok(u32::from_str_radix(hex.trim_start_matches("0x"), 16)?)
}

impl Rpc {
	/// The number of the best block.
	pub async fn best_number(&self) -> Result<u32> {
		let header: Value = self.0.request("chain_getHeader", rpc_params![]).await?;
		parse_number(&header)
	}

	/// The number of the last block GRANDPA finalized.
	pub async fn finalized_number(&self) -> Result<u32> {
		let hash: String = self.0.request("chain_getFinalizedHead", rpc_params![]).await?;
		let header: Value = self.0.request("chain_getHeader", rpc_params![hash]).await?;
		parse_number(&header)
	}

	/// The hash of the parent of block `hash` (`0x…`).
	pub async fn parent_hash(&self, hash: &str) -> Result<String> {
		let header: Value = self.0.request("chain_getHeader", rpc_params![hash]).await?;
		Ok(header["parentHash"].as_str().context("header without a parent")?.to_string())
	}

	/// The fee `payment_queryInfo` quotes for an encoded extrinsic in the state of block `at`.
	pub async fn query_fee(&self, extrinsic: &[u8], at: &str) -> Result<u128> {
		let info: Value = self
			.0
			.request("payment_queryInfo", rpc_params![format!("0x{}", hex::encode(extrinsic)), at])
			.await?;
		let fee = info["partialFee"].as_str().context("payment_queryInfo without partialFee")?;
		Ok(fee.parse()?)
	}

	/// Calls `method` with positional `params` and returns its result.
	pub async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value> {
		let mut list = subxt::rpcs::client::RpcParams::new();
		for param in params {
			list.push(param)?;
		}
		Ok(self.0.request(method, list).await?)
	}

	/// The node's libp2p peer id.
	pub async fn peer_id(&self) -> Result<String> {
		Ok(self.0.request("system_localPeerId", rpc_params![]).await?)
	}

	/// The number of peers the node is connected to.
	pub async fn peers(&self) -> Result<u64> {
		let health: Value = self.0.request("system_health", rpc_params![]).await?;
		health["peers"].as_u64().context("system_health without peers")
	}

	/// Waits until `condition(best, finalized)` holds, polling every half second.
	pub async fn wait_for(
		&self,
		what: &str,
		timeout: Duration,
		condition: impl Fn(u32, u32) -> bool,
	) -> Result<(u32, u32)> {
		let deadline = Instant::now() + timeout;
		loop {
			let (best, finalized) = (self.best_number().await?, self.finalized_number().await?);
			if condition(best, finalized) {
				return Ok((best, finalized));
			}
			if Instant::now() > deadline {
				bail!("timed out waiting for {what}: best #{best}, finalized #{finalized}");
			}
			tokio::time::sleep(Duration::from_millis(500)).await;
		}
	}
}
