//! The OpenLedger runtime.
//!
//! A FRAME runtime with Aura block authoring, GRANDPA finality and **OPEN**, the native token
//! (18 decimals). Transaction fees are split between the block author and the protocol treasury
//! (see [`fees`]).

#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "std")]
include!(concat!(env!("OUT_DIR"), "/wasm_binary.rs"));

extern crate alloc;

use alloc::vec::Vec;

#[cfg(feature = "runtime-benchmarks")]
#[macro_use]
mod benchmarks;
pub mod apis;
pub mod configs;
pub mod fees;
pub mod genesis_config_presets;
#[cfg(test)]
mod tests;

use sp_runtime::{
	generic, impl_opaque_keys,
	traits::{BlakeTwo256, IdentifyAccount, Verify},
	MultiAddress, MultiSignature,
};
use sp_version::{runtime_version, RuntimeVersion};

pub use frame_system::Call as SystemCall;
pub use pallet_balances::Call as BalancesCall;
pub use pallet_timestamp::Call as TimestampCall;
#[cfg(any(feature = "std", test))]
pub use sp_runtime::BuildStorage;
pub use sp_runtime::{Perbill, Permill};

/// The token: symbol, decimals and the SS58 address format advertised to wallets.
pub mod token {
	use super::Balance;

	/// The symbol of the native token.
	pub const SYMBOL: &str = "OPEN";
	/// The number of decimals of the native token.
	pub const DECIMALS: u8 = 18;
	/// The SS58 address format (the generic Substrate prefix).
	pub const SS58_FORMAT: u16 = 42;

	/// One OPEN, in the smallest unit.
	pub const OPEN: Balance = 1_000_000_000_000_000_000;
	/// One thousandth of an OPEN.
	pub const MILLI_OPEN: Balance = OPEN / 1_000;
	/// One millionth of an OPEN.
	pub const MICRO_OPEN: Balance = MILLI_OPEN / 1_000;
	/// The smallest balance an account may hold: 0.01 OPEN.
	pub const EXISTENTIAL_DEPOSIT: Balance = 10 * MILLI_OPEN;
}

/// Types the node and off-chain clients need without the runtime's dispatch types: opaque
/// blocks and the session keys.
pub mod opaque {
	use super::*;
	use sp_runtime::{
		generic,
		traits::{BlakeTwo256, Hash as HashT},
	};

	pub use sp_runtime::OpaqueExtrinsic as UncheckedExtrinsic;

	/// Opaque block header type.
	pub type Header = generic::Header<BlockNumber, BlakeTwo256>;
	/// Opaque block type.
	pub type Block = generic::Block<Header, UncheckedExtrinsic>;
	/// Opaque block identifier type.
	pub type BlockId = generic::BlockId<Block>;
	/// Opaque block hash type.
	pub type Hash = <BlakeTwo256 as HashT>::Output;

	impl_opaque_keys! {
		/// The session keys of a validator: an Aura key for authoring, a GRANDPA key for voting.
		pub struct SessionKeys {
			/// Block authoring.
			pub aura: super::Aura,
			/// Finality voting.
			pub grandpa: super::Grandpa,
		}
	}
}

/// The runtime version. Bump `spec_version` on every runtime change that reaches a live chain.
#[runtime_version]
pub const VERSION: RuntimeVersion = RuntimeVersion {
	spec_name: alloc::borrow::Cow::Borrowed("openledger"),
	impl_name: alloc::borrow::Cow::Borrowed("openledger"),
	authoring_version: 1,
	spec_version: 100,
	impl_version: 1,
	apis: apis::RUNTIME_API_VERSIONS,
	transaction_version: 1,
	system_version: 1,
};

/// Target block time. Aura slots have this length and GRANDPA finalizes behind it.
pub const MILLI_SECS_PER_BLOCK: u64 = 6000;
/// The Aura slot duration; equal to the block time.
pub const SLOT_DURATION: u64 = MILLI_SECS_PER_BLOCK;

/// Blocks per minute, hour and day at the target block time.
pub const MINUTES: BlockNumber = 60_000 / (MILLI_SECS_PER_BLOCK as BlockNumber);
/// Blocks per hour.
pub const HOURS: BlockNumber = MINUTES * 60;
/// Blocks per day.
pub const DAYS: BlockNumber = HOURS * 24;

