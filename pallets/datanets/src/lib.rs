//! # DataNets pallet
//!
//! A DataNet is a community dataset. Its owner creates it with a name, a description (URI plus
//! content hash), a license, a curation mode and a set of curators, and a deposit is held from
//! the owner while it exists. Contributors add records (content hash, URI, byte size, optional
//! metadata) with a per-record deposit held from them. In an [`CurationMode::Open`] DataNet a
//! record is accepted on submission; in a [`CurationMode::Curated`] one it waits until a curator
//! (or the owner) accepts or rejects it. A rejection forfeits the DataNet's configured share of
//! the record's deposit (capped by [`Config::MaxRejectionForfeit`]); a contributor who withdraws
//! a pending record gets the whole deposit back.
//!
//! ## Accepted records and the commitment
//!
//! Every record gets a global [`RecordId`] when it is contributed; the id never changes and is
//! never reused, so attribution proofs can name records by id. An accepted record also gets an
//! index among its DataNet's accepted records. Each DataNet keeps a running commitment, a hash
//! chain over `(index, record id, content hash)` in acceptance order
//! ([`openledger_primitives::next_commitment`]), and a version: the number of accepted records.
//! The commitment after every acceptance is kept beside the record in [`AcceptedRecords`], so a
//! worker can prove which snapshot (version) of a DataNet it indexed.
//!
//! ## Rewards
//!
//! Rewards paid to a DataNet as a whole ([`Pallet::reward`], or [`Pallet::do_reward`] from other
//! pallets) are split among its contributors in proportion to their accepted records, in O(1) per
//! payment: the DataNet keeps a reward-per-record accumulator, each contributor a checkpoint of
//! it, and [`Pallet::claim_rewards`] pays out the difference. Rewards wait in the pallet's account
//! ([`Pallet::account_id`]) until they are claimed.

#![cfg_attr(not(feature = "std"), no_std)]
// Calls take each field as its own argument, so that polkadot.js Apps shows a form field for
// each; some have more than clippy's default of seven.
#![allow(clippy::too_many_arguments)]

extern crate alloc;

pub use pallet::*;
pub use weights::WeightInfo;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;
pub mod weights;

pub use openledger_primitives::{ContentHash, CurationMode, DataNetId, RecordId, EMPTY_COMMITMENT};

use codec::{Decode, Encode, MaxEncodedLen};
use frame_support::{
	traits::fungible::{Credit, Inspect},
	BoundedVec, CloneNoBound, DebugNoBound, DefaultNoBound, EqNoBound, PartialEqNoBound,
};
use scale_info::TypeInfo;

type AccountIdOf<T> = <T as frame_system::Config>::AccountId;
/// The balance type of the pallet's currency.
pub type BalanceOf<T> = <<T as Config>::Currency as Inspect<AccountIdOf<T>>>::Balance;
/// Funds taken from an account by a forfeit, waiting to be handled by [`Config::Forfeit`].
pub type CreditOf<T> = Credit<AccountIdOf<T>, <T as Config>::Currency>;

/// The fixed-point scale of [`DataNet::reward_per_record`]: rewards per accepted record are
/// kept in units of `1 / REWARD_PRECISION` of the smallest balance unit.
pub const REWARD_PRECISION: u128 = 1_000_000_000;

/// A DataNet: a community dataset and the state of its records and rewards.
#[derive(
	Encode, Decode, MaxEncodedLen, TypeInfo, CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound(T: Config))]
pub struct DataNet<T: Config> {
	/// Who created the DataNet and whose deposit it holds.
	pub owner: T::AccountId,
	/// A short human-readable name.
	pub name: BoundedVec<u8, T::MaxNameLen>,
	/// Where the DataNet's description lives.
	pub description_uri: BoundedVec<u8, T::MaxUriLen>,
	/// The content hash of the description at `description_uri`.
	pub description_hash: ContentHash,
	/// The license of the records, for example an SPDX identifier.
	pub license: BoundedVec<u8, T::MaxLicenseLen>,
	/// Whether records are accepted on submission or by curators.
	pub curation: CurationMode,
	/// Accounts that may accept or reject records, besides the owner.
	pub curators: BoundedVec<T::AccountId, T::MaxCurators>,
	/// The share of a rejected record's deposit that is forfeited.
	pub rejection_forfeit: sp_runtime::Perbill,
	/// The deposit held from the owner for this DataNet.
	pub deposit: BalanceOf<T>,
	/// The number of accepted records; the version of [`DataNet::commitment`].
	pub version: u64,
	/// The hash chain over the accepted records, in acceptance order.
	pub commitment: [u8; 32],
	/// The number of records waiting for a curator.
	pub pending: u32,
	/// Rewards paid to the DataNet per accepted record, scaled by [`REWARD_PRECISION`].
	pub reward_per_record: u128,
	/// All rewards ever paid to the DataNet.
	pub rewards_paid: BalanceOf<T>,
}

/// Where a record stands.
#[derive(Clone, Copy, Encode, Decode, MaxEncodedLen, TypeInfo, PartialEq, Eq, Debug)]
pub enum RecordStatus {
	/// Waiting for a curator.
	Pending,
	/// Accepted as the `index`-th (0-based) accepted record of its DataNet.
	Accepted {
		/// The position among the DataNet's accepted records.
		index: u64,
	},
}

