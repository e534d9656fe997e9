//! JSON-RPC calls to the node the worker follows (DataNet records, registered prompts and
//! adapters).

use std::{sync::Arc, time::Duration};

use jsonrpsee::{
	core::{client::ClientT, traits::ToRpcParams},
	rpc_params,
	ws_client::{WsClient, WsClientBuilder},
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;

/// The longest a request waits for the node to answer what it names on chain (a registered
/// prompt or adapter; connecting included). The worker's own work on the answer (reading and
/// hashing files) is not counted.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Why reading the node failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RpcError {
	/// The node could not be reached or refused the call.
	#[error("RPC {method}: {reason}")]
	Call {
		/// The method called (or `connect`).
		method: String,
		/// What went wrong.
		reason: String,
	},
	/// The node answered something that is not what its method returns.
	#[error("the node's answer to {method} is malformed: {reason}")]
	Malformed {
		/// The method called.
		method: String,
		/// What is wrong with the answer.
		reason: String,
	},
}

impl RpcError {
	/// The node's answer to `method` is malformed: `reason`.
	pub fn malformed(method: &str, reason: impl Into<String>) -> Self {
		Self::Malformed { method: method.into(), reason: reason.into() }
	}
}

/// A connection to the node at `url` (`ws://...`): each call given up after `timeout`, and
/// connecting too.
pub async fn connect(url: &str, timeout: Duration) -> Result<WsClient, RpcError> {
	WsClientBuilder::default()
		.connection_timeout(timeout)
		.request_timeout(timeout)
		// (A [`Node`]'s connection carries the calls of every request being served.)
		.max_concurrent_requests(4096)
		.build(url)
		.await
		.map_err(|e| RpcError::Call { method: "connect".into(), reason: e.to_string() })
}

/// `method`'s answer to `params`, parsed as a `T`.
pub async fn call<T: DeserializeOwned>(
	client: &WsClient,
	method: &str,
	params: impl ToRpcParams + Send,
) -> Result<T, RpcError> {
	let value: Value = client
		.request(method, params)
		.await
		.map_err(|e| RpcError::Call { method: method.into(), reason: e.to_string() })?;
	serde_json::from_value(value).map_err(|e| RpcError::malformed(method, e.to_string()))
}

/// A 32-byte hash written `0x` and 64 hex digits, as the node's RPC writes them.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
	let bytes = hex::decode(text.strip_prefix("0x")?).ok()?;
	bytes.try_into().ok()
}

/// The hash in `field` of the node's answer to `method` ([`parse_hash`]), or why the answer is
/// malformed.
pub fn hash_field(method: &str, field: &str, text: &str) -> Result<[u8; 32], RpcError> {
	parse_hash(text).ok_or_else(|| {
		RpcError::malformed(method, format!("{field} {text:?} is not 0x and 32 bytes of hex"))
	})
}

/// The node the registries are read from (registered prompts and adapters), over one
/// connection that the requests being served share: made on first use, again once dropped.
pub struct Node {
	/// The node's WebSocket JSON-RPC endpoint.
	url: String,
	/// How long connecting, and each call, may take.
	timeout: Duration,
	/// The connection.
	client: Mutex<Option<Arc<WsClient>>>,
	/// The newest block whose number was asked for, and its number (a block's number never
	/// changes, and the finalized head changes only every few seconds).
	numbered: std::sync::Mutex<Option<(String, u64)>>,
}

impl Node {
	/// The node at `url` (`ws://...`), connecting and each call given up after `timeout`.
	pub fn new(url: impl Into<String>, timeout: Duration) -> Self {
		Self { url: url.into(), timeout, client: Mutex::new(None), numbered: Default::default() }
	}

	/// The number of the block `hash` ([`block_number`]), asked of the node over `client` only
	/// when it is not the newest block asked about.
	pub async fn block_number(&self, client: &WsClient, hash: &str) -> Result<u64, RpcError> {
		let last = || self.numbered.lock().unwrap_or_else(|p| p.into_inner());
		if let Some((_, number)) = last().as_ref().filter(|(known, _)| known == hash) {
			return Ok(*number);
		}
		let number = block_number(client, hash).await?;
		// (A lookup that read an older head and was slower keeps the newer head's number.)
		let mut last = last();
		if last.as_ref().is_none_or(|(_, known)| *known <= number) {
			*last = Some((hash.to_string(), number));
		}
		Ok(number)
	}

