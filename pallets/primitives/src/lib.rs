//! Types shared by the OpenLedger runtime, its pallets and the off-chain inference worker.
//!
//! Everything here is `no_std` and SCALE-encoded exactly as on chain, so the worker can name
//! on-chain objects (DataNets, records) and recompute on-chain commitments itself.

#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]

extern crate alloc;

use alloc::vec::Vec;
use codec::{Codec, Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use scale_info::TypeInfo;

/// Identifies a DataNet.
pub type DataNetId = u32;
/// Identifies a record contributed to a DataNet. Ids are global, never reused, and stay the
/// same when a record is accepted, so attribution proofs can name records by id.
pub type RecordId = u64;
/// Identifies a prompt template.
pub type PromptId = u64;
/// A version of a prompt template: 1 for the first, one more for each published after it.
pub type PromptVersion = u32;
/// Identifies a base model in the model registry.
pub type BaseModelId = u32;
/// Identifies a LoRA adapter in the model registry.
pub type AdapterId = u64;
/// Identifies an MCP-style tool in the tools registry.
pub type ToolId = u64;
/// A 32-byte content hash (BLAKE2b-256 or SHA-256 of the content, as the DataNet's
/// description says).
pub type ContentHash = [u8; 32];

/// How records enter a DataNet.
#[derive(
	Clone,
	Copy,
	Debug,
	PartialEq,
	Eq,
	Encode,
	Decode,
	DecodeWithMemTracking,
	MaxEncodedLen,
	TypeInfo,
)]
pub enum CurationMode {
	/// Records are accepted when they are contributed.
	Open,
	/// Records wait until a curator accepts or rejects them.
	Curated,
}

/// The content hash of bytes stored on chain (BLAKE2b-256), so that inline and off-chain
/// content are named the same way.
pub fn content_hash_of(bytes: &[u8]) -> ContentHash {
	sp_crypto_hashing::blake2_256(bytes)
}

/// The files of a LoRA adapter (PEFT's format), in the order [`adapter_content_hash`] hashes
/// them.
pub const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

/// The content hash of a LoRA adapter, as the model registry names it: BLAKE2b-256 of the
/// SCALE encoding of each of [`ADAPTER_FILES`] in order, its name then the BLAKE2b-256 of its
/// bytes (`compact(19) "adapter_config.json" hash(config) compact(25)
/// "adapter_model.safetensors" hash(weights)`), so each file is hashed on its own and their
/// boundary is part of what is hashed.
pub fn adapter_content_hash(config: &[u8], weights: &[u8]) -> ContentHash {
	let files =
		[(ADAPTER_FILES[0], content_hash_of(config)), (ADAPTER_FILES[1], content_hash_of(weights))];
	sp_crypto_hashing::blake2_256(&files.encode())
}

/// The commitment of a DataNet with no accepted records.
pub const EMPTY_COMMITMENT: [u8; 32] = [0u8; 32];

/// The running commitment over a DataNet's accepted records: a hash chain in acceptance order.
///
/// `next = blake2_256(SCALE(previous, index, record_id, content_hash))`, where `index` is the
/// 0-based position of the record among the DataNet's accepted records. A worker that indexed
/// the first `n` accepted records recomputes the chain over them and compares it with the
/// commitment the chain stored at version `n`.
pub fn next_commitment(
	previous: &[u8; 32],
	index: u64,
	record_id: RecordId,
	content_hash: &ContentHash,
) -> [u8; 32] {
	let preimage = (previous, index, record_id, content_hash).encode();
	sp_crypto_hashing::blake2_256(&preimage)
}

/// The commitment over `records` (`(record_id, content_hash)` in acceptance order).
pub fn commitment_of<'a>(
	records: impl IntoIterator<Item = (RecordId, &'a ContentHash)>,
) -> [u8; 32] {
	records.into_iter().enumerate().fold(EMPTY_COMMITMENT, |acc, (index, (id, hash))| {
		next_commitment(&acc, index as u64, id, hash)
	})
}

/// The deposit for storing `bytes` bytes on chain: `base + per_byte * bytes`, saturating (a
/// length beyond `u32::MAX` counts as `u32::MAX`). Every registry charges its deposits so.
pub fn storage_deposit<Balance>(base: Balance, per_byte: Balance, bytes: usize) -> Balance
where
	Balance: sp_arithmetic::traits::Saturating + From<u32>,
{
	let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
	base.saturating_add(per_byte.saturating_mul(Balance::from(bytes)))
}

/// The most entries one page of a runtime API listing returns.
pub const MAX_PAGE: u32 = 1_000;