/// A record contributed to a DataNet.
#[derive(
	Encode, Decode, MaxEncodedLen, TypeInfo, CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound(T: Config))]
pub struct Record<T: Config> {
	/// The DataNet the record belongs to.
	pub datanet: DataNetId,
	/// The account that contributed it, whose deposit it holds and who earns its rewards.
	pub contributor: T::AccountId,
	/// The hash of the record's content.
	pub content_hash: ContentHash,
	/// Where the content lives.
	pub uri: BoundedVec<u8, T::MaxUriLen>,
	/// The content's size in bytes.
	pub size: u64,
	/// Free-form metadata (for example JSON), if any.
	pub metadata: Option<BoundedVec<u8, T::MaxMetadataLen>>,
	/// The deposit held from the contributor for this record.
	pub deposit: BalanceOf<T>,
	/// Pending or accepted.
	pub status: RecordStatus,
}

/// An accepted record, by its position in its DataNet.
#[derive(Clone, Copy, Encode, Decode, MaxEncodedLen, TypeInfo, PartialEq, Eq, Debug)]
pub struct AcceptedRecord {
	/// The record.
	pub record: RecordId,
	/// The DataNet's commitment once this record was accepted (at version `index + 1`).
	pub commitment: [u8; 32],
}

/// A contributor's share of a DataNet's rewards.
#[derive(
	Encode,
	Decode,
	MaxEncodedLen,
	TypeInfo,
	CloneNoBound,
	PartialEqNoBound,
	EqNoBound,
	DebugNoBound,
	DefaultNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound(T: Config))]
pub struct Contribution<T: Config> {
	/// The contributor's accepted records in the DataNet.
	pub accepted: u64,
	/// [`DataNet::reward_per_record`] when the contributor's rewards were last settled.
	pub reward_checkpoint: u128,
	/// Rewards settled but not yet claimed.
	pub unclaimed: BalanceOf<T>,
}

#[frame_support::pallet]
pub mod pallet {
	use super::*;
	use frame_support::{
		pallet_prelude::*,
		traits::{
			fungible::{self, Mutate as _, MutateHold as _},
			tokens::{Precision, Preservation},
			Imbalance as _, OnUnbalanced,
		},
		PalletId,
	};
	use frame_system::pallet_prelude::*;
	use openledger_primitives::storage_deposit;
	use sp_runtime::{
		traits::{AccountIdConversion, Saturating, Zero},
		Perbill, Rounding, SaturatedConversion,
	};

	/// The pallet's storage version.
	const STORAGE_VERSION: StorageVersion = StorageVersion::new(1);

	#[pallet::pallet]
	#[pallet::storage_version(STORAGE_VERSION)]
	pub struct Pallet<T>(_);

	/// Why the pallet holds funds.
	#[pallet::composite_enum]
	pub enum HoldReason {
		/// The deposit of a DataNet, held from its owner.
		DataNetDeposit,
		/// The deposit of a contributed record, held from its contributor.
		RecordDeposit,
	}

	/// The pallet's configuration.
	#[pallet::config]
	pub trait Config: frame_system::Config {
		/// The currency that deposits are held in and rewards are paid in.
		type Currency: fungible::MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>
			+ fungible::Mutate<Self::AccountId>
			+ fungible::BalancedHold<Self::AccountId>;

		/// The runtime's hold reason, which includes this pallet's [`HoldReason`].
		type RuntimeHoldReason: From<HoldReason>;

		/// Receives the forfeited part of rejected records' deposits (for example the treasury).
		type Forfeit: OnUnbalanced<CreditOf<Self>>;

		/// The base deposit held for a DataNet.
		#[pallet::constant]
		type DataNetDeposit: Get<BalanceOf<Self>>;

		/// The base deposit held for a record.
		#[pallet::constant]
		type RecordDeposit: Get<BalanceOf<Self>>;

		/// The deposit per byte of names, URIs, licenses and metadata stored on chain.
		#[pallet::constant]
		type ByteDeposit: Get<BalanceOf<Self>>;

		/// The largest share of a rejected record's deposit a DataNet may forfeit.
		#[pallet::constant]
		type MaxRejectionForfeit: Get<Perbill>;

		/// The smallest reward that can be paid to a DataNet.
		#[pallet::constant]
		type MinReward: Get<BalanceOf<Self>>;

		/// The pallet's id, from which the account holding unclaimed rewards is derived.
		#[pallet::constant]
		type PalletId: Get<PalletId>;

		/// The longest DataNet name, in bytes.
		#[pallet::constant]
		type MaxNameLen: Get<u32>;

		/// The longest URI, in bytes.
		#[pallet::constant]
		type MaxUriLen: Get<u32>;

		/// The longest license, in bytes.
		#[pallet::constant]
		type MaxLicenseLen: Get<u32>;

		/// The longest record metadata, in bytes.
		#[pallet::constant]
		type MaxMetadataLen: Get<u32>;