/// An index to a block.
pub type BlockNumber = u32;
/// An account's signature.
pub type Signature = MultiSignature;
/// An account on the chain: the public key behind the signature.
pub type AccountId = <<Signature as Verify>::Signer as IdentifyAccount>::AccountId;
/// A balance of OPEN, in the smallest unit (10^-18 OPEN).
pub type Balance = u128;
/// The transaction counter of an account.
pub type Nonce = u32;
/// A hash of some data used by the chain.
pub type Hash = sp_core::H256;
/// The address format for describing accounts.
pub type Address = MultiAddress<AccountId, ()>;
/// Block header type.
pub type Header = generic::Header<BlockNumber, BlakeTwo256>;
/// Block type.
pub type Block = generic::Block<Header, UncheckedExtrinsic>;
/// A block with its justifications.
pub type SignedBlock = generic::SignedBlock<Block>;
/// Block identifier.
pub type BlockId = generic::BlockId<Block>;

/// The transaction extensions: the checks every signed transaction passes, and its fee.
pub type TxExtension = (
	frame_system::CheckNonZeroSender<Runtime>,
	frame_system::CheckSpecVersion<Runtime>,
	frame_system::CheckTxVersion<Runtime>,
	frame_system::CheckGenesis<Runtime>,
	frame_system::CheckEra<Runtime>,
	frame_system::CheckNonce<Runtime>,
	frame_system::CheckWeight<Runtime>,
	pallet_transaction_payment::ChargeTransactionPayment<Runtime>,
	frame_metadata_hash_extension::CheckMetadataHash<Runtime>,
	frame_system::WeightReclaim<Runtime>,
);

/// An extrinsic as it arrives in a block.
pub type UncheckedExtrinsic =
	generic::UncheckedExtrinsic<Address, RuntimeCall, Signature, TxExtension>;
/// The payload that is signed.
pub type SignedPayload = generic::SignedPayload<RuntimeCall, TxExtension>;

/// Storage migrations to run on a runtime upgrade.
#[allow(unused_parens)]
type Migrations = ();

/// Dispatches calls to the pallets.
pub type Executive = frame_executive::Executive<
	Runtime,
	Block,
	frame_system::ChainContext<Runtime>,
	Runtime,
	AllPalletsWithSystem,
	Migrations,
>;

/// The pallets of the runtime, in dispatch order. Indices are part of the encoding of every
/// call and event: never reuse or reorder them.
#[frame_support::runtime]
mod runtime {
	#[runtime::runtime]
	#[runtime::derive(
		RuntimeCall,
		RuntimeEvent,
		RuntimeError,
		RuntimeOrigin,
		RuntimeFreezeReason,
		RuntimeHoldReason,
		RuntimeSlashReason,
		RuntimeLockId,
		RuntimeTask,
		RuntimeViewFunction
	)]
	pub struct Runtime;

	#[runtime::pallet_index(0)]
	pub type System = frame_system;

	#[runtime::pallet_index(1)]
	pub type Timestamp = pallet_timestamp;

	#[runtime::pallet_index(2)]
	pub type Aura = pallet_aura;

	#[runtime::pallet_index(3)]
	pub type Grandpa = pallet_grandpa;

	#[runtime::pallet_index(4)]
	pub type Authorship = pallet_authorship;

	#[runtime::pallet_index(5)]
	pub type Balances = pallet_balances;

	#[runtime::pallet_index(6)]
	pub type TransactionPayment = pallet_transaction_payment;

	#[runtime::pallet_index(7)]
	pub type Utility = pallet_utility;

	#[runtime::pallet_index(8)]
	pub type Sudo = pallet_sudo;

	// The registries of the attribution network: 20 onwards.
	#[runtime::pallet_index(20)]
	pub type DataNets = pallet_datanets;

	#[runtime::pallet_index(21)]
	pub type Prompts = pallet_prompts;

	#[runtime::pallet_index(22)]
	pub type Adapters = pallet_adapters;

	#[runtime::pallet_index(23)]
	pub type Tools = pallet_tools;
}
