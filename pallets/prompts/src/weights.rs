// This file is part of OpenLedger. SPDX-License-Identifier: Apache-2.0

//! Weights for `pallet_prompts`, measured by the node's `benchmark pallet` command
//! (frame-benchmarking-cli 64.0.0) through `scripts/benchmark-weights.sh`.
//!
//! Date: 2026-11-25. Steps: `50`, repeat: `20`.
//! Host: `vm`, CPU: `AMD EPYC`. Execution: `Compiled`.
//!
//! Command:
//!   /root/.cache/openledger/target-benchmarks/release/openledger-node
//!   benchmark
//!   pallet
//!   --runtime
//!   /root/.cache/openledger/target-benchmarks/release/wbuild/openledger-runtime/openledger_runtime.compact.compressed.wasm
//!   --genesis-builder-preset
//!   development
//!   --pallet
//!   pallet_prompts
//!   --extrinsic
//!   *
//!   --steps
//!   50
//!   --repeat
//!   20
//!   --template
//!   scripts/weight-template.hbs
//!   --header
//!   scripts/weight-header.txt
//!   --output
//!   pallets/prompts/src/weights.rs

#![cfg_attr(rustfmt, rustfmt_skip)]
#![allow(unused_parens)]
#![allow(unused_imports)]
#![allow(missing_docs)]

use core::marker::PhantomData;
use frame_support::{traits::Get, weights::{constants::RocksDbWeight, Weight}};

/// The weight of each call of `pallet_prompts`.
pub trait WeightInfo {
	fn register_prompt() -> Weight;
	fn publish_version() -> Weight;
	fn set_price() -> Weight;
	fn deprecate_version() -> Weight;
	fn transfer_ownership() -> Weight;
	fn accept_ownership() -> Weight;
	fn remove_prompt(v: u32, ) -> Weight;
}

/// Weights measured on the reference machine, with the runtime's database weights.
pub struct SubstrateWeight<T>(PhantomData<T>);
impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {
	/// Storage: `System::Account` (r:1 w:1)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	/// Storage: `Prompts::NextPromptId` (r:1 w:1)
	/// Proof: `Prompts::NextPromptId` (`max_values`: Some(1), `max_size`: Some(8), added: 503, mode: `MaxEncodedLen`)
	/// Storage: `Prompts::Versions` (r:0 w:1)
	/// Proof: `Prompts::Versions` (`max_values`: None, `max_size`: Some(8296), added: 10771, mode: `MaxEncodedLen`)
	/// Storage: `Prompts::Prompts` (r:0 w:1)
	/// Proof: `Prompts::Prompts` (`max_values`: None, `max_size`: Some(175), added: 2650, mode: `MaxEncodedLen`)
	fn register_prompt() -> Weight {
		// Proof size: measured `381`, estimated `3604`.
		// Minimum execution time: 198_462_000 picoseconds.
		Weight::from_parts(211_727_000, 3604)
			.saturating_add(T::DbWeight::get().reads(3_u64))
			.saturating_add(T::DbWeight::get().writes(5_u64))
	}
	/// Storage: `Prompts::Prompts` (r:1 w:1)
	/// Proof: `Prompts::Prompts` (`max_values`: None, `max_size`: Some(175), added: 2650, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:1 w:1)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	/// Storage: `Prompts::Versions` (r:0 w:1)
	/// Proof: `Prompts::Versions` (`max_values`: None, `max_size`: Some(8296), added: 10771, mode: `MaxEncodedLen`)
	fn publish_version() -> Weight {
		// Proof size: measured `653`, estimated `3640`.
		// Minimum execution time: 161_934_000 picoseconds.
		Weight::from_parts(195_757_000, 3640)
			.saturating_add(T::DbWeight::get().reads(3_u64))
			.saturating_add(T::DbWeight::get().writes(4_u64))
	}
	/// Storage: `Prompts::Prompts` (r:1 w:0)
	/// Proof: `Prompts::Prompts` (`max_values`: None, `max_size`: Some(175), added: 2650, mode: `MaxEncodedLen`)
	/// Storage: `Prompts::Versions` (r:1 w:1)
	/// Proof: `Prompts::Versions` (`max_values`: None, `max_size`: Some(8296), added: 10771, mode: `MaxEncodedLen`)
	fn set_price() -> Weight {
		// Proof size: measured `8545`, estimated `11761`.
		// Minimum execution time: 30_938_000 picoseconds.
		Weight::from_parts(34_665_000, 11761)
			.saturating_add(T::DbWeight::get().reads(2_u64))
			.saturating_add(T::DbWeight::get().writes(1_u64))
	}
	/// Storage: `Prompts::Prompts` (r:1 w:0)
	/// Proof: `Prompts::Prompts` (`max_values`: None, `max_size`: Some(175), added: 2650, mode: `MaxEncodedLen`)
	/// Storage: `Prompts::Versions` (r:1 w:1)
	/// Proof: `Prompts::Versions` (`max_values`: None, `max_size`: Some(8296), added: 10771, mode: `MaxEncodedLen`)
	fn deprecate_version() -> Weight {
		// Proof size: measured `8545`, estimated `11761`.
		// Minimum execution time: 30_748_000 picoseconds.
		Weight::from_parts(34_816_000, 11761)
			.saturating_add(T::DbWeight::get().reads(2_u64))
			.saturating_add(T::DbWeight::get().writes(1_u64))
	}
	/// Storage: `Prompts::Prompts` (r:1 w:1)
	/// Proof: `Prompts::Prompts` (`max_values`: None, `max_size`: Some(175), added: 2650, mode: `MaxEncodedLen`)
	fn transfer_ownership() -> Weight {
		// Proof size: measured `259`, estimated `3640`.
		// Minimum execution time: 20_439_000 picoseconds.
		Weight::from_parts(22_592_000, 3640)
			.saturating_add(T::DbWeight::get().reads(1_u64))
			.saturating_add(T::DbWeight::get().writes(1_u64))
	}
	/// Storage: `Prompts::Prompts` (r:1 w:1)
	/// Proof: `Prompts::Prompts` (`max_values`: None, `max_size`: Some(175), added: 2650, mode: `MaxEncodedLen`)
	/// Storage: `Prompts::Versions` (r:65 w:0)
	/// Proof: `Prompts::Versions` (`max_values`: None, `max_size`: Some(8296), added: 10771, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:2 w:2)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:2 w:2)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	fn accept_ownership() -> Weight {
		// Proof size: measured `531138`, estimated `701105`.
		// Minimum execution time: 884_809_000 picoseconds.
		Weight::from_parts(1_051_833_000, 701105)
			.saturating_add(T::DbWeight::get().reads(70_u64))
			.saturating_add(T::DbWeight::get().writes(5_u64))
	}
	/// Storage: `Prompts::Prompts` (r:1 w:1)
	/// Proof: `Prompts::Prompts` (`max_values`: None, `max_size`: Some(175), added: 2650, mode: `MaxEncodedLen`)
	/// Storage: `Prompts::Versions` (r:65 w:64)
	/// Proof: `Prompts::Versions` (`max_values`: None, `max_size`: Some(8296), added: 10771, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:1 w:1)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	/// Component `v` ranges over `[1, 64]`.
	fn remove_prompt(v: u32, ) -> Weight {
		// Proof size: measured `663`, estimated `11761`.
		// Minimum execution time: 99_157_000 picoseconds.
		Weight::from_parts(82_501_163, 11761)
			.saturating_add(Weight::from_parts(16_906_200, 0).saturating_mul(v.into()))
			.saturating_add(T::DbWeight::get().reads(4_u64))
			.saturating_add(T::DbWeight::get().reads((1_u64).saturating_mul(v.into())))
			.saturating_add(T::DbWeight::get().writes(3_u64))
			.saturating_add(T::DbWeight::get().writes((1_u64).saturating_mul(v.into())))
			.saturating_add(Weight::from_parts(0, 10771).saturating_mul(v.into()))
	}
}