		/// The most curators a DataNet can have, besides its owner.
		#[pallet::constant]
		type MaxCurators: Get<u32>;

		/// Weights of the pallet's calls, from its benchmarks.
		type WeightInfo: WeightInfo;
	}

	/// The id the next DataNet will get.
	#[pallet::storage]
	pub type NextDataNetId<T> = StorageValue<_, DataNetId, ValueQuery>;

	/// The DataNets, by id.
	#[pallet::storage]
	pub type DataNets<T: Config> = StorageMap<_, Blake2_128Concat, DataNetId, DataNet<T>>;

	/// The id the next record will get.
	#[pallet::storage]
	pub type NextRecordId<T> = StorageValue<_, RecordId, ValueQuery>;

	/// Records, pending and accepted, by id. Rejected and withdrawn records are removed.
	#[pallet::storage]
	pub type Records<T: Config> = StorageMap<_, Blake2_128Concat, RecordId, Record<T>>;

	/// A DataNet's accepted records by position (0-based, in acceptance order), with the
	/// DataNet's commitment after each one.
	#[pallet::storage]
	pub type AcceptedRecords<T> =
		StorageDoubleMap<_, Blake2_128Concat, DataNetId, Twox64Concat, u64, AcceptedRecord>;

	/// The record of a DataNet with a given content hash: a DataNet holds each content once.
	#[pallet::storage]
	pub type RecordsByHash<T> =
		StorageDoubleMap<_, Blake2_128Concat, DataNetId, Blake2_128Concat, ContentHash, RecordId>;

	/// Each contributor's records (pending and accepted), with the DataNet they belong to.
	#[pallet::storage]
	pub type ContributorRecords<T: Config> =
		StorageDoubleMap<_, Blake2_128Concat, T::AccountId, Twox64Concat, RecordId, DataNetId>;

	/// Each contributor's accepted records and rewards in a DataNet.
	#[pallet::storage]
	pub type Contributions<T: Config> = StorageDoubleMap<
		_,
		Blake2_128Concat,
		DataNetId,
		Blake2_128Concat,
		T::AccountId,
		Contribution<T>,
	>;

	/// The pallet's genesis: it makes sure the reward account exists.
	#[pallet::genesis_config]
	#[derive(frame_support::DefaultNoBound)]
	pub struct GenesisConfig<T: Config> {
		#[serde(skip)]
		_config: core::marker::PhantomData<T>,
	}

	#[pallet::genesis_build]
	impl<T: Config> BuildGenesisConfig for GenesisConfig<T> {
		fn build(&self) {
			// The reward account keeps the existential deposit so that claims never reap it.
			let account = Pallet::<T>::account_id();
			let min = T::Currency::minimum_balance();
			if T::Currency::balance(&account) < min {
				let _ = T::Currency::mint_into(&account, min);
			}
		}
	}

	#[pallet::event]
	#[pallet::generate_deposit(pub(super) fn deposit_event)]
	pub enum Event<T: Config> {
		/// A DataNet was created.
		DataNetCreated { datanet: DataNetId, owner: T::AccountId, curation: CurationMode },
		/// A DataNet's curators were replaced.
		CuratorsSet { datanet: DataNetId, curators: BoundedVec<T::AccountId, T::MaxCurators> },
		/// A DataNet's curation mode or rejection forfeit changed.
		CurationSet { datanet: DataNetId, curation: CurationMode, rejection_forfeit: Perbill },
		/// An empty DataNet was destroyed and its deposit released.
		DataNetDestroyed { datanet: DataNetId },
		/// A record was contributed (and, in an open DataNet, accepted at once).
		RecordContributed {
			datanet: DataNetId,
			record: RecordId,
			contributor: T::AccountId,
			content_hash: ContentHash,
		},
		/// A record was accepted: it is the `index`-th accepted record, and the DataNet is now at
		/// `version` with `commitment`.
		RecordAccepted {
			datanet: DataNetId,
			record: RecordId,
			index: u64,
			version: u64,
			commitment: [u8; 32],
		},
		/// A pending record was rejected; `forfeited` of its deposit was taken.
		RecordRejected { datanet: DataNetId, record: RecordId, forfeited: BalanceOf<T> },
		/// A pending record was withdrawn by its contributor and its deposit released.
		RecordWithdrawn { datanet: DataNetId, record: RecordId },
		/// A reward was paid to a DataNet's contributors.
		DataNetRewarded { datanet: DataNetId, payer: T::AccountId, amount: BalanceOf<T> },
		/// A contributor claimed their rewards from a DataNet.
		RewardsClaimed { datanet: DataNetId, contributor: T::AccountId, amount: BalanceOf<T> },
	}