	/// What `calls` (to `methods`, connecting included) give, or an error naming `methods`
	/// if the node has not answered them all within the timeout.
	pub async fn within<T, E: From<RpcError>>(
		&self,
		methods: &str,
		calls: impl std::future::Future<Output = Result<T, E>>,
	) -> Result<T, E> {
		tokio::time::timeout(self.timeout, calls).await.map_err(|_| {
			E::from(RpcError::Call {
				method: methods.into(),
				reason: format!("no answer within {} s", self.timeout.as_secs()),
			})
		})?
	}

	/// The connection (no lock is held while it is used), made again if it was dropped.
	pub async fn client(&self) -> Result<Arc<WsClient>, RpcError> {
		let mut client = self.client.lock().await;
		if let Some(connected) = client.as_ref().filter(|c| c.is_connected()) {
			return Ok(connected.clone());
		}
		let connected = connect(&self.url, self.timeout).await?;
		Ok(client.insert(Arc::new(connected)).clone())
	}
}

/// The hash of the node's last finalized block (what the registries are read at, so nothing
/// read is rolled back).
pub async fn finalized_head(client: &WsClient) -> Result<String, RpcError> {
	call(client, "chain_getFinalizedHead", rpc_params![]).await
}

/// The number of the block `hash` (`chain_getHeader`'s, which writes it in hex).
pub async fn block_number(client: &WsClient, hash: &str) -> Result<u64, RpcError> {
	let method = "chain_getHeader";
	let header: Value = call(client, method, rpc_params![hash]).await?;
	let number = header.get("number").and_then(Value::as_str).unwrap_or_default();
	parse_number(number).ok_or_else(|| {
		RpcError::malformed(method, format!("block {hash} has no number in hex: {header}"))
	})
}

/// A block number as the node writes it: `0x` and hex digits.
fn parse_number(text: &str) -> Option<u64> {
	let digits = text.strip_prefix("0x")?;
	let hex = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit());
	hex.then(|| u64::from_str_radix(digits, 16).ok()).flatten()
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn block_numbers_are_parsed() {
		assert_eq!(parse_number("0x0"), Some(0));
		assert_eq!(parse_number("0x1a2b"), Some(0x1a2b));
		assert_eq!(parse_number("0x"), None);
		assert_eq!(parse_number("26"), None);
		assert_eq!(parse_number("0x+1"), None);
	}

	/// A block's number is asked of the node once for as long as that block is the one asked
	/// about, and asked again when another is.
	#[tokio::test]
	async fn a_blocks_number_is_asked_for_once_while_the_head_stays() {
		use std::sync::atomic::{AtomicUsize, Ordering};
		let asked = Arc::new(AtomicUsize::new(0));
		let mut module = jsonrpsee::RpcModule::new(asked.clone());
		module
			.register_method("chain_getHeader", |params, asked, _| {
				asked.fetch_add(1, Ordering::Relaxed);
				let hash: String = params.one()?;
				let number = if hash == "0xaa" { "0x2a" } else { "0x2b" };
				Ok::<_, jsonrpsee::types::ErrorObjectOwned>(serde_json::json!({ "number": number }))
			})
			.unwrap();
		let server = jsonrpsee::server::Server::builder().build("127.0.0.1:0").await.unwrap();
		let url = format!("ws://{}", server.local_addr().unwrap());
		let _running = server.start(module);
		let node = Node::new(url, Duration::from_secs(5));
		let client = node.client().await.unwrap();
		let mut numbers = Vec::new();
		for hash in ["0xaa", "0xaa", "0xbb", "0xbb", "0xaa", "0xbb"] {
			numbers.push(node.block_number(&client, hash).await.unwrap());
		}
		// (An older block asked about late does not displace the newer one.)
		assert_eq!(numbers, [0x2a, 0x2a, 0x2b, 0x2b, 0x2a, 0x2b]);
		assert_eq!(asked.load(Ordering::Relaxed), 3);
	}

	#[test]
	fn hashes_are_parsed() {
		let hash = [7u8; 32];
		assert_eq!(parse_hash(&format!("0x{}", hex::encode(hash))), Some(hash));
		assert_eq!(parse_hash(&hex::encode(hash)), None);
		assert_eq!(parse_hash("0x1234"), None);
		assert_eq!(parse_hash(&format!("0x{}", "zz".repeat(32))), None);
		assert_eq!(hash_field("m", "f", &format!("0x{}", hex::encode(hash))).unwrap(), hash);
		let malformed = hash_field("m", "contentHash", "0x12").unwrap_err();
		assert!(matches!(&malformed, RpcError::Malformed { method, .. } if method == "m"));
		assert!(malformed.to_string().contains("contentHash \"0x12\" is not"), "{malformed}");
	}
}
