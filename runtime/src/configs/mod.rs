//! The configuration of every pallet in the runtime.

use frame_support::{
	derive_impl,
	dispatch::DispatchClass,
	parameter_types,
	traits::{ConstBool, ConstU128, ConstU32, ConstU64, ConstU8, VariantCountOf},
	weights::{
		constants::{ParityDbWeight, WEIGHT_REF_TIME_PER_SECOND},
		ConstantMultiplier, Weight,
	},
	PalletId,
};
use frame_system::limits::{BlockLength, BlockWeights};
use pallet_transaction_payment::{FungibleAdapter, Multiplier, TargetedFeeAdjustment};
use sp_consensus_aura::sr25519::AuthorityId as AuraId;
use sp_runtime::{FixedPointNumber, Perbill, Perquintill};
use sp_version::RuntimeVersion;

mod registries;

use super::{
	fees::{AuraAccountAdapter, DealWithFees},
	token::{EXISTENTIAL_DEPOSIT, MICRO_OPEN, SS58_FORMAT},
	AccountId, Aura, Balance, Balances, Block, BlockNumber, Hash, Nonce, PalletInfo, Runtime,
	RuntimeCall, RuntimeEvent, RuntimeFreezeReason, RuntimeHoldReason, RuntimeOrigin, RuntimeTask,
	System, SLOT_DURATION, VERSION,
};

/// Three quarters of the block is available to normal transactions; the rest is kept for
/// operational ones (such as reports of validator misbehaviour).
const NORMAL_DISPATCH_RATIO: Perbill = Perbill::from_percent(75);

parameter_types! {
	/// The runtime version, checked by the `CheckSpecVersion` and `CheckTxVersion` extensions.
	pub const Version: RuntimeVersion = VERSION;
	/// Hashes of the last 2400 blocks are kept: enough for a mortal transaction of four hours.
	pub const BlockHashCount: BlockNumber = 2400;
	/// Two seconds of compute per block (a third of the 6-second slot), with a PoV size limit
	/// suited to a solo chain.
	pub RuntimeBlockWeights: BlockWeights = BlockWeights::with_sensible_defaults(
		Weight::from_parts(2u64 * WEIGHT_REF_TIME_PER_SECOND, u64::MAX),
		NORMAL_DISPATCH_RATIO,
	);
	/// Blocks are at most 5 MiB, three quarters of it for normal transactions.
	pub RuntimeBlockLength: BlockLength = BlockLength::builder()
		.max_length(5 * 1024 * 1024)
		.modify_max_length_for_class(DispatchClass::Normal, |max| *max = NORMAL_DISPATCH_RATIO * *max)
		.build();
	/// The SS58 address format of accounts.
	pub const SS58Prefix: u16 = SS58_FORMAT;
}

/// The system pallet: accounts, blocks, events. Everything not set here comes from
/// [`frame_system::config_preludes::SolochainDefaultConfig`].
#[derive_impl(frame_system::config_preludes::SolochainDefaultConfig)]
impl frame_system::Config for Runtime {
	type Block = Block;
	type BlockWeights = RuntimeBlockWeights;
	type BlockLength = RuntimeBlockLength;
	type AccountId = AccountId;
	type Nonce = Nonce;
	type Hash = Hash;
	type BlockHashCount = BlockHashCount;
	type DbWeight = ParityDbWeight;
	type Version = Version;
	type AccountData = pallet_balances::AccountData<Balance>;
	type SystemWeightInfo = frame_system::weights::SubstrateWeight<Runtime>;
	type SS58Prefix = SS58Prefix;
	type MaxConsumers = ConstU32<16>;
}

/// Aura: round-robin block authoring in fixed slots.
impl pallet_aura::Config for Runtime {
	type AuthorityId = AuraId;
	type DisabledValidators = ();
	type MaxAuthorities = ConstU32<32>;
	type AllowMultipleBlocksPerSlot = ConstBool<false>;
	type SlotDuration = pallet_aura::MinimumPeriodTimesTwo<Runtime>;
}

/// GRANDPA: finality by a two-thirds supermajority of the authorities.
impl pallet_grandpa::Config for Runtime {
	type RuntimeEvent = RuntimeEvent;
	type WeightInfo = ();
	type MaxAuthorities = ConstU32<32>;
	type MaxNominators = ConstU32<0>;
	type MaxSetIdSessionEntries = ConstU64<0>;
	type KeyOwnerProof = sp_core::Void;
	type EquivocationReportSystem = ();
}

