//! # Adapters pallet: the model registry
//!
//! **Base models** are registered by governance (root): a name, the architecture (for example
//! `llama`), the content hash of the weights file, the quantization (for example `Q4_1`), the
//! context length and the license. Governance may later disable a base model so that no new
//! adapters are built on it.
//!
//! **LoRA adapters** are registered by anyone, on an enabled base model: the content hash of the
//! adapter files (PEFT `adapter_config.json` + `adapter_model.safetensors`), the rank, the target
//! modules, where the files live, the price per 1,000 generated tokens, and the DataNets the
//! adapter was trained on with a weight each (the weights sum to at most 100%), so that
//! inference with the adapter can be attributed to those DataNets. Owners change the price and
//! the URI, retire the adapter (it stays readable, because attribution proofs may name it, but
//! must no longer be served) and hand it to a new owner, who accepts and takes over the deposit.
//! A deposit is held from the owner while the adapter is registered.

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

pub use openledger_primitives::{AdapterId, BaseModelId, ContentHash, DataNetId};

use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::{
	traits::fungible::Inspect, BoundedVec, CloneNoBound, DebugNoBound, EqNoBound, PartialEqNoBound,
};
use scale_info::TypeInfo;
use sp_runtime::Perbill;

type AccountIdOf<T> = <T as frame_system::Config>::AccountId;
/// The balance type of the pallet's currency.
pub type BalanceOf<T> = <<T as Config>::Currency as Inspect<AccountIdOf<T>>>::Balance;

/// A projection of a transformer block that a LoRA adapter can target (PEFT's
/// `target_modules`).
#[derive(
	Clone,
	Copy,
	Debug,
	PartialEq,
	Eq,
	PartialOrd,
	Ord,
	Encode,
	Decode,
	DecodeWithMemTracking,
	MaxEncodedLen,
	TypeInfo,
)]
pub enum TargetModule {
	/// The attention query projection (`q_proj`).
	Q,
	/// The attention key projection (`k_proj`).
	K,
	/// The attention value projection (`v_proj`).
	V,
	/// The attention output projection (`o_proj`).
	O,
	/// The MLP gate projection (`gate_proj`).
	Gate,
	/// The MLP up projection (`up_proj`).
	Up,
	/// The MLP down projection (`down_proj`).
	Down,
}

/// The most target modules an adapter can declare: each of [`TargetModule`] once.
pub type MaxTargetModules = frame_support::traits::ConstU32<7>;

/// A base model.
#[derive(
	Encode, Decode, MaxEncodedLen, TypeInfo, CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound(T: Config))]
pub struct BaseModel<T: Config> {
	/// A human-readable name, for example `SmolLM2-135M-Instruct`.
	pub name: BoundedVec<u8, T::MaxNameLen>,
	/// The architecture, for example `llama`.
	pub architecture: BoundedVec<u8, T::MaxNameLen>,
	/// The content hash of the weights file.
	pub weights_hash: ContentHash,
	/// The quantization of the weights, for example `Q4_1` or `F16`.
	pub quantization: BoundedVec<u8, T::MaxNameLen>,
	/// The context length in tokens.
	pub context_length: u32,
	/// The license, for example an SPDX identifier.
	pub license: BoundedVec<u8, T::MaxNameLen>,
	/// Whether new adapters may be registered on it.
	pub enabled: bool,
}

/// A LoRA adapter.
#[derive(
	Encode, Decode, MaxEncodedLen, TypeInfo, CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound(T: Config))]
pub struct Adapter<T: Config> {
	/// The owner, who is paid for its use and whose deposit it holds.
	pub owner: T::AccountId,
	/// The base model it adapts.
	pub base_model: BaseModelId,
	/// A human-readable name.
	pub name: BoundedVec<u8, T::MaxNameLen>,
	/// The content hash of the adapter files.
	pub content_hash: ContentHash,
	/// The LoRA rank `r`.
	pub rank: u32,
	/// The projections it adapts, each once, in order.
	pub target_modules: BoundedVec<TargetModule, MaxTargetModules>,
	/// Where the adapter files live.
	pub uri: BoundedVec<u8, T::MaxUriLen>,
	/// The price per 1,000 generated tokens, in the smallest unit of the native token.
	pub price_per_1k_tokens: BalanceOf<T>,
	/// The DataNets it was trained on, each with its share of the training (sum at most 100%).
	pub datanets: BoundedVec<(DataNetId, Perbill), T::MaxTrainingDataNets>,
	/// Retired adapters stay readable but must no longer be served.
	pub retired: bool,
	/// The account the owner offered the adapter to, until it accepts.
	pub pending_owner: Option<T::AccountId>,
	/// The deposit held from the owner.
	pub deposit: BalanceOf<T>,
}

