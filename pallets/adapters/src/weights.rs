// This file is part of OpenLedger. SPDX-License-Identifier: Apache-2.0

//! Weights for `pallet_adapters`, measured by the node's `benchmark pallet` command
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
//!   pallet_adapters
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
//!   pallets/adapters/src/weights.rs

#![cfg_attr(rustfmt, rustfmt_skip)]
#![allow(unused_parens)]
#![allow(unused_imports)]
#![allow(missing_docs)]

use core::marker::PhantomData;
use frame_support::{traits::Get, weights::{constants::RocksDbWeight, Weight}};

/// The weight of each call of `pallet_adapters`.
pub trait WeightInfo {
	fn register_base_model() -> Weight;
	fn set_base_model_enabled() -> Weight;
	fn register_adapter(d: u32, ) -> Weight;
	fn set_price() -> Weight;
	fn set_uri() -> Weight;
	fn retire_adapter() -> Weight;
	fn transfer_ownership() -> Weight;
	fn accept_ownership() -> Weight;
}

/// Weights measured on the reference machine, with the runtime's database weights.
pub struct SubstrateWeight<T>(PhantomData<T>);
impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {
	/// Storage: `Adapters::NextBaseModelId` (r:1 w:1)
	/// Proof: `Adapters::NextBaseModelId` (`max_values`: Some(1), `max_size`: Some(4), added: 499, mode: `MaxEncodedLen`)
	/// Storage: `Adapters::BaseModels` (r:0 w:1)
	/// Proof: `Adapters::BaseModels` (`max_values`: None, `max_size`: Some(321), added: 2796, mode: `MaxEncodedLen`)
	fn register_base_model() -> Weight {
		// Proof size: measured `42`, estimated `1489`.
		// Minimum execution time: 18_224_000 picoseconds.
		Weight::from_parts(21_150_000, 1489)
			.saturating_add(T::DbWeight::get().reads(1_u64))
			.saturating_add(T::DbWeight::get().writes(2_u64))
	}
	/// Storage: `Adapters::BaseModels` (r:1 w:1)
	/// Proof: `Adapters::BaseModels` (`max_values`: None, `max_size`: Some(321), added: 2796, mode: `MaxEncodedLen`)
	fn set_base_model_enabled() -> Weight {
		// Proof size: measured `414`, estimated `3786`.
		// Minimum execution time: 19_396_000 picoseconds.
		Weight::from_parts(22_312_000, 3786)
			.saturating_add(T::DbWeight::get().reads(1_u64))
			.saturating_add(T::DbWeight::get().writes(1_u64))
	}
	/// Storage: `Adapters::BaseModels` (r:1 w:0)
	/// Proof: `Adapters::BaseModels` (`max_values`: None, `max_size`: Some(321), added: 2796, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::DataNets` (r:16 w:0)
	/// Proof: `DataNets::DataNets` (`max_values`: None, `max_size`: Some(1084), added: 3559, mode: `MaxEncodedLen`)
	/// Storage: `Adapters::AdapterByHash` (r:1 w:1)
	/// Proof: `Adapters::AdapterByHash` (`max_values`: None, `max_size`: Some(56), added: 2531, mode: `MaxEncodedLen`)
	/// Storage: `Adapters::NextAdapterId` (r:1 w:1)
	/// Proof: `Adapters::NextAdapterId` (`max_values`: Some(1), `max_size`: Some(8), added: 503, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:1 w:1)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	/// Storage: `Adapters::Adapters` (r:0 w:1)
	/// Proof: `Adapters::Adapters` (`max_values`: None, `max_size`: Some(623), added: 3098, mode: `MaxEncodedLen`)
	/// Component `d` ranges over `[0, 16]`.
	fn register_adapter(d: u32, ) -> Weight {
		// Proof size: measured `814`, estimated `3786`.
		// Minimum execution time: 94_217_000 picoseconds.
		Weight::from_parts(186_616_855, 3786)
			.saturating_add(Weight::from_parts(5_786_308, 0).saturating_mul(d.into()))
			.saturating_add(T::DbWeight::get().reads(5_u64))
			.saturating_add(T::DbWeight::get().reads((1_u64).saturating_mul(d.into())))
			.saturating_add(T::DbWeight::get().writes(5_u64))
			.saturating_add(Weight::from_parts(0, 3559).saturating_mul(d.into()))
	}
	/// Storage: `Adapters::Adapters` (r:1 w:1)
	/// Proof: `Adapters::Adapters` (`max_values`: None, `max_size`: Some(623), added: 3098, mode: `MaxEncodedLen`)
	fn set_price() -> Weight {
		// Proof size: measured `778`, estimated `4088`.
		// Minimum execution time: 26_169_000 picoseconds.
		Weight::from_parts(61_876_000, 4088)
			.saturating_add(T::DbWeight::get().reads(1_u64))
			.saturating_add(T::DbWeight::get().writes(1_u64))
	}
	/// Storage: `Adapters::Adapters` (r:1 w:1)
	/// Proof: `Adapters::Adapters` (`max_values`: None, `max_size`: Some(623), added: 3098, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:1 w:1)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	fn set_uri() -> Weight {
		// Proof size: measured `1508`, estimated `4088`.
		// Minimum execution time: 87_143_000 picoseconds.
		Weight::from_parts(134_111_000, 4088)
			.saturating_add(T::DbWeight::get().reads(3_u64))
			.saturating_add(T::DbWeight::get().writes(3_u64))
	}
	/// Storage: `Adapters::Adapters` (r:1 w:1)
	/// Proof: `Adapters::Adapters` (`max_values`: None, `max_size`: Some(623), added: 3098, mode: `MaxEncodedLen`)
	fn retire_adapter() -> Weight {
		// Proof size: measured `778`, estimated `4088`.
		// Minimum execution time: 26_850_000 picoseconds.
		Weight::from_parts(34_625_000, 4088)
			.saturating_add(T::DbWeight::get().reads(1_u64))
			.saturating_add(T::DbWeight::get().writes(1_u64))
	}
	/// Storage: `Adapters::Adapters` (r:1 w:1)
	/// Proof: `Adapters::Adapters` (`max_values`: None, `max_size`: Some(623), added: 3098, mode: `MaxEncodedLen`)
	fn transfer_ownership() -> Weight {
		// Proof size: measured `778`, estimated `4088`.
		// Minimum execution time: 28_183_000 picoseconds.
		Weight::from_parts(44_464_000, 4088)
			.saturating_add(T::DbWeight::get().reads(1_u64))
			.saturating_add(T::DbWeight::get().writes(1_u64))
	}
	/// Storage: `Adapters::Adapters` (r:1 w:1)
	/// Proof: `Adapters::Adapters` (`max_values`: None, `max_size`: Some(623), added: 3098, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:2 w:2)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:2 w:2)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	fn accept_ownership() -> Weight {
		// Proof size: measured `2083`, estimated `6218`.
		// Minimum execution time: 143_680_000 picoseconds.
		Weight::from_parts(248_106_000, 6218)
			.saturating_add(T::DbWeight::get().reads(5_u64))
			.saturating_add(T::DbWeight::get().writes(5_u64))
	}
}

