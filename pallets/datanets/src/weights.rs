// This file is part of OpenLedger. SPDX-License-Identifier: Apache-2.0

//! Weights for `pallet_datanets`, measured by the node's `benchmark pallet` command
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
//!   pallet_datanets
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
//!   pallets/datanets/src/weights.rs

#![cfg_attr(rustfmt, rustfmt_skip)]
#![allow(unused_parens)]
#![allow(unused_imports)]
#![allow(missing_docs)]

use core::marker::PhantomData;
use frame_support::{traits::Get, weights::{constants::RocksDbWeight, Weight}};

/// The weight of each call of `pallet_datanets`.
pub trait WeightInfo {
	fn create_datanet(c: u32, ) -> Weight;
	fn set_curators(c: u32, ) -> Weight;
	fn set_curation() -> Weight;
	fn destroy_datanet() -> Weight;
	fn contribute() -> Weight;
	fn accept_record() -> Weight;
	fn reject_record() -> Weight;
	fn withdraw_record() -> Weight;
	fn reward() -> Weight;
	fn claim_rewards() -> Weight;
}

/// Weights measured on the reference machine, with the runtime's database weights.
pub struct SubstrateWeight<T>(PhantomData<T>);
impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {
	/// Storage: `DataNets::NextDataNetId` (r:1 w:1)
	/// Proof: `DataNets::NextDataNetId` (`max_values`: Some(1), `max_size`: Some(4), added: 499, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:1 w:1)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::DataNets` (r:0 w:1)
	/// Proof: `DataNets::DataNets` (`max_values`: None, `max_size`: Some(1084), added: 3559, mode: `MaxEncodedLen`)
	/// Component `c` ranges over `[0, 16]`.
	fn create_datanet(c: u32, ) -> Weight {
		// Proof size: measured `343`, estimated `3604`.
		// Minimum execution time: 78_427_000 picoseconds.
		Weight::from_parts(115_636_432, 3604)
			.saturating_add(Weight::from_parts(90_815, 0).saturating_mul(c.into()))
			.saturating_add(T::DbWeight::get().reads(3_u64))
			.saturating_add(T::DbWeight::get().writes(4_u64))
	}
	/// Storage: `DataNets::DataNets` (r:1 w:1)
	/// Proof: `DataNets::DataNets` (`max_values`: None, `max_size`: Some(1084), added: 3559, mode: `MaxEncodedLen`)
	/// Component `c` ranges over `[0, 16]`.
	fn set_curators(c: u32, ) -> Weight {
		// Proof size: measured `1139`, estimated `4549`.
		// Minimum execution time: 20_999_000 picoseconds.
		Weight::from_parts(30_185_527, 4549)
			.saturating_add(Weight::from_parts(98_897, 0).saturating_mul(c.into()))
			.saturating_add(T::DbWeight::get().reads(1_u64))
			.saturating_add(T::DbWeight::get().writes(1_u64))
	}
	/// Storage: `DataNets::DataNets` (r:1 w:1)
	/// Proof: `DataNets::DataNets` (`max_values`: None, `max_size`: Some(1084), added: 3559, mode: `MaxEncodedLen`)
	fn set_curation() -> Weight {
		// Proof size: measured `1139`, estimated `4549`.
		// Minimum execution time: 21_270_000 picoseconds.
		Weight::from_parts(40_165_000, 4549)
			.saturating_add(T::DbWeight::get().reads(1_u64))
			.saturating_add(T::DbWeight::get().writes(1_u64))
	}
	/// Storage: `DataNets::DataNets` (r:1 w:1)
	/// Proof: `DataNets::DataNets` (`max_values`: None, `max_size`: Some(1084), added: 3559, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:1 w:1)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	fn destroy_datanet() -> Weight {
		// Proof size: measured `1533`, estimated `4549`.
		// Minimum execution time: 72_125_000 picoseconds.
		Weight::from_parts(102_553_000, 4549)
			.saturating_add(T::DbWeight::get().reads(3_u64))
			.saturating_add(T::DbWeight::get().writes(3_u64))
	}
	/// Storage: `DataNets::DataNets` (r:1 w:1)
	/// Proof: `DataNets::DataNets` (`max_values`: None, `max_size`: Some(1084), added: 3559, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::RecordsByHash` (r:1 w:1)
	/// Proof: `DataNets::RecordsByHash` (`max_values`: None, `max_size`: Some(76), added: 2551, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::NextRecordId` (r:1 w:1)
	/// Proof: `DataNets::NextRecordId` (`max_values`: Some(1), `max_size`: Some(8), added: 503, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:1 w:1)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::Contributions` (r:1 w:1)
	/// Proof: `DataNets::Contributions` (`max_values`: None, `max_size`: Some(108), added: 2583, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::Records` (r:0 w:1)
	/// Proof: `DataNets::Records` (`max_values`: None, `max_size`: Some(1410), added: 3885, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::AcceptedRecords` (r:0 w:1)
	/// Proof: `DataNets::AcceptedRecords` (`max_values`: None, `max_size`: Some(76), added: 2551, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::ContributorRecords` (r:0 w:1)
	/// Proof: `DataNets::ContributorRecords` (`max_values`: None, `max_size`: Some(68), added: 2543, mode: `MaxEncodedLen`)
	fn contribute() -> Weight {
		// Proof size: measured `2082`, estimated `4549`.
		// Minimum execution time: 129_463_000 picoseconds.
		Weight::from_parts(173_325_000, 4549)
			.saturating_add(T::DbWeight::get().reads(6_u64))
			.saturating_add(T::DbWeight::get().writes(9_u64))
	}
	/// Storage: `DataNets::Records` (r:1 w:1)
	/// Proof: `DataNets::Records` (`max_values`: None, `max_size`: Some(1410), added: 3885, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::DataNets` (r:1 w:1)
	/// Proof: `DataNets::DataNets` (`max_values`: None, `max_size`: Some(1084), added: 3559, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::Contributions` (r:1 w:1)
	/// Proof: `DataNets::Contributions` (`max_values`: None, `max_size`: Some(108), added: 2583, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::AcceptedRecords` (r:0 w:1)
	/// Proof: `DataNets::AcceptedRecords` (`max_values`: None, `max_size`: Some(76), added: 2551, mode: `MaxEncodedLen`)
	fn accept_record() -> Weight {
		// Proof size: measured `2814`, estimated `4875`.
		// Minimum execution time: 48_381_000 picoseconds.
		Weight::from_parts(59_882_000, 4875)
			.saturating_add(T::DbWeight::get().reads(3_u64))
			.saturating_add(T::DbWeight::get().writes(4_u64))
	}
	/// Storage: `DataNets::Records` (r:1 w:1)
	/// Proof: `DataNets::Records` (`max_values`: None, `max_size`: Some(1410), added: 3885, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::DataNets` (r:1 w:1)
	/// Proof: `DataNets::DataNets` (`max_values`: None, `max_size`: Some(1084), added: 3559, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:2 w:2)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::RecordsByHash` (r:0 w:1)
	/// Proof: `DataNets::RecordsByHash` (`max_values`: None, `max_size`: Some(76), added: 2551, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::ContributorRecords` (r:0 w:1)
	/// Proof: `DataNets::ContributorRecords` (`max_values`: None, `max_size`: Some(68), added: 2543, mode: `MaxEncodedLen`)
	fn reject_record() -> Weight {
		// Proof size: measured `3412`, estimated `6196`.
		// Minimum execution time: 137_188_000 picoseconds.
		Weight::from_parts(208_231_000, 6196)
			.saturating_add(T::DbWeight::get().reads(5_u64))
			.saturating_add(T::DbWeight::get().writes(7_u64))
	}
	/// Storage: `DataNets::Records` (r:1 w:1)
	/// Proof: `DataNets::Records` (`max_values`: None, `max_size`: Some(1410), added: 3885, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:1 w:1)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	/// Storage: `Balances::Holds` (r:1 w:1)
	/// Proof: `Balances::Holds` (`max_values`: None, `max_size`: Some(139), added: 2614, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::DataNets` (r:1 w:1)
	/// Proof: `DataNets::DataNets` (`max_values`: None, `max_size`: Some(1084), added: 3559, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::RecordsByHash` (r:0 w:1)
	/// Proof: `DataNets::RecordsByHash` (`max_values`: None, `max_size`: Some(76), added: 2551, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::ContributorRecords` (r:0 w:1)
	/// Proof: `DataNets::ContributorRecords` (`max_values`: None, `max_size`: Some(68), added: 2543, mode: `MaxEncodedLen`)
	fn withdraw_record() -> Weight {
		// Proof size: measured `3238`, estimated `4875`.
		// Minimum execution time: 89_378_000 picoseconds.
		Weight::from_parts(98_985_000, 4875)
			.saturating_add(T::DbWeight::get().reads(4_u64))
			.saturating_add(T::DbWeight::get().writes(6_u64))
	}
	/// Storage: `DataNets::DataNets` (r:1 w:1)
	/// Proof: `DataNets::DataNets` (`max_values`: None, `max_size`: Some(1084), added: 3559, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:2 w:2)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	fn reward() -> Weight {
		// Proof size: measured `2071`, estimated `6196`.
		// Minimum execution time: 80_030_000 picoseconds.
		Weight::from_parts(88_326_000, 6196)
			.saturating_add(T::DbWeight::get().reads(3_u64))
			.saturating_add(T::DbWeight::get().writes(3_u64))
	}
	/// Storage: `DataNets::DataNets` (r:1 w:0)
	/// Proof: `DataNets::DataNets` (`max_values`: None, `max_size`: Some(1084), added: 3559, mode: `MaxEncodedLen`)
	/// Storage: `DataNets::Contributions` (r:1 w:1)
	/// Proof: `DataNets::Contributions` (`max_values`: None, `max_size`: Some(108), added: 2583, mode: `MaxEncodedLen`)
	/// Storage: `System::Account` (r:2 w:2)
	/// Proof: `System::Account` (`max_values`: None, `max_size`: Some(128), added: 2603, mode: `MaxEncodedLen`)
	fn claim_rewards() -> Weight {
		// Proof size: measured `2265`, estimated `6196`.
		// Minimum execution time: 90_670_000 picoseconds.
		Weight::from_parts(98_395_000, 6196)
			.saturating_add(T::DbWeight::get().reads(4_u64))
			.saturating_add(T::DbWeight::get().writes(3_u64))
	}
}