/// What the benchmarks need from the runtime.
#[cfg(feature = "runtime-benchmarks")]
pub trait BenchmarkHelper {
	/// Makes sure the `i`-th DataNet of the benchmarks exists and returns its id.
	fn datanet(i: u32) -> DataNetId;
}

#[frame_support::pallet]
pub mod pallet {
	use super::*;
	use frame_support::{
		pallet_prelude::*,
		traits::{
			fungible::{self, MutateHold as _},
			tokens::Precision,
			Contains,
		},
	};
	use frame_system::pallet_prelude::*;
	use sp_runtime::traits::{Saturating, StaticLookup};

	/// An account as call arguments name it (an address the runtime looks up).
	pub type AccountIdLookupOf<T> = <<T as frame_system::Config>::Lookup as StaticLookup>::Source;

	const STORAGE_VERSION: StorageVersion = StorageVersion::new(1);

	#[pallet::pallet]
	#[pallet::storage_version(STORAGE_VERSION)]
	pub struct Pallet<T>(_);

	/// Why the pallet holds funds.
	#[pallet::composite_enum]
	pub enum HoldReason {
		/// The deposit of a registered adapter, held from its owner.
		AdapterDeposit,
	}

	/// The pallet's configuration.
	#[pallet::config]
	pub trait Config: frame_system::Config {
		/// The currency deposits are held in and prices are quoted in.
		type Currency: fungible::MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>
			+ fungible::Mutate<Self::AccountId>;

		/// The runtime's hold reason, which includes this pallet's [`HoldReason`].
		type RuntimeHoldReason: From<HoldReason>;

		/// Which DataNets exist (the DataNets pallet).
		type DataNets: Contains<DataNetId>;

		/// The base deposit held for an adapter.
		#[pallet::constant]
		type AdapterDeposit: Get<BalanceOf<Self>>;

		/// The deposit per byte of names and URIs stored on chain.
		#[pallet::constant]
		type ByteDeposit: Get<BalanceOf<Self>>;

		/// The longest name (and architecture, quantization, license), in bytes.
		#[pallet::constant]
		type MaxNameLen: Get<u32>;

		/// The longest URI, in bytes.
		#[pallet::constant]
		type MaxUriLen: Get<u32>;

		/// The largest LoRA rank.
		#[pallet::constant]
		type MaxRank: Get<u32>;

		/// The most DataNets an adapter can declare.
		#[pallet::constant]
		type MaxTrainingDataNets: Get<u32>;

		/// Weights of the pallet's calls, from its benchmarks.
		type WeightInfo: WeightInfo;

		/// What the benchmarks need from the runtime.
		#[cfg(feature = "runtime-benchmarks")]
		type BenchmarkHelper: BenchmarkHelper;
	}

	/// The id the next base model will get.
	#[pallet::storage]
	pub type NextBaseModelId<T> = StorageValue<_, BaseModelId, ValueQuery>;

	/// Base models, by id.
	#[pallet::storage]
	pub type BaseModels<T: Config> = StorageMap<_, Blake2_128Concat, BaseModelId, BaseModel<T>>;

	/// The id the next adapter will get.
	#[pallet::storage]
	pub type NextAdapterId<T> = StorageValue<_, AdapterId, ValueQuery>;

	/// Adapters, by id.
	#[pallet::storage]
	pub type Adapters<T: Config> = StorageMap<_, Blake2_128Concat, AdapterId, Adapter<T>>;

	/// The adapter registered with given files: the same files are registered once.
	#[pallet::storage]
	pub type AdapterByHash<T> = StorageMap<_, Blake2_128Concat, ContentHash, AdapterId>;

	#[pallet::event]
	#[pallet::generate_deposit(pub(super) fn deposit_event)]
	pub enum Event<T: Config> {
		/// Governance registered a base model.
		BaseModelRegistered { base_model: BaseModelId, weights_hash: ContentHash },
		/// Governance enabled or disabled a base model for new adapters.
		BaseModelEnabled { base_model: BaseModelId, enabled: bool },
		/// An adapter was registered.
		AdapterRegistered {
			adapter: AdapterId,
			owner: T::AccountId,
			base_model: BaseModelId,
			content_hash: ContentHash,
		},
		/// An adapter's price changed.
		PriceSet { adapter: AdapterId, price_per_1k_tokens: BalanceOf<T> },
		/// An adapter's files moved to a new URI (same content hash).
		UriSet { adapter: AdapterId },
		/// An adapter was retired.
		AdapterRetired { adapter: AdapterId },
		/// The owner offered the adapter to a new owner.
		TransferOffered { adapter: AdapterId, from: T::AccountId, to: T::AccountId },
		/// The new owner accepted the adapter; the deposit moved to them.
		OwnershipTransferred { adapter: AdapterId, from: T::AccountId, to: T::AccountId },
	}

