//! The registries' RPC methods: what clients read from the DataNets, adapters, prompts and
//! tools registries, through the runtime APIs, as JSON. Each method takes an optional block hash as
//! its last parameter (the best block when it is left out). Accounts are SS58 strings, balances
//! decimal strings in the smallest unit, hashes `0x`-prefixed hex.

pub mod adapters;
pub mod datanets;
pub mod prompts;
pub mod tools;

use jsonrpsee::types::ErrorObjectOwned;
use openledger_runtime::{opaque::Block, AccountId, Hash};
use serde_json::Value;
use sp_blockchain::HeaderBackend;
use sp_core::crypto::{Ss58AddressFormat, Ss58Codec};

/// What a method returns: JSON, or a JSON-RPC error.
pub(crate) type RpcResult = Result<Value, ErrorObjectOwned>;

/// A JSON-RPC "invalid params" error.
pub(crate) fn invalid_params(message: impl ToString) -> ErrorObjectOwned {
	ErrorObjectOwned::owned(
		jsonrpsee::types::error::INVALID_PARAMS_CODE,
		message.to_string(),
		None::<()>,
	)
}

/// The error of a runtime API call that failed (an unknown block, a runtime without the API).
pub(crate) fn runtime_error(error: impl std::fmt::Display) -> ErrorObjectOwned {
	ErrorObjectOwned::owned(1, format!("runtime API call failed: {error}"), None::<()>)
}

/// An account in the chain's SS58 format.
pub(crate) fn ss58(account: &AccountId) -> String {
	account.to_ss58check_with_version(Ss58AddressFormat::custom(
		openledger_runtime::token::SS58_FORMAT,
	))
}

/// An account from its SS58 form, or an "invalid params" error.
pub(crate) fn parse_account(text: &str) -> Result<AccountId, ErrorObjectOwned> {
	AccountId::from_ss58check(text)
		.map_err(|e| invalid_params(format!("bad account {text:?}: {e:?}")))
}

/// `0x`-prefixed hex of a 32-byte hash.
pub(crate) fn hex32(bytes: &[u8; 32]) -> String {
	format!("0x{}", hex::encode(bytes))
}

/// Stored bytes as text (invalid UTF-8 replaced).
pub(crate) fn text(bytes: &[u8]) -> String {
	String::from_utf8_lossy(bytes).into_owned()
}

/// The block to read at: the one named, or the best block.
pub(crate) fn block<C: HeaderBackend<Block>>(client: &C, at: Option<Hash>) -> Hash {
	at.unwrap_or_else(|| client.info().best_hash)
}