/// Timestamp: set by the block author through an inherent; drives the Aura slot.
impl pallet_timestamp::Config for Runtime {
	type Moment = u64;
	type OnTimestampSet = Aura;
	type MinimumPeriod = ConstU64<{ SLOT_DURATION / 2 }>;
	type WeightInfo = pallet_timestamp::weights::SubstrateWeight<Runtime>;
}

/// Authorship: knows the author of the current block, who is paid the author's share of fees.
impl pallet_authorship::Config for Runtime {
	type FindAuthor = AuraAccountAdapter;
	type EventHandler = ();
}

/// Balances: the OPEN token, with holds (deposits, bonds) and freezes.
impl pallet_balances::Config for Runtime {
	type MaxLocks = ConstU32<50>;
	type MaxReserves = ();
	type ReserveIdentifier = [u8; 8];
	type Balance = Balance;
	type RuntimeEvent = RuntimeEvent;
	type DustRemoval = ();
	type ExistentialDeposit = ConstU128<EXISTENTIAL_DEPOSIT>;
	type AccountStore = System;
	type WeightInfo = pallet_balances::weights::SubstrateWeight<Runtime>;
	type FreezeIdentifier = RuntimeFreezeReason;
	type MaxFreezes = VariantCountOf<RuntimeFreezeReason>;
	type RuntimeHoldReason = RuntimeHoldReason;
	type RuntimeFreezeReason = RuntimeFreezeReason;
	type DoneSlashHandler = ();
}

/// The fee charged per picosecond of `ref_time` weight, in the smallest unit: 10^-11 OPEN, so
/// that a plain transfer (about 0.2 ms of reference compute) costs about 0.002 OPEN.
pub const FEE_PER_REF_TIME: Balance = 10_000_000;
/// The fee charged per byte of an extrinsic: one micro-OPEN.
pub const FEE_PER_BYTE: Balance = MICRO_OPEN;

parameter_types! {
	/// Fees are adjusted to keep blocks a quarter full.
	pub const TargetBlockFullness: Perquintill = Perquintill::from_percent(25);
	/// How fast the fee multiplier follows congestion (as on Polkadot).
	pub AdjustmentVariable: Multiplier = Multiplier::saturating_from_rational(75, 1_000_000);
	/// The multiplier never falls below this, so transactions never become free.
	pub MinimumMultiplier: Multiplier = Multiplier::saturating_from_rational(1, 10u128);
	/// The multiplier has no upper bound other than the type's.
	pub MaximumMultiplier: Multiplier = sp_runtime::traits::Bounded::max_value();
}

/// The fee multiplier update: `TargetedFeeAdjustment`, as on Polkadot.
pub type SlowAdjustingFeeUpdate<R> = TargetedFeeAdjustment<
	R,
	TargetBlockFullness,
	AdjustmentVariable,
	MinimumMultiplier,
	MaximumMultiplier,
>;

/// Transaction payment: fees in OPEN with a congestion multiplier, split by [`DealWithFees`].
impl pallet_transaction_payment::Config for Runtime {
	type RuntimeEvent = RuntimeEvent;
	type OnChargeTransaction = FungibleAdapter<Balances, DealWithFees<Runtime>>;
	type OperationalFeeMultiplier = ConstU8<5>;
	type WeightToFee = ConstantMultiplier<Balance, ConstU128<FEE_PER_REF_TIME>>;
	type LengthToFee = ConstantMultiplier<Balance, ConstU128<FEE_PER_BYTE>>;
	type FeeMultiplierUpdate = SlowAdjustingFeeUpdate<Runtime>;
	type WeightInfo = pallet_transaction_payment::weights::SubstrateWeight<Runtime>;
}

/// Sudo: a superuser key for the dev and local chains.
impl pallet_sudo::Config for Runtime {
	type RuntimeEvent = RuntimeEvent;
	type RuntimeCall = RuntimeCall;
	type WeightInfo = pallet_sudo::weights::SubstrateWeight<Runtime>;
}

/// Utility: batches of calls.
impl pallet_utility::Config for Runtime {
	type RuntimeEvent = RuntimeEvent;
	type RuntimeCall = RuntimeCall;
	type PalletsOrigin = crate::OriginCaller;
	type WeightInfo = pallet_utility::weights::SubstrateWeight<Runtime>;
}

parameter_types! {
	/// The treasury's pallet id; its account receives the treasury's share of every fee.
	pub const TreasuryPalletId: PalletId = PalletId(*b"ol/trsry");
}