/// The same weights with RocksDB's database weights, for tests and mocks.
impl WeightInfo for () {
	fn create_datanet(c: u32, ) -> Weight {
		Weight::from_parts(115_636_432, 3604)
			.saturating_add(Weight::from_parts(90_815, 0).saturating_mul(c.into()))
			.saturating_add(RocksDbWeight::get().reads(3_u64))
			.saturating_add(RocksDbWeight::get().writes(4_u64))
	}
	fn set_curators(c: u32, ) -> Weight {
		Weight::from_parts(30_185_527, 4549)
			.saturating_add(Weight::from_parts(98_897, 0).saturating_mul(c.into()))
			.saturating_add(RocksDbWeight::get().reads(1_u64))
			.saturating_add(RocksDbWeight::get().writes(1_u64))
	}
	fn set_curation() -> Weight {
		Weight::from_parts(40_165_000, 4549)
			.saturating_add(RocksDbWeight::get().reads(1_u64))
			.saturating_add(RocksDbWeight::get().writes(1_u64))
	}
	fn destroy_datanet() -> Weight {
		Weight::from_parts(102_553_000, 4549)
			.saturating_add(RocksDbWeight::get().reads(3_u64))
			.saturating_add(RocksDbWeight::get().writes(3_u64))
	}
	fn contribute() -> Weight {
		Weight::from_parts(173_325_000, 4549)
			.saturating_add(RocksDbWeight::get().reads(6_u64))
			.saturating_add(RocksDbWeight::get().writes(9_u64))
	}
	fn accept_record() -> Weight {
		Weight::from_parts(59_882_000, 4875)
			.saturating_add(RocksDbWeight::get().reads(3_u64))
			.saturating_add(RocksDbWeight::get().writes(4_u64))
	}
	fn reject_record() -> Weight {
		Weight::from_parts(208_231_000, 6196)
			.saturating_add(RocksDbWeight::get().reads(5_u64))
			.saturating_add(RocksDbWeight::get().writes(7_u64))
	}
	fn withdraw_record() -> Weight {
		Weight::from_parts(98_985_000, 4875)
			.saturating_add(RocksDbWeight::get().reads(4_u64))
			.saturating_add(RocksDbWeight::get().writes(6_u64))
	}
	fn reward() -> Weight {
		Weight::from_parts(88_326_000, 6196)
			.saturating_add(RocksDbWeight::get().reads(3_u64))
			.saturating_add(RocksDbWeight::get().writes(3_u64))
	}
	fn claim_rewards() -> Weight {
		Weight::from_parts(98_395_000, 6196)
			.saturating_add(RocksDbWeight::get().reads(4_u64))
			.saturating_add(RocksDbWeight::get().writes(3_u64))
	}
}