sp_api::decl_runtime_apis! {
	/// Reads of the DataNets registry that clients (the inference worker, wallets, explorers)
	/// need cheaply. The type parameters are the runtime's account, balance, DataNet and record
	/// types, so the results decode with the runtime's metadata.
	pub trait DataNetsApi<AccountId, Balance, DataNet, Record>
	where
		AccountId: Codec,
		Balance: Codec,
		DataNet: Codec,
		Record: Codec,
	{
		/// A DataNet, if it exists.
		fn datanet(datanet: DataNetId) -> Option<DataNet>;

		/// A record (pending or accepted), if it exists.
		fn record(record: RecordId) -> Option<Record>;

		/// A page of a DataNet's accepted records in acceptance order, from position `start`,
		/// at most `limit` (and at most [`MAX_PAGE`]): each with its id and the DataNet's
		/// commitment once it was accepted.
		fn accepted_records(datanet: DataNetId, start: u64, limit: u32) -> Vec<(RecordId, Record, [u8; 32])>;

		/// A DataNet's commitment: `(version, commitment)` now, or at `version` when given
		/// (version 0 is the empty commitment).
		fn commitment(datanet: DataNetId, version: Option<u64>) -> Option<(u64, [u8; 32])>;

		/// A page of a contributor's records, after the record `start_after` (in storage
		/// order), at most `limit` (and at most [`MAX_PAGE`]).
		fn contributor_records(contributor: AccountId, start_after: Option<RecordId>, limit: u32) -> Vec<(RecordId, Record)>;

		/// The rewards `contributor` can claim from a DataNet now.
		fn claimable(datanet: DataNetId, contributor: AccountId) -> Balance;
	}

	/// Reads of the model registry: what a worker needs to serve an adapter.
	pub trait AdaptersApi<Adapter, BaseModel>
	where
		Adapter: Codec,
		BaseModel: Codec,
	{
		/// An adapter's full record, if it exists (retired ones included).
		fn adapter(adapter: AdapterId) -> Option<Adapter>;

		/// A base model, if it exists.
		fn base_model(base_model: BaseModelId) -> Option<BaseModel>;
	}

	/// Reads of the prompts registry: what a worker needs to serve a registered prompt and
	/// attribute its use.
	pub trait PromptsApi<Prompt, Version>
	where
		Prompt: Codec,
		Version: Codec,
	{
		/// A prompt (its owner, name and latest version), if it is registered.
		fn prompt(prompt: PromptId) -> Option<Prompt>;

		/// One version of a prompt (its template, content hash, price, whether deprecated), if
		/// it exists.
		fn prompt_version(prompt: PromptId, version: PromptVersion) -> Option<Version>;
	}

	/// Reads of the tools registry: what a worker needs to call a tool and attribute the call.
	pub trait ToolsApi<Tool>
	where
		Tool: Codec,
	{
		/// A tool's full record, if it is registered.
		fn tool(tool: ToolId) -> Option<Tool>;
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn commitment_depends_on_order_ids_and_content() {
		let (a, b) = ([1u8; 32], [2u8; 32]);
		let ab = commitment_of([(1, &a), (2, &b)]);
		assert_ne!(ab, commitment_of([(2, &b), (1, &a)]));
		assert_ne!(ab, commitment_of([(1, &a), (3, &b)]));
		assert_ne!(ab, commitment_of([(1, &a), (2, &a)]));
		assert_eq!(commitment_of(core::iter::empty()), EMPTY_COMMITMENT);
		let step = next_commitment(&next_commitment(&EMPTY_COMMITMENT, 0, 1, &a), 1, 2, &b);
		assert_eq!(ab, step);
	}

	#[test]
	fn an_adapters_hash_is_its_files_names_and_hashes() {
		let (config, weights) = (b"{\"r\": 8}".as_slice(), [7u8; 100].as_slice());
		// The preimage written out byte by byte: compact lengths (a byte each, 4n), names,
		// hashes.
		let mut preimage = Vec::new();
		preimage.push(19 * 4);
		preimage.extend_from_slice(b"adapter_config.json");
		preimage.extend_from_slice(&sp_crypto_hashing::blake2_256(config));
		preimage.push(25 * 4);
		preimage.extend_from_slice(b"adapter_model.safetensors");
		preimage.extend_from_slice(&sp_crypto_hashing::blake2_256(weights));
		let hash = adapter_content_hash(config, weights);
		assert_eq!(hash, sp_crypto_hashing::blake2_256(&preimage));
		// Moving bytes from one file to the other changes it.
		assert_ne!(hash, adapter_content_hash(&[config, &weights[..1]].concat(), &weights[1..]));
		assert_ne!(hash, adapter_content_hash(weights, config));
	}

	#[test]
	fn storage_deposit_counts_bytes_and_saturates() {
		assert_eq!(storage_deposit(100u128, 3, 0), 100);
		assert_eq!(storage_deposit(100u128, 3, 10), 130);
		assert_eq!(storage_deposit(u64::MAX - 1, 1, 5), u64::MAX);
		assert_eq!(storage_deposit(0u128, 1, usize::MAX), u32::MAX as u128);
	}
}