	#[pallet::error]
	pub enum Error<T> {
		/// No base model has this id.
		UnknownBaseModel,
		/// The base model is disabled for new adapters.
		BaseModelDisabled,
		/// No adapter has this id.
		UnknownAdapter,
		/// Only the adapter's owner may do this.
		NotOwner,
		/// Only the account the adapter was offered to may accept it.
		NotPendingOwner,
		/// The adapter is already owned by that account.
		AlreadyOwner,
		/// The adapter is retired.
		Retired,
		/// A name (or architecture, quantization) or the URI is empty.
		EmptyField,
		/// The context length must be greater than zero.
		ZeroContextLength,
		/// The rank must be between 1 and the runtime's maximum.
		BadRank,
		/// An adapter must target at least one module, each at most once.
		BadTargetModules,
		/// A training DataNet does not exist.
		UnknownDataNet,
		/// A training DataNet appears twice.
		DuplicateDataNet,
		/// The training weights add up to more than 100%.
		WeightsOverOneHundredPercent,
		/// Adapter files with this content hash are already registered.
		DuplicateAdapter,
		/// No more ids are available.
		IdsExhausted,
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
		/// Register a base model. Root only (governance).
		#[pallet::call_index(0)]
		#[pallet::weight(T::WeightInfo::register_base_model())]
		pub fn register_base_model(
			origin: OriginFor<T>,
			name: BoundedVec<u8, T::MaxNameLen>,
			architecture: BoundedVec<u8, T::MaxNameLen>,
			weights_hash: ContentHash,
			quantization: BoundedVec<u8, T::MaxNameLen>,
			context_length: u32,
			license: BoundedVec<u8, T::MaxNameLen>,
		) -> DispatchResult {
			ensure_root(origin)?;
			ensure!(
				!name.is_empty() && !architecture.is_empty() && !quantization.is_empty(),
				Error::<T>::EmptyField
			);
			ensure!(context_length > 0, Error::<T>::ZeroContextLength);
			let id = NextBaseModelId::<T>::get();
			let next = id.checked_add(1).ok_or(Error::<T>::IdsExhausted)?;
			BaseModels::<T>::insert(
				id,
				BaseModel {
					name,
					architecture,
					weights_hash,
					quantization,
					context_length,
					license,
					enabled: true,
				},
			);
			NextBaseModelId::<T>::put(next);
			Self::deposit_event(Event::BaseModelRegistered { base_model: id, weights_hash });
			Ok(())
		}