/// The same weights with RocksDB's database weights, for tests and mocks.
impl WeightInfo for () {
	fn register_base_model() -> Weight {
		Weight::from_parts(21_150_000, 1489)
			.saturating_add(RocksDbWeight::get().reads(1_u64))
			.saturating_add(RocksDbWeight::get().writes(2_u64))
	}
	fn set_base_model_enabled() -> Weight {
		Weight::from_parts(22_312_000, 3786)
			.saturating_add(RocksDbWeight::get().reads(1_u64))
			.saturating_add(RocksDbWeight::get().writes(1_u64))
	}
	fn register_adapter(d: u32, ) -> Weight {
		Weight::from_parts(186_616_855, 3786)
			.saturating_add(Weight::from_parts(5_786_308, 0).saturating_mul(d.into()))
			.saturating_add(RocksDbWeight::get().reads(5_u64))
			.saturating_add(RocksDbWeight::get().reads((1_u64).saturating_mul(d.into())))
			.saturating_add(RocksDbWeight::get().writes(5_u64))
			.saturating_add(Weight::from_parts(0, 3559).saturating_mul(d.into()))
	}
	fn set_price() -> Weight {
		Weight::from_parts(61_876_000, 4088)
			.saturating_add(RocksDbWeight::get().reads(1_u64))
			.saturating_add(RocksDbWeight::get().writes(1_u64))
	}
	fn set_uri() -> Weight {
		Weight::from_parts(134_111_000, 4088)
			.saturating_add(RocksDbWeight::get().reads(3_u64))
			.saturating_add(RocksDbWeight::get().writes(3_u64))
	}
	fn retire_adapter() -> Weight {
		Weight::from_parts(34_625_000, 4088)
			.saturating_add(RocksDbWeight::get().reads(1_u64))
			.saturating_add(RocksDbWeight::get().writes(1_u64))
	}
	fn transfer_ownership() -> Weight {
		Weight::from_parts(44_464_000, 4088)
			.saturating_add(RocksDbWeight::get().reads(1_u64))
			.saturating_add(RocksDbWeight::get().writes(1_u64))
	}
	fn accept_ownership() -> Weight {
		Weight::from_parts(248_106_000, 6218)
			.saturating_add(RocksDbWeight::get().reads(5_u64))
			.saturating_add(RocksDbWeight::get().writes(5_u64))
	}
}
