//! JSON-RPC calls to the node the worker follows (DataNet records, registered prompts).

use jsonrpsee::{
	core::{client::ClientT, traits::ToRpcParams},
	ws_client::WsClient,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a call to the node failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
	/// The node could not be reached or refused the call.
	#[error("RPC {method}: {reason}")]
	Rpc {
		/// The method called.
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

/// `method`'s answer to `params`, parsed as a `T`.
pub async fn call<T: DeserializeOwned>(
	client: &WsClient,
	method: &str,
	params: impl ToRpcParams + Send,
) -> Result<T, CallError> {
	let value: Value = client
		.request(method, params)
		.await
		.map_err(|e| CallError::Rpc { method: method.into(), reason: e.to_string() })?;
	serde_json::from_value(value)
		.map_err(|e| CallError::Malformed { method: method.into(), reason: e.to_string() })
}