		/// Enable or disable a base model for new adapters; adapters already registered on it
		/// stay. Root only (governance).
		#[pallet::call_index(1)]
		#[pallet::weight(T::WeightInfo::set_base_model_enabled())]
		pub fn set_base_model_enabled(
			origin: OriginFor<T>,
			base_model: BaseModelId,
			enabled: bool,
		) -> DispatchResult {
			ensure_root(origin)?;
			BaseModels::<T>::try_mutate(base_model, |maybe| {
				let model = maybe.as_mut().ok_or(Error::<T>::UnknownBaseModel)?;
				model.enabled = enabled;
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::BaseModelEnabled { base_model, enabled });
			Ok(())
		}

		/// Register a LoRA adapter owned by the caller.
		///
		/// Holds [`Config::AdapterDeposit`] plus [`Config::ByteDeposit`] per byte of the name and
		/// URI. `datanets` lists the DataNets it was trained on, each once, with weights that sum
		/// to at most 100%.
		#[pallet::call_index(2)]
		#[pallet::weight(T::WeightInfo::register_adapter(datanets.len() as u32))]
		pub fn register_adapter(
			origin: OriginFor<T>,
			name: BoundedVec<u8, T::MaxNameLen>,
			base_model: BaseModelId,
			content_hash: ContentHash,
			rank: u32,
			target_modules: BoundedVec<TargetModule, MaxTargetModules>,
			uri: BoundedVec<u8, T::MaxUriLen>,
			#[pallet::compact] price_per_1k_tokens: BalanceOf<T>,
			datanets: BoundedVec<(DataNetId, Perbill), T::MaxTrainingDataNets>,
		) -> DispatchResult {
			let owner = ensure_signed(origin)?;
			ensure!(!name.is_empty() && !uri.is_empty(), Error::<T>::EmptyField);
			let model = BaseModels::<T>::get(base_model).ok_or(Error::<T>::UnknownBaseModel)?;
			ensure!(model.enabled, Error::<T>::BaseModelDisabled);
			ensure!(rank >= 1 && rank <= T::MaxRank::get(), Error::<T>::BadRank);
			ensure!(
				!target_modules.is_empty() && target_modules.windows(2).all(|w| w[0] < w[1]),
				Error::<T>::BadTargetModules
			);
			let mut total = Perbill::zero();
			for (i, (datanet, weight)) in datanets.iter().enumerate() {
				ensure!(T::DataNets::contains(datanet), Error::<T>::UnknownDataNet);
				ensure!(
					!datanets[..i].iter().any(|(d, _)| d == datanet),
					Error::<T>::DuplicateDataNet
				);
				let (sum, overflow) =
					(total.deconstruct() as u64).overflowing_add(weight.deconstruct() as u64);
				ensure!(
					!overflow && sum <= Perbill::one().deconstruct() as u64,
					Error::<T>::WeightsOverOneHundredPercent
				);
				total = Perbill::from_parts(sum as u32);
			}
			ensure!(!AdapterByHash::<T>::contains_key(content_hash), Error::<T>::DuplicateAdapter);
			let id = NextAdapterId::<T>::get();
			let next = id.checked_add(1).ok_or(Error::<T>::IdsExhausted)?;
			let deposit = Self::deposit_for(&name, &uri);
			T::Currency::hold(&HoldReason::AdapterDeposit.into(), &owner, deposit)?;

			Adapters::<T>::insert(
				id,
				Adapter {
					owner: owner.clone(),
					base_model,
					name,
					content_hash,
					rank,
					target_modules,
					uri,
					price_per_1k_tokens,
					datanets,
					retired: false,
					pending_owner: None,
					deposit,
				},
			);
			AdapterByHash::<T>::insert(content_hash, id);
			NextAdapterId::<T>::put(next);
			Self::deposit_event(Event::AdapterRegistered {
				adapter: id,
				owner,
				base_model,
				content_hash,
			});
			Ok(())
		}

		/// Change the price per 1,000 generated tokens. Only the owner may do this.
		#[pallet::call_index(3)]
		#[pallet::weight(T::WeightInfo::set_price())]
		pub fn set_price(
			origin: OriginFor<T>,
			adapter: AdapterId,
			#[pallet::compact] price_per_1k_tokens: BalanceOf<T>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			Self::mutate_owned(adapter, &who, |info| {
				info.price_per_1k_tokens = price_per_1k_tokens;
				Ok(())
			})?;
			Self::deposit_event(Event::PriceSet { adapter, price_per_1k_tokens });
			Ok(())
		}

		/// Point the adapter at a new URI for the same files (same content hash). Only the owner
		/// may do this; the deposit follows the URI's length.
		#[pallet::call_index(4)]
		#[pallet::weight(T::WeightInfo::set_uri())]
		pub fn set_uri(
			origin: OriginFor<T>,
			adapter: AdapterId,
			uri: BoundedVec<u8, T::MaxUriLen>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			ensure!(!uri.is_empty(), Error::<T>::EmptyField);
			Self::mutate_owned(adapter, &who, |info| {
				let deposit = Self::deposit_for(&info.name, &uri);
				let reason = HoldReason::AdapterDeposit.into();
				if deposit > info.deposit {
					T::Currency::hold(&reason, &who, deposit.saturating_sub(info.deposit))?;
				} else {
					T::Currency::release(
						&reason,
						&who,
						info.deposit.saturating_sub(deposit),
						Precision::BestEffort,
					)?;
				}
				info.deposit = deposit;
				info.uri = uri;
				Ok(())
			})?;
			Self::deposit_event(Event::UriSet { adapter });
			Ok(())
		}

		/// Retire the adapter: it stays readable (attribution proofs may name it) but must no
		/// longer be served. Irreversible. Only the owner may do this.
		#[pallet::call_index(5)]
		#[pallet::weight(T::WeightInfo::retire_adapter())]
		pub fn retire_adapter(origin: OriginFor<T>, adapter: AdapterId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			Self::mutate_owned(adapter, &who, |info| {
				info.retired = true;
				info.pending_owner = None;
				Ok(())
			})?;
			Self::deposit_event(Event::AdapterRetired { adapter });
			Ok(())
		}