	#[pallet::error]
	pub enum Error<T> {
		/// No DataNet has this id.
		UnknownDataNet,
		/// No pending or accepted record has this id.
		UnknownRecord,
		/// Only the DataNet's owner may do this.
		NotOwner,
		/// Only the DataNet's owner or one of its curators may do this.
		NotCurator,
		/// Only the record's contributor may do this.
		NotContributor,
		/// The record has already been accepted.
		AlreadyAccepted,
		/// The DataNet already holds a record with this content hash.
		DuplicateContent,
		/// An account appears twice in the curator list.
		DuplicateCurator,
		/// The DataNet's name is empty.
		EmptyName,
		/// A record must have a size greater than zero.
		EmptyRecord,
		/// The rejection forfeit is above the runtime's maximum.
		ForfeitTooHigh,
		/// A DataNet with records (pending or accepted) cannot be destroyed.
		DataNetNotEmpty,
		/// The DataNet has no accepted records to share a reward among.
		NoContributors,
		/// The reward is below the minimum.
		RewardTooSmall,
		/// There are no rewards to claim.
		NothingToClaim,
		/// No more ids are available.
		IdsExhausted,
		/// A counter or the reward accumulator would overflow.
		Overflow,
	}

	#[pallet::hooks]
	impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
		#[cfg(feature = "try-runtime")]
		fn try_state(_n: BlockNumberFor<T>) -> Result<(), sp_runtime::TryRuntimeError> {
			Self::do_try_state()
		}
	}

	#[pallet::call]
	impl<T: Config> Pallet<T> {
		/// Create a DataNet owned by the caller.
		///
		/// Holds [`Config::DataNetDeposit`] plus [`Config::ByteDeposit`] for every byte of the
		/// name, description URI and license. `curation` decides whether records are accepted on
		/// submission (`Open`) or by the owner and `curators` (`Curated`); `rejection_forfeit` is
		/// the share of a rejected record's deposit that is forfeited.
		#[pallet::call_index(0)]
		#[pallet::weight(T::WeightInfo::create_datanet(curators.len() as u32))]
		pub fn create_datanet(
			origin: OriginFor<T>,
			name: BoundedVec<u8, T::MaxNameLen>,
			description_uri: BoundedVec<u8, T::MaxUriLen>,
			description_hash: ContentHash,
			license: BoundedVec<u8, T::MaxLicenseLen>,
			curation: CurationMode,
			curators: BoundedVec<T::AccountId, T::MaxCurators>,
			rejection_forfeit: Perbill,
		) -> DispatchResult {
			let owner = ensure_signed(origin)?;
			ensure!(!name.is_empty(), Error::<T>::EmptyName);
			ensure!(rejection_forfeit <= T::MaxRejectionForfeit::get(), Error::<T>::ForfeitTooHigh);
			Self::ensure_distinct(&curators)?;

			let id = NextDataNetId::<T>::get();
			let next = id.checked_add(1).ok_or(Error::<T>::IdsExhausted)?;
			let bytes =
				name.len().saturating_add(description_uri.len()).saturating_add(license.len());
			let deposit = storage_deposit(T::DataNetDeposit::get(), T::ByteDeposit::get(), bytes);
			T::Currency::hold(&HoldReason::DataNetDeposit.into(), &owner, deposit)?;

			DataNets::<T>::insert(
				id,
				DataNet {
					owner: owner.clone(),
					name,
					description_uri,
					description_hash,
					license,
					curation,
					curators,
					rejection_forfeit,
					deposit,
					version: 0,
					commitment: EMPTY_COMMITMENT,
					pending: 0,
					reward_per_record: 0,
					rewards_paid: Zero::zero(),
				},
			);
			NextDataNetId::<T>::put(next);
			Self::deposit_event(Event::DataNetCreated { datanet: id, owner, curation });
			Ok(())
		}

		/// Replace a DataNet's curators. Only its owner may do this.
		#[pallet::call_index(1)]
		#[pallet::weight(T::WeightInfo::set_curators(curators.len() as u32))]
		pub fn set_curators(
			origin: OriginFor<T>,
			datanet: DataNetId,
			curators: BoundedVec<T::AccountId, T::MaxCurators>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			Self::ensure_distinct(&curators)?;
			DataNets::<T>::try_mutate(datanet, |maybe| {
				let net = maybe.as_mut().ok_or(Error::<T>::UnknownDataNet)?;
				ensure!(net.owner == who, Error::<T>::NotOwner);
				net.curators = curators.clone();
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::CuratorsSet { datanet, curators });
			Ok(())
		}

		/// Change a DataNet's curation mode and rejection forfeit. Only its owner may do this.
		///
		/// Records already pending stay pending when a DataNet becomes open; curators still
		/// decide on them.
		#[pallet::call_index(2)]
		#[pallet::weight(T::WeightInfo::set_curation())]
		pub fn set_curation(
			origin: OriginFor<T>,
			datanet: DataNetId,
			curation: CurationMode,
			rejection_forfeit: Perbill,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			ensure!(rejection_forfeit <= T::MaxRejectionForfeit::get(), Error::<T>::ForfeitTooHigh);
			DataNets::<T>::try_mutate(datanet, |maybe| {
				let net = maybe.as_mut().ok_or(Error::<T>::UnknownDataNet)?;
				ensure!(net.owner == who, Error::<T>::NotOwner);
				net.curation = curation;
				net.rejection_forfeit = rejection_forfeit;
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::CurationSet { datanet, curation, rejection_forfeit });
			Ok(())
		}

		/// Destroy a DataNet that has no records, releasing its deposit. Only its owner may do
		/// this. A DataNet with accepted records stays: attribution proofs name its records.
		#[pallet::call_index(3)]
		#[pallet::weight(T::WeightInfo::destroy_datanet())]
		pub fn destroy_datanet(origin: OriginFor<T>, datanet: DataNetId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let net = DataNets::<T>::get(datanet).ok_or(Error::<T>::UnknownDataNet)?;
			ensure!(net.owner == who, Error::<T>::NotOwner);
			ensure!(net.version == 0 && net.pending == 0, Error::<T>::DataNetNotEmpty);
			T::Currency::release(
				&HoldReason::DataNetDeposit.into(),
				&who,
				net.deposit,
				Precision::BestEffort,
			)?;
			DataNets::<T>::remove(datanet);
			Self::deposit_event(Event::DataNetDestroyed { datanet });
			Ok(())
		}

		/// Contribute a record to a DataNet: the hash of its content, where the content lives,
		/// its size in bytes and optional metadata.
		///
		/// Holds [`Config::RecordDeposit`] plus [`Config::ByteDeposit`] for every byte of the URI
		/// and metadata. In an open DataNet the record is accepted at once.
		#[pallet::call_index(4)]
		#[pallet::weight(T::WeightInfo::contribute())]
		pub fn contribute(
			origin: OriginFor<T>,
			datanet: DataNetId,
			content_hash: ContentHash,
			uri: BoundedVec<u8, T::MaxUriLen>,
			size: u64,
			metadata: Option<BoundedVec<u8, T::MaxMetadataLen>>,
		) -> DispatchResult {
			let contributor = ensure_signed(origin)?;
			ensure!(size > 0, Error::<T>::EmptyRecord);
			let mut net = DataNets::<T>::get(datanet).ok_or(Error::<T>::UnknownDataNet)?;
			ensure!(
				!RecordsByHash::<T>::contains_key(datanet, content_hash),
				Error::<T>::DuplicateContent
			);
			let id = NextRecordId::<T>::get();
			let next = id.checked_add(1).ok_or(Error::<T>::IdsExhausted)?;
			let bytes = uri.len().saturating_add(metadata.as_ref().map_or(0, |m| m.len()));
			let deposit = storage_deposit(T::RecordDeposit::get(), T::ByteDeposit::get(), bytes);
			T::Currency::hold(&HoldReason::RecordDeposit.into(), &contributor, deposit)?;

			let mut record = Record {
				datanet,
				contributor: contributor.clone(),
				content_hash,
				uri,
				size,
				metadata,
				deposit,
				status: RecordStatus::Pending,
			};
			let accepted = match net.curation {
				CurationMode::Open => Some(Self::accept(&mut net, &mut record, id)?),
				CurationMode::Curated => {
					net.pending = net.pending.checked_add(1).ok_or(Error::<T>::Overflow)?;
					None
				}
			};

			DataNets::<T>::insert(datanet, net);
			Records::<T>::insert(id, record);
			RecordsByHash::<T>::insert(datanet, content_hash, id);
			ContributorRecords::<T>::insert(&contributor, id, datanet);
			NextRecordId::<T>::put(next);
			Self::deposit_event(Event::RecordContributed {
				datanet,
				record: id,
				contributor,
				content_hash,
			});
			if let Some(event) = accepted {
				Self::deposit_event(event);
			}
			Ok(())
		}

		/// Accept a pending record. Only the DataNet's owner or one of its curators may do this.
		///
		/// The record becomes the DataNet's next accepted record, the commitment and version
		/// advance, and the contributor's share of future rewards grows by one record.
		#[pallet::call_index(5)]
		#[pallet::weight(T::WeightInfo::accept_record())]
		pub fn accept_record(origin: OriginFor<T>, record: RecordId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let mut rec = Records::<T>::get(record).ok_or(Error::<T>::UnknownRecord)?;
			let mut net = DataNets::<T>::get(rec.datanet).ok_or(Error::<T>::UnknownDataNet)?;
			Self::ensure_curator(&net, &who)?;
			ensure!(rec.status == RecordStatus::Pending, Error::<T>::AlreadyAccepted);
			let event = Self::accept(&mut net, &mut rec, record)?;
			net.pending = net.pending.saturating_sub(1);
			DataNets::<T>::insert(rec.datanet, net);
			Records::<T>::insert(record, rec);
			Self::deposit_event(event);
			Ok(())
		}

		/// Reject a pending record. Only the DataNet's owner or one of its curators may do this.
		///
		/// The DataNet's rejection forfeit share of the deposit goes to [`Config::Forfeit`]; the
		/// rest is released to the contributor. The record is removed.
		#[pallet::call_index(6)]
		#[pallet::weight(T::WeightInfo::reject_record())]
		pub fn reject_record(origin: OriginFor<T>, record: RecordId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let rec = Records::<T>::get(record).ok_or(Error::<T>::UnknownRecord)?;
			let mut net = DataNets::<T>::get(rec.datanet).ok_or(Error::<T>::UnknownDataNet)?;
			Self::ensure_curator(&net, &who)?;
			ensure!(rec.status == RecordStatus::Pending, Error::<T>::AlreadyAccepted);

			let reason = HoldReason::RecordDeposit.into();
			let forfeit = net.rejection_forfeit.mul_floor(rec.deposit);
			let (credit, _missing) = <T::Currency as fungible::BalancedHold<_>>::slash(
				&reason,
				&rec.contributor,
				forfeit,
			);
			let forfeited = credit.peek();
			T::Forfeit::on_unbalanced(credit);
			T::Currency::release(
				&reason,
				&rec.contributor,
				rec.deposit.saturating_sub(forfeited),
				Precision::BestEffort,
			)?;

			net.pending = net.pending.saturating_sub(1);
			Self::remove_record(record, &rec);
			DataNets::<T>::insert(rec.datanet, net);
			Self::deposit_event(Event::RecordRejected { datanet: rec.datanet, record, forfeited });
			Ok(())
		}

		/// Withdraw a pending record, releasing its whole deposit. Only its contributor may do
		/// this; accepted records stay, because attribution proofs may name them.
		#[pallet::call_index(7)]
		#[pallet::weight(T::WeightInfo::withdraw_record())]
		pub fn withdraw_record(origin: OriginFor<T>, record: RecordId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let rec = Records::<T>::get(record).ok_or(Error::<T>::UnknownRecord)?;
			ensure!(rec.contributor == who, Error::<T>::NotContributor);
			ensure!(rec.status == RecordStatus::Pending, Error::<T>::AlreadyAccepted);
			T::Currency::release(
				&HoldReason::RecordDeposit.into(),
				&who,
				rec.deposit,
				Precision::BestEffort,
			)?;
			DataNets::<T>::mutate(rec.datanet, |maybe| {
				if let Some(net) = maybe {
					net.pending = net.pending.saturating_sub(1);
				}
			});
			Self::remove_record(record, &rec);
			Self::deposit_event(Event::RecordWithdrawn { datanet: rec.datanet, record });
			Ok(())
		}

		/// Pay `amount` from the caller to a DataNet's contributors, shared in proportion to
		/// their accepted records. The amount waits in the pallet's account until claimed.
		#[pallet::call_index(8)]
		#[pallet::weight(T::WeightInfo::reward())]
		pub fn reward(
			origin: OriginFor<T>,
			datanet: DataNetId,
			#[pallet::compact] amount: BalanceOf<T>,
		) -> DispatchResult {
			let payer = ensure_signed(origin)?;
			Self::do_reward(&payer, datanet, amount)
		}

		/// Pay the caller the rewards they have earned in a DataNet.
		#[pallet::call_index(9)]
		#[pallet::weight(T::WeightInfo::claim_rewards())]
		pub fn claim_rewards(origin: OriginFor<T>, datanet: DataNetId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let net = DataNets::<T>::get(datanet).ok_or(Error::<T>::UnknownDataNet)?;
			let mut contribution =
				Contributions::<T>::get(datanet, &who).ok_or(Error::<T>::NothingToClaim)?;
			Self::settle(&net, &mut contribution)?;
			let amount = contribution.unclaimed;
			ensure!(!amount.is_zero(), Error::<T>::NothingToClaim);
			T::Currency::transfer(&Self::account_id(), &who, amount, Preservation::Preserve)?;
			contribution.unclaimed = Zero::zero();
			Contributions::<T>::insert(datanet, &who, contribution);
			Self::deposit_event(Event::RewardsClaimed { datanet, contributor: who, amount });
			Ok(())
		}
	}

	impl<T: Config> Pallet<T> {
		/// The account that holds rewards until contributors claim them.
		pub fn account_id() -> T::AccountId {
			T::PalletId::get().into_account_truncating()
		}

		/// Pay `amount` from `payer` to the contributors of `datanet`, in O(1): the DataNet's
		/// reward-per-record accumulator grows by `amount / accepted records`. Used by
		/// [`Pallet::reward`] and by other pallets (settlement) that pay DataNets.
		pub fn do_reward(
			payer: &T::AccountId,
			datanet: DataNetId,
			amount: BalanceOf<T>,
		) -> DispatchResult {
			ensure!(amount >= T::MinReward::get(), Error::<T>::RewardTooSmall);
			let mut net = DataNets::<T>::get(datanet).ok_or(Error::<T>::UnknownDataNet)?;
			ensure!(net.version > 0, Error::<T>::NoContributors);
			let increment = sp_runtime::helpers_128bit::multiply_by_rational_with_rounding(
				amount.saturated_into::<u128>(),
				REWARD_PRECISION,
				u128::from(net.version),
				Rounding::Down,
			)
			.ok_or(Error::<T>::Overflow)?;
			net.reward_per_record =
				net.reward_per_record.checked_add(increment).ok_or(Error::<T>::Overflow)?;
			net.rewards_paid = net.rewards_paid.saturating_add(amount);
			T::Currency::transfer(payer, &Self::account_id(), amount, Preservation::Preserve)?;
			DataNets::<T>::insert(datanet, net);
			Self::deposit_event(Event::DataNetRewarded { datanet, payer: payer.clone(), amount });
			Ok(())
		}

		/// The rewards `who` could claim from `datanet` now.
		pub fn claimable(datanet: DataNetId, who: &T::AccountId) -> BalanceOf<T> {
			let (Some(net), Some(mut contribution)) =
				(DataNets::<T>::get(datanet), Contributions::<T>::get(datanet, who))
			else {
				return Zero::zero();
			};
			match Self::settle(&net, &mut contribution) {
				Ok(()) => contribution.unclaimed,
				Err(_) => Zero::zero(),
			}
		}

		/// A page of a DataNet's accepted records from position `start`, at most `limit` (and
		/// at most [`openledger_primitives::MAX_PAGE`]), with the commitment after each.
		pub fn accepted_page(
			datanet: DataNetId,
			start: u64,
			limit: u32,
		) -> alloc::vec::Vec<(RecordId, Record<T>, [u8; 32])> {
			let limit = u64::from(limit.min(openledger_primitives::MAX_PAGE));
			let end = DataNets::<T>::get(datanet)
				.map_or(0, |net| net.version)
				.min(start.saturating_add(limit));
			(start..end)
				.filter_map(|index| {
					let entry = AcceptedRecords::<T>::get(datanet, index)?;
					Some((entry.record, Records::<T>::get(entry.record)?, entry.commitment))
				})
				.collect()
		}

		/// A DataNet's `(version, commitment)`: now, or at `version` when given.
		pub fn commitment_at(datanet: DataNetId, version: Option<u64>) -> Option<(u64, [u8; 32])> {
			let net = DataNets::<T>::get(datanet)?;
			match version {
				None => Some((net.version, net.commitment)),
				Some(0) => Some((0, EMPTY_COMMITMENT)),
				Some(v) if v <= net.version => {
					AcceptedRecords::<T>::get(datanet, v - 1).map(|entry| (v, entry.commitment))
				}
				Some(_) => None,
			}
		}

		/// A page of `contributor`'s records after `start_after` (in storage order), at most
		/// `limit` (and at most [`openledger_primitives::MAX_PAGE`]).
		pub fn contributor_page(
			contributor: &T::AccountId,
			start_after: Option<RecordId>,
			limit: u32,
		) -> alloc::vec::Vec<(RecordId, Record<T>)> {
			let limit = limit.min(openledger_primitives::MAX_PAGE) as usize;
			let ids = match start_after {
				Some(after) => ContributorRecords::<T>::iter_prefix_from(
					contributor.clone(),
					ContributorRecords::<T>::hashed_key_for(contributor, after),
				),
				None => ContributorRecords::<T>::iter_prefix(contributor.clone()),
			};
			ids.filter_map(|(id, _)| Some((id, Records::<T>::get(id)?))).take(limit).collect()
		}

		fn ensure_distinct(curators: &[T::AccountId]) -> DispatchResult {
			for (i, curator) in curators.iter().enumerate() {
				ensure!(!curators[..i].contains(curator), Error::<T>::DuplicateCurator);
			}
			Ok(())
		}

		fn ensure_curator(net: &DataNet<T>, who: &T::AccountId) -> DispatchResult {
			ensure!(net.owner == *who || net.curators.contains(who), Error::<T>::NotCurator);
			Ok(())
		}

		/// Move the rewards earned since the contributor's checkpoint into `unclaimed`.
		fn settle(net: &DataNet<T>, contribution: &mut Contribution<T>) -> DispatchResult {
			let delta = net.reward_per_record.saturating_sub(contribution.reward_checkpoint);
			let earned = sp_runtime::helpers_128bit::multiply_by_rational_with_rounding(
				delta,
				u128::from(contribution.accepted),
				REWARD_PRECISION,
				Rounding::Down,
			)
			.ok_or(Error::<T>::Overflow)?;
			let earned: BalanceOf<T> = earned.try_into().map_err(|_| Error::<T>::Overflow)?;
			contribution.unclaimed = contribution.unclaimed.saturating_add(earned);
			contribution.reward_checkpoint = net.reward_per_record;
			Ok(())
		}

		/// Accept `record` (id `id`) into `net`: advance the commitment and version, and count
		/// it for its contributor. Writes the accepted-record entry and the contribution; the
		/// caller writes `net` and `record`.
		fn accept(
			net: &mut DataNet<T>,
			record: &mut Record<T>,
			id: RecordId,
		) -> Result<Event<T>, DispatchError> {
			let index = net.version;
			let version = index.checked_add(1).ok_or(Error::<T>::Overflow)?;
			let mut contribution =
				Contributions::<T>::get(record.datanet, &record.contributor).unwrap_or_default();
			Self::settle(net, &mut contribution)?;
			contribution.accepted =
				contribution.accepted.checked_add(1).ok_or(Error::<T>::Overflow)?;

			let commitment = openledger_primitives::next_commitment(
				&net.commitment,
				index,
				id,
				&record.content_hash,
			);
			net.version = version;
			net.commitment = commitment;
			record.status = RecordStatus::Accepted { index };
			AcceptedRecords::<T>::insert(
				record.datanet,
				index,
				AcceptedRecord { record: id, commitment },
			);
			Contributions::<T>::insert(record.datanet, &record.contributor, contribution);
			Ok(Event::RecordAccepted {
				datanet: record.datanet,
				record: id,
				index,
				version,
				commitment,
			})
		}

		fn remove_record(id: RecordId, record: &Record<T>) {
			Records::<T>::remove(id);
			RecordsByHash::<T>::remove(record.datanet, record.content_hash);
			ContributorRecords::<T>::remove(&record.contributor, id);
		}

		/// Checks the pallet's invariants:
		/// - the deposits held from each account, per reason, equal the deposits recorded for it;
		/// - each DataNet's commitment is the hash chain over its accepted records, its version
		///   their number, and `pending` the number of its pending records;
		/// - every record is indexed by its content hash and its contributor, and each
		///   contributor's accepted count matches their accepted records;
		/// - the reward account holds at least the rewards not yet claimed.
		#[cfg(any(feature = "try-runtime", test))]
		pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
			use alloc::collections::btree_map::BTreeMap;
			use frame_support::traits::fungible::InspectHold;

			let mut held: BTreeMap<(T::AccountId, bool), BalanceOf<T>> = BTreeMap::new();
			let mut pending: BTreeMap<DataNetId, u32> = BTreeMap::new();
			let mut accepted: BTreeMap<(DataNetId, T::AccountId), u64> = BTreeMap::new();
			let mut pending_recorded: BTreeMap<DataNetId, u32> = BTreeMap::new();
			for (id, net) in DataNets::<T>::iter() {
				ensure!(id < NextDataNetId::<T>::get(), "DataNet id not below the next id");
				pending_recorded.insert(id, net.pending);
				let entry = held.entry((net.owner.clone(), true)).or_default();
				*entry = entry.saturating_add(net.deposit);
				let mut chain = EMPTY_COMMITMENT;
				for index in 0..net.version {
					let entry = AcceptedRecords::<T>::get(id, index)
						.ok_or("accepted record missing from its DataNet")?;
					let record =
						Records::<T>::get(entry.record).ok_or("accepted record missing")?;
					ensure!(record.datanet == id, "accepted record in another DataNet");
					ensure!(
						record.status == RecordStatus::Accepted { index },
						"accepted record has a different index"
					);
					chain = openledger_primitives::next_commitment(
						&chain,
						index,
						entry.record,
						&record.content_hash,
					);
					ensure!(
						chain == entry.commitment,
						"stored commitment does not match its records"
					);
				}
				ensure!(chain == net.commitment, "DataNet commitment does not match its records");
				ensure!(
					AcceptedRecords::<T>::get(id, net.version).is_none(),
					"accepted record beyond the DataNet's version"
				);
			}
			let mut records = 0usize;
			for (id, record) in Records::<T>::iter() {
				records = records.saturating_add(1);
				ensure!(id < NextRecordId::<T>::get(), "record id not below the next id");
				ensure!(DataNets::<T>::contains_key(record.datanet), "record of a missing DataNet");
				ensure!(
					RecordsByHash::<T>::get(record.datanet, record.content_hash) == Some(id),
					"record not indexed by content hash"
				);
				ensure!(
					ContributorRecords::<T>::get(&record.contributor, id) == Some(record.datanet),
					"record not indexed by contributor"
				);
				let entry = held.entry((record.contributor.clone(), false)).or_default();
				*entry = entry.saturating_add(record.deposit);
				match record.status {
					RecordStatus::Pending => *pending.entry(record.datanet).or_default() += 1,
					RecordStatus::Accepted { .. } => {
						*accepted
							.entry((record.datanet, record.contributor.clone()))
							.or_default() += 1
					}
				}
			}
			ensure!(
				RecordsByHash::<T>::iter().count() == records,
				"content-hash index has stale entries"
			);
			ensure!(
				ContributorRecords::<T>::iter().count() == records,
				"contributor index has stale entries"
			);
			for (id, recorded) in pending_recorded {
				ensure!(
					pending.get(&id).copied().unwrap_or(0) == recorded,
					"pending count does not match pending records"
				);
			}
			let mut unclaimed: BalanceOf<T> = Zero::zero();
			for (datanet, who, contribution) in Contributions::<T>::iter() {
				let net = DataNets::<T>::get(datanet).ok_or("contribution to a missing DataNet")?;
				ensure!(
					accepted.get(&(datanet, who.clone())).copied().unwrap_or(0)
						== contribution.accepted,
					"contributor's accepted count does not match their records"
				);
				let mut settled = contribution.clone();
				Self::settle(&net, &mut settled).map_err(|_| "reward overflow")?;
				unclaimed = unclaimed.saturating_add(settled.unclaimed);
			}
			ensure!(
				T::Currency::balance(&Self::account_id()) >= unclaimed,
				"reward account holds less than the unclaimed rewards"
			);
			// Each account's holds of ours match the deposits recorded for it.
			for ((who, is_datanet), amount) in held.iter() {
				let reason = if *is_datanet {
					HoldReason::DataNetDeposit
				} else {
					HoldReason::RecordDeposit
				};
				ensure!(
					T::Currency::balance_on_hold(&reason.into(), who) == *amount,
					"held deposit differs from the deposits recorded"
				);
			}
			Ok(())
		}
	}
}
