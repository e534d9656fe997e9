// This file is part of OpenLedger. SPDX-License-Identifier: Apache-2.0

//! Weights for `pallet_tools`, measured by the node's `benchmark pallet` command
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
//!   pallet_tools
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
//!   pallets/tools/src/weights.rs

#![cfg_attr(rustfmt, rustfmt_skip)]
#![allow(unused_parens)]
#![allow(unused_imports)]
#![allow(missing_docs)]

use core::marker::PhantomData;
use frame_support::{traits::Get, weights::{constants::RocksDbWeight, Weight}};

/// The weight of each call of `pallet_tools`.
pub trait WeightInfo {
	fn register_tool() -> Weight;
	fn update_endpoint() -> Weight;
	fn set_price() -> Weight;
	fn set_paused() -> Weight;
	fn transfer_ownership() -> Weight;
	fn accept_ownership() -> Weight;
	fn remove_tool() -> Weight;
}

/// Weights measured on the reference machine, with the runtime's database weights.
pub struct SubstrateWeight<T>(PhantomData<T>);
impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {
	/// Storage: `Tools::NextToolId` (r:1 w:1)
	/// Proof: `Tools::NextToolId` (`max_values`: Some(1), `max_size`: Some(8), added: 503, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:1 w:1)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	/// Storage: `Tools::Tools` (r:0 w:1)
	/// Proof: `Tools::Tools` (`max_values`: None, `max_size`: Some(478), added: 2953, mode: `MaxEncodedLen`)
	fn register_tool() -> Weight {
		// Proof size: measured `345`, estimated `3604`.
		// Minimum execution time: 74_720_000 picoseconds.
		Weight::from_parts(80_071_000, 3604)
			.saturating_add(T::DbWeight::get().reads(3_u64))
			.saturating_add(T::DbWeight::get().writes(4_u64))
	}
	/// Storage: `Tools::Tools` (r:1 w:1)
	/// Proof: `Tools::Tools` (`max_values`: None, `max_size`: Some(478), added: 2953, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:1 w:1)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	fn update_endpoint() -> Weight {
		// Proof size: measured `901`, estimated `3943`.
		// Minimum execution time: 70_352_000 picoseconds.
		Weight::from_parts(75_462_000, 3943)
			.saturating_add(T::DbWeight::get().reads(3_u64))
			.saturating_add(T::DbWeight::get().writes(3_u64))
	}
	/// Storage: `Tools::Tools` (r:1 w:1)
	/// Proof: `Tools::Tools` (`max_values`: None, `max_size`: Some(478), added: 2953, mode: `MaxEncodedLen`)
	fn set_price() -> Weight {
		// Proof size: measured `507`, estimated `3943`.
		// Minimum execution time: 19_096_000 picoseconds.
		Weight::from_parts(21_280_000, 3943)
			.saturating_add(T::DbWeight::get().reads(1_u64))
			.saturating_add(T::DbWeight::get().writes(1_u64))
	}
	/// Storage: `Tools::Tools` (r:1 w:1)
	/// Proof: `Tools::Tools` (`max_values`: None, `max_size`: Some(478), added: 2953, mode: `MaxEncodedLen`)
	fn set_paused() -> Weight {
		// Proof size: measured `507`, estimated `3943`.
		// Minimum execution time: 19_015_000 picoseconds.
		Weight::from_parts(20_890_000, 3943)
			.saturating_add(T::DbWeight::get().reads(1_u64))
			.saturating_add(T::DbWeight::get().writes(1_u64))
	}
	/// Storage: `Tools::Tools` (r:1 w:1)
	/// Proof: `Tools::Tools` (`max_values`: None, `max_size`: Some(478), added: 2953, mode: `MaxEncodedLen`)
	fn transfer_ownership() -> Weight {
		// Proof size: measured `507`, estimated `3943`.
		// Minimum execution time: 19_386_000 picoseconds.
		Weight::from_parts(21_570_000, 3943)
			.saturating_add(T::DbWeight::get().reads(1_u64))
			.saturating_add(T::DbWeight::get().writes(1_u64))
	}
	/// Storage: `Tools::Tools` (r:1 w:1)
	/// Proof: `Tools::Tools` (`max_values`: None, `max_size`: Some(478), added: 2953, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:2 w:2)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:2 w:2)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	fn accept_ownership() -> Weight {
		// Proof size: measured `1476`, estimated `6218`.
		// Minimum execution time: 127_880_000 picoseconds.
		Weight::from_parts(138_039_000, 6218)
			.saturating_add(T::DbWeight::get().reads(5_u64))
			.saturating_add(T::DbWeight::get().writes(5_u64))
	}
	/// Storage: `Tools::Tools` (r:1 w:1)
	/// Proof: `Tools::Tools` (`max_values`: None, `max_size`: Some(478), added: 2953, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:1 w:1)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	fn remove_tool() -> Weight {
		// Proof size: measured `901`, estimated `3943`.
		// Minimum execution time: 69_139_000 picoseconds.
		Weight::from_parts(77_185_000, 3943)
			.saturating_add(T::DbWeight::get().reads(3_u64))
			.saturating_add(T::DbWeight::get().writes(3_u64))
	}
}

/// The same weights with RocksDB's database weights, for tests and mocks.
impl WeightInfo for () {
	fn register_tool() -> Weight {
		Weight::from_parts(80_071_000, 3604)
			.saturating_add(RocksDbWeight::get().reads(3_u64))
			.saturating_add(RocksDbWeight::get().writes(4_u64))
	}
	fn update_endpoint() -> Weight {
		Weight::from_parts(75_462_000, 3943)
			.saturating_add(RocksDbWeight::get().reads(3_u64))
			.saturating_add(RocksDbWeight::get().writes(3_u64))
	}
	fn set_price() -> Weight {
		Weight::from_parts(21_280_000, 3943)
			.saturating_add(RocksDbWeight::get().reads(1_u64))
			.saturating_add(RocksDbWeight::get().writes(1_u64))
	}
	fn set_paused() -> Weight {
		Weight::from_parts(20_890_000, 3943)
			.saturating_add(RocksDbWeight::get().reads(1_u64))
			.saturating_add(RocksDbWeight::get().writes(1_u64))
	}
	fn transfer_ownership() -> Weight {
		Weight::from_parts(21_570_000, 3943)
			.saturating_add(RocksDbWeight::get().reads(1_u64))
			.saturating_add(RocksDbWeight::get().writes(1_u64))
	}
	fn accept_ownership() -> Weight {
		Weight::from_parts(138_039_000, 6218)
			.saturating_add(RocksDbWeight::get().reads(5_u64))
			.saturating_add(RocksDbWeight::get().writes(5_u64))
	}
	fn remove_tool() -> Weight {
		Weight::from_parts(77_185_000, 3943)
			.saturating_add(RocksDbWeight::get().reads(3_u64))
			.saturating_add(RocksDbWeight::get().writes(3_u64))
	}
}