		/// Offer the adapter to a new owner, who takes it (and its deposit) over with
		/// [`Pallet::accept_ownership`]. Only the owner may do this.
		#[pallet::call_index(6)]
		#[pallet::weight(T::WeightInfo::transfer_ownership())]
		pub fn transfer_ownership(
			origin: OriginFor<T>,
			adapter: AdapterId,
			new_owner: AccountIdLookupOf<T>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let new_owner = T::Lookup::lookup(new_owner)?;
			ensure!(new_owner != who, Error::<T>::AlreadyOwner);
			Self::mutate_owned(adapter, &who, |info| {
				info.pending_owner = Some(new_owner.clone());
				Ok(())
			})?;
			Self::deposit_event(Event::TransferOffered { adapter, from: who, to: new_owner });
			Ok(())
		}

		/// Accept an adapter offered to the caller: its deposit is held from the caller and
		/// released to the previous owner.
		#[pallet::call_index(7)]
		#[pallet::weight(T::WeightInfo::accept_ownership())]
		pub fn accept_ownership(origin: OriginFor<T>, adapter: AdapterId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let mut info = Adapters::<T>::get(adapter).ok_or(Error::<T>::UnknownAdapter)?;
			ensure!(info.pending_owner.as_ref() == Some(&who), Error::<T>::NotPendingOwner);
			let reason = HoldReason::AdapterDeposit.into();
			T::Currency::hold(&reason, &who, info.deposit)?;
			T::Currency::release(&reason, &info.owner, info.deposit, Precision::BestEffort)?;
			let from = core::mem::replace(&mut info.owner, who.clone());
			info.pending_owner = None;
			Adapters::<T>::insert(adapter, info);
			Self::deposit_event(Event::OwnershipTransferred { adapter, from, to: who });
			Ok(())
		}
	}

	impl<T: Config> Pallet<T> {
		/// Applies `change` to an adapter `who` owns and that is not retired.
		fn mutate_owned(
			adapter: AdapterId,
			who: &T::AccountId,
			change: impl FnOnce(&mut Adapter<T>) -> DispatchResult,
		) -> DispatchResult {
			Adapters::<T>::try_mutate(adapter, |maybe| {
				let info = maybe.as_mut().ok_or(Error::<T>::UnknownAdapter)?;
				ensure!(info.owner == *who, Error::<T>::NotOwner);
				ensure!(!info.retired, Error::<T>::Retired);
				change(info)
			})
		}

		/// The deposit of an adapter with this name and URI.
		fn deposit_for(name: &[u8], uri: &[u8]) -> BalanceOf<T> {
			openledger_primitives::storage_deposit(
				T::AdapterDeposit::get(),
				T::ByteDeposit::get(),
				name.len().saturating_add(uri.len()),
			)
		}

		/// The adapter if it may be served: registered and not retired.
		pub fn servable(adapter: AdapterId) -> Option<Adapter<T>> {
			Adapters::<T>::get(adapter).filter(|info| !info.retired)
		}

		/// Checks the pallet's invariants: every adapter is indexed by its content hash and
		/// names an existing base model, its training weights sum to at most 100%, and the
		/// deposit held from each owner equals the deposits of their adapters.
		#[cfg(any(feature = "try-runtime", test))]
		pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
			use alloc::collections::btree_map::BTreeMap;
			use frame_support::traits::fungible::InspectHold;

			let mut held: BTreeMap<T::AccountId, BalanceOf<T>> = BTreeMap::new();
			let mut count = 0usize;
			for (id, info) in Adapters::<T>::iter() {
				count += 1;
				ensure!(id < NextAdapterId::<T>::get(), "adapter id not below the next id");
				ensure!(
					AdapterByHash::<T>::get(info.content_hash) == Some(id),
					"adapter not indexed by its content hash"
				);
				ensure!(BaseModels::<T>::contains_key(info.base_model), "unknown base model");
				let sum: u64 = info.datanets.iter().map(|(_, w)| w.deconstruct() as u64).sum();
				ensure!(sum <= Perbill::one().deconstruct() as u64, "weights over 100%");
				let entry = held.entry(info.owner.clone()).or_default();
				*entry = entry.saturating_add(info.deposit);
			}
			ensure!(AdapterByHash::<T>::iter().count() == count, "stale content-hash index");
			for (who, amount) in held {
				ensure!(
					T::Currency::balance_on_hold(&HoldReason::AdapterDeposit.into(), &who)
						== amount,
					"held deposit differs from the deposits recorded"
				);
			}
			Ok(())
		}
	}
}