/// The same weights with RocksDB's database weights, for tests and mocks.
impl WeightInfo for () {
	fn register_prompt() -> Weight {
		Weight::from_parts(211_727_000, 3604)
			.saturating_add(RocksDbWeight::get().reads(3_u64))
			.saturating_add(RocksDbWeight::get().writes(5_u64))
	}
	fn publish_version() -> Weight {
		Weight::from_parts(195_757_000, 3640)
			.saturating_add(RocksDbWeight::get().reads(3_u64))
			.saturating_add(RocksDbWeight::get().writes(4_u64))
	}
	fn set_price() -> Weight {
		Weight::from_parts(34_665_000, 11761)
			.saturating_add(RocksDbWeight::get().reads(2_u64))
			.saturating_add(RocksDbWeight::get().writes(1_u64))
	}
	fn deprecate_version() -> Weight {
		Weight::from_parts(34_816_000, 11761)
			.saturating_add(RocksDbWeight::get().reads(2_u64))
			.saturating_add(RocksDbWeight::get().writes(1_u64))
	}
	fn transfer_ownership() -> Weight {
		Weight::from_parts(22_592_000, 3640)
			.saturating_add(RocksDbWeight::get().reads(1_u64))
			.saturating_add(RocksDbWeight::get().writes(1_u64))
	}
	fn accept_ownership() -> Weight {
		Weight::from_parts(1_051_833_000, 701105)
			.saturating_add(RocksDbWeight::get().reads(70_u64))
			.saturating_add(RocksDbWeight::get().writes(5_u64))
	}
	fn remove_prompt(v: u32, ) -> Weight {
		Weight::from_parts(82_501_163, 11761)
			.saturating_add(Weight::from_parts(16_906_200, 0).saturating_mul(v.into()))
			.saturating_add(RocksDbWeight::get().reads(4_u64))
			.saturating_add(RocksDbWeight::get().reads((1_u64).saturating_mul(v.into())))
			.saturating_add(RocksDbWeight::get().writes(3_u64))
			.saturating_add(RocksDbWeight::get().writes((1_u64).saturating_mul(v.into())))
			.saturating_add(Weight::from_parts(0, 10771).saturating_mul(v.into()))
	}
}
