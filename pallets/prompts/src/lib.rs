//! # Prompts pallet
//!
//! Reusable prompt templates, registered on chain by their owners so that requests that use
//! them can be attributed and their owners paid.
//!
//! A prompt has a name, an owner and one or more versions. Each version holds its template,
//! either inline (the text itself, bounded by [`Config::MaxTextLen`]) or external (a URI and the
//! hash of the text), and a price per use in the native token. Owners publish new versions,
//! change a version's price, deprecate versions that should no longer be used, hand the prompt
//! to a new owner (who must accept, because the deposits move to them) and remove the prompt.
//! A deposit is held from the owner for the prompt and for every version while they are
//! registered, and released when the prompt is removed.

#![cfg_attr(not(feature = "std"), no_std)]

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

pub use openledger_primitives::{ContentHash, PromptId, PromptVersion};

use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::{
	traits::{fungible::Inspect, Get},
	BoundedVec, CloneNoBound, DebugNoBound, EqNoBound, PartialEqNoBound,
};
use scale_info::TypeInfo;

type AccountIdOf<T> = <T as frame_system::Config>::AccountId;
/// The balance type of the pallet's currency.
pub type BalanceOf<T> = <<T as Config>::Currency as Inspect<AccountIdOf<T>>>::Balance;
/// A template as the runtime bounds it.
pub type TemplateOf<T> = Template<<T as Config>::MaxTextLen, <T as Config>::MaxUriLen>;

/// Where a version's template text lives.
#[derive(
	Encode,
	Decode,
	DecodeWithMemTracking,
	MaxEncodedLen,
	TypeInfo,
	CloneNoBound,
	PartialEqNoBound,
	EqNoBound,
	DebugNoBound,
)]
#[scale_info(skip_type_params(MaxText, MaxUri))]
#[codec(mel_bound())]
pub enum Template<MaxText: Get<u32>, MaxUri: Get<u32>> {
	/// The template text, stored on chain.
	Inline(BoundedVec<u8, MaxText>),
	/// The template stored off chain: where it lives and the hash of its text.
	External {
		/// Where the text lives.
		uri: BoundedVec<u8, MaxUri>,
		/// The hash of the text.
		hash: ContentHash,
	},
}

impl<MaxText: Get<u32>, MaxUri: Get<u32>> Template<MaxText, MaxUri> {
	/// The hash of the template text: computed for inline text, as declared for external text.
	pub fn content_hash(&self) -> ContentHash {
		match self {
			Template::Inline(text) => openledger_primitives::content_hash_of(text),
			Template::External { hash, .. } => *hash,
		}
	}

	/// The bytes the template stores on chain, which the deposit pays for.
	pub fn stored_bytes(&self) -> usize {
		match self {
			Template::Inline(text) => text.len(),
			Template::External { uri, .. } => uri.len(),
		}
	}
}

/// A registered prompt.
#[derive(
	Encode, Decode, MaxEncodedLen, TypeInfo, CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound(T: Config))]
pub struct Prompt<T: Config> {
	/// The owner, who is paid for its use and whose deposits it holds.
	pub owner: T::AccountId,
	/// A short human-readable name.
	pub name: BoundedVec<u8, T::MaxNameLen>,
	/// The newest version; versions run from 1 to `latest`.
	pub latest: PromptVersion,
	/// The account the owner offered the prompt to, until it accepts.
	pub pending_owner: Option<T::AccountId>,
	/// The deposit held for the prompt itself (its versions hold their own).
	pub deposit: BalanceOf<T>,
}

/// One version of a prompt.
#[derive(
	Encode, Decode, MaxEncodedLen, TypeInfo, CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound(T: Config))]
pub struct PromptVersionInfo<T: Config> {
	/// The template.
	pub template: TemplateOf<T>,
	/// The hash of the template text (see [`Template::content_hash`]).
	pub content_hash: ContentHash,
	/// What one use of this version costs, in the smallest unit of the native token.
	pub price_per_use: BalanceOf<T>,
	/// Deprecated versions stay readable but should no longer be used.
	pub deprecated: bool,
	/// The deposit held for this version.
	pub deposit: BalanceOf<T>,
}

#[frame_support::pallet]
pub mod pallet {
	use super::*;
	use frame_support::{
		pallet_prelude::*,
		traits::{
			fungible::{self, MutateHold as _},
			tokens::Precision,
		},
	};
	use frame_system::pallet_prelude::*;
	use openledger_primitives::storage_deposit;
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
		/// The deposit of a prompt and its versions, held from its owner.
		PromptDeposit,
	}

	/// The pallet's configuration.
	#[pallet::config]
	pub trait Config: frame_system::Config {
		/// The currency deposits are held in and prices are quoted in.
		type Currency: fungible::MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>
			+ fungible::Mutate<Self::AccountId>;

		/// The runtime's hold reason, which includes this pallet's [`HoldReason`].
		type RuntimeHoldReason: From<HoldReason>;

		/// The base deposit held for a prompt.
		#[pallet::constant]
		type PromptDeposit: Get<BalanceOf<Self>>;

		/// The base deposit held for each version.
		#[pallet::constant]
		type VersionDeposit: Get<BalanceOf<Self>>;

		/// The deposit per byte of names, template text and URIs stored on chain.
		#[pallet::constant]
		type ByteDeposit: Get<BalanceOf<Self>>;

		/// The longest prompt name, in bytes.
		#[pallet::constant]
		type MaxNameLen: Get<u32>;

		/// The longest inline template text, in bytes.
		#[pallet::constant]
		type MaxTextLen: Get<u32>;

		/// The longest URI, in bytes.
		#[pallet::constant]
		type MaxUriLen: Get<u32>;

		/// The most versions a prompt can have.
		#[pallet::constant]
		type MaxVersions: Get<u32>;

		/// Weights of the pallet's calls, from its benchmarks.
		type WeightInfo: WeightInfo;
	}

	/// The id the next prompt will get.
	#[pallet::storage]
	pub type NextPromptId<T> = StorageValue<_, PromptId, ValueQuery>;

	/// The prompts, by id.
	#[pallet::storage]
	pub type Prompts<T: Config> = StorageMap<_, Blake2_128Concat, PromptId, Prompt<T>>;

	/// Every version of every prompt.
	#[pallet::storage]
	pub type Versions<T: Config> = StorageDoubleMap<
		_,
		Blake2_128Concat,
		PromptId,
		Twox64Concat,
		PromptVersion,
		PromptVersionInfo<T>,
	>;

	#[pallet::event]
	#[pallet::generate_deposit(pub(super) fn deposit_event)]
	pub enum Event<T: Config> {
		/// A prompt was registered with its first version.
		PromptRegistered { prompt: PromptId, owner: T::AccountId, content_hash: ContentHash },
		/// A new version of a prompt was published.
		VersionPublished { prompt: PromptId, version: PromptVersion, content_hash: ContentHash },
		/// A version's price changed.
		PriceSet { prompt: PromptId, version: PromptVersion, price_per_use: BalanceOf<T> },
		/// A version was deprecated.
		VersionDeprecated { prompt: PromptId, version: PromptVersion },
		/// The owner offered the prompt to a new owner.
		TransferOffered { prompt: PromptId, from: T::AccountId, to: T::AccountId },
		/// The new owner accepted the prompt; the deposits moved to them.
		OwnershipTransferred { prompt: PromptId, from: T::AccountId, to: T::AccountId },
		/// A prompt and all its versions were removed and their deposits released.
		PromptRemoved { prompt: PromptId },
	}

	#[pallet::error]
	pub enum Error<T> {
		/// No prompt has this id.
		UnknownPrompt,
		/// The prompt has no such version.
		UnknownVersion,
		/// Only the prompt's owner may do this.
		NotOwner,
		/// Only the account the prompt was offered to may accept it.
		NotPendingOwner,
		/// The prompt is already owned by that account.
		AlreadyOwner,
		/// The name is empty.
		EmptyName,
		/// The inline template text or the URI is empty.
		EmptyTemplate,
		/// The version is already deprecated.
		AlreadyDeprecated,
		/// The prompt has the most versions the runtime allows.
		TooManyVersions,
		/// No more prompt ids are available.
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
		/// Register a prompt owned by the caller, with its first version.
		///
		/// Holds [`Config::PromptDeposit`] plus [`Config::ByteDeposit`] per byte of the name,
		/// and [`Config::VersionDeposit`] plus [`Config::ByteDeposit`] per byte of the template
		/// (text or URI) for the version.
		#[pallet::call_index(0)]
		#[pallet::weight(T::WeightInfo::register_prompt())]
		pub fn register_prompt(
			origin: OriginFor<T>,
			name: BoundedVec<u8, T::MaxNameLen>,
			template: TemplateOf<T>,
			#[pallet::compact] price_per_use: BalanceOf<T>,
		) -> DispatchResult {
			let owner = ensure_signed(origin)?;
			ensure!(!name.is_empty(), Error::<T>::EmptyName);
			let version = Self::new_version(&owner, template, price_per_use)?;
			let id = NextPromptId::<T>::get();
			let next = id.checked_add(1).ok_or(Error::<T>::IdsExhausted)?;
			let deposit =
				storage_deposit(T::PromptDeposit::get(), T::ByteDeposit::get(), name.len());
			T::Currency::hold(&HoldReason::PromptDeposit.into(), &owner, deposit)?;

			let content_hash = version.content_hash;
			Versions::<T>::insert(id, 1, version);
			Prompts::<T>::insert(
				id,
				Prompt { owner: owner.clone(), name, latest: 1, pending_owner: None, deposit },
			);
			NextPromptId::<T>::put(next);
			Self::deposit_event(Event::PromptRegistered { prompt: id, owner, content_hash });
			Ok(())
		}

		/// Publish a new version of a prompt. Only its owner may do this. Earlier versions stay
		/// as they are; deprecate them to steer users to the new one.
		#[pallet::call_index(1)]
		#[pallet::weight(T::WeightInfo::publish_version())]
		pub fn publish_version(
			origin: OriginFor<T>,
			prompt: PromptId,
			template: TemplateOf<T>,
			#[pallet::compact] price_per_use: BalanceOf<T>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let mut info = Self::owned(prompt, &who)?;
			ensure!(info.latest < T::MaxVersions::get(), Error::<T>::TooManyVersions);
			let version = Self::new_version(&who, template, price_per_use)?;
			info.latest = info.latest.saturating_add(1);
			let content_hash = version.content_hash;
			Versions::<T>::insert(prompt, info.latest, version);
			let latest = info.latest;
			Prompts::<T>::insert(prompt, info);
			Self::deposit_event(Event::VersionPublished { prompt, version: latest, content_hash });
			Ok(())
		}

		/// Change what one use of a version costs. Only the prompt's owner may do this.
		#[pallet::call_index(2)]
		#[pallet::weight(T::WeightInfo::set_price())]
		pub fn set_price(
			origin: OriginFor<T>,
			prompt: PromptId,
			version: PromptVersion,
			#[pallet::compact] price_per_use: BalanceOf<T>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			Self::owned(prompt, &who)?;
			Versions::<T>::try_mutate(prompt, version, |maybe| {
				let info = maybe.as_mut().ok_or(Error::<T>::UnknownVersion)?;
				info.price_per_use = price_per_use;
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::PriceSet { prompt, version, price_per_use });
			Ok(())
		}

		/// Deprecate a version: it stays readable (attribution proofs may name it) but should
		/// no longer be used. Only the prompt's owner may do this.
		#[pallet::call_index(3)]
		#[pallet::weight(T::WeightInfo::deprecate_version())]
		pub fn deprecate_version(
			origin: OriginFor<T>,
			prompt: PromptId,
			version: PromptVersion,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			Self::owned(prompt, &who)?;
			Versions::<T>::try_mutate(prompt, version, |maybe| {
				let info = maybe.as_mut().ok_or(Error::<T>::UnknownVersion)?;
				ensure!(!info.deprecated, Error::<T>::AlreadyDeprecated);
				info.deprecated = true;
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::VersionDeprecated { prompt, version });
			Ok(())
		}

		/// Offer the prompt to a new owner. The transfer happens when they accept it with
		/// [`Pallet::accept_ownership`]; a later offer replaces this one. Only the owner may do
		/// this.
		#[pallet::call_index(4)]
		#[pallet::weight(T::WeightInfo::transfer_ownership())]
		pub fn transfer_ownership(
			origin: OriginFor<T>,
			prompt: PromptId,
			new_owner: AccountIdLookupOf<T>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let new_owner = T::Lookup::lookup(new_owner)?;
			let mut info = Self::owned(prompt, &who)?;
			ensure!(new_owner != who, Error::<T>::AlreadyOwner);
			info.pending_owner = Some(new_owner.clone());
			Prompts::<T>::insert(prompt, info);
			Self::deposit_event(Event::TransferOffered { prompt, from: who, to: new_owner });
			Ok(())
		}

		/// Accept a prompt offered to the caller. The deposits of the prompt and its versions
		/// are held from the caller and released to the previous owner.
		#[pallet::call_index(5)]
		#[pallet::weight(T::WeightInfo::accept_ownership())]
		pub fn accept_ownership(origin: OriginFor<T>, prompt: PromptId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let mut info = Prompts::<T>::get(prompt).ok_or(Error::<T>::UnknownPrompt)?;
			ensure!(info.pending_owner.as_ref() == Some(&who), Error::<T>::NotPendingOwner);
			let total = Self::total_deposit(prompt, &info);
			let reason = HoldReason::PromptDeposit.into();
			T::Currency::hold(&reason, &who, total)?;
			T::Currency::release(&reason, &info.owner, total, Precision::BestEffort)?;
			let from = core::mem::replace(&mut info.owner, who.clone());
			info.pending_owner = None;
			Prompts::<T>::insert(prompt, info);
			Self::deposit_event(Event::OwnershipTransferred { prompt, from, to: who });
			Ok(())
		}

		/// Remove a prompt and all its versions, releasing their deposits. Only its owner may do
		/// this.
		#[pallet::call_index(6)]
		#[pallet::weight(T::WeightInfo::remove_prompt(T::MaxVersions::get()))]
		pub fn remove_prompt(origin: OriginFor<T>, prompt: PromptId) -> DispatchResultWithPostInfo {
			let who = ensure_signed(origin)?;
			let info = Self::owned(prompt, &who)?;
			let total = Self::total_deposit(prompt, &info);
			T::Currency::release(
				&HoldReason::PromptDeposit.into(),
				&who,
				total,
				Precision::BestEffort,
			)?;
			let _ = Versions::<T>::clear_prefix(prompt, info.latest, None);
			Prompts::<T>::remove(prompt);
			Self::deposit_event(Event::PromptRemoved { prompt });
			Ok(Some(T::WeightInfo::remove_prompt(info.latest)).into())
		}
	}

	impl<T: Config> Pallet<T> {
		/// The prompt `prompt` if `who` owns it.
		fn owned(prompt: PromptId, who: &T::AccountId) -> Result<Prompt<T>, DispatchError> {
			let info = Prompts::<T>::get(prompt).ok_or(Error::<T>::UnknownPrompt)?;
			ensure!(info.owner == *who, Error::<T>::NotOwner);
			Ok(info)
		}

		/// Checks a template, holds its deposit from `owner` and returns the version record.
		fn new_version(
			owner: &T::AccountId,
			template: TemplateOf<T>,
			price_per_use: BalanceOf<T>,
		) -> Result<PromptVersionInfo<T>, DispatchError> {
			ensure!(template.stored_bytes() > 0, Error::<T>::EmptyTemplate);
			let deposit = storage_deposit(
				T::VersionDeposit::get(),
				T::ByteDeposit::get(),
				template.stored_bytes(),
			);
			T::Currency::hold(&HoldReason::PromptDeposit.into(), owner, deposit)?;
			Ok(PromptVersionInfo {
				content_hash: template.content_hash(),
				template,
				price_per_use,
				deprecated: false,
				deposit,
			})
		}

		/// The deposits held for a prompt and all its versions.
		fn total_deposit(prompt: PromptId, info: &Prompt<T>) -> BalanceOf<T> {
			Versions::<T>::iter_prefix_values(prompt)
				.fold(info.deposit, |total, version| total.saturating_add(version.deposit))
		}

		/// The version of `prompt` a request may use: it exists and is not deprecated. Returns
		/// its owner and price per use (for the settlement pallet).
		pub fn usable(
			prompt: PromptId,
			version: PromptVersion,
		) -> Option<(T::AccountId, BalanceOf<T>)> {
			let info = Prompts::<T>::get(prompt)?;
			let version = Versions::<T>::get(prompt, version)?;
			(!version.deprecated).then_some((info.owner, version.price_per_use))
		}

		/// Checks the pallet's invariants: each prompt's versions run from 1 to `latest` with no
		/// others, every version's content hash matches its template, and the deposit held
		/// from each owner equals the deposits recorded for their prompts and versions.
		#[cfg(any(feature = "try-runtime", test))]
		pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
			use alloc::collections::btree_map::BTreeMap;
			use frame_support::traits::fungible::InspectHold;

			let mut held: BTreeMap<T::AccountId, BalanceOf<T>> = BTreeMap::new();
			let mut versions = 0usize;
			for (id, info) in Prompts::<T>::iter() {
				ensure!(id < NextPromptId::<T>::get(), "prompt id not below the next id");
				ensure!(info.latest >= 1 && info.latest <= T::MaxVersions::get(), "bad latest");
				for v in 1..=info.latest {
					let version = Versions::<T>::get(id, v).ok_or("missing version")?;
					ensure!(
						version.content_hash == version.template.content_hash(),
						"content hash does not match the template"
					);
				}
				versions = versions.saturating_add(info.latest as usize);
				let total = Self::total_deposit(id, &info);
				let entry = held.entry(info.owner.clone()).or_insert_with(Zero::zero);
				*entry = entry.saturating_add(total);
			}
			ensure!(Versions::<T>::iter().count() == versions, "versions of missing prompts");
			for (who, amount) in held {
				ensure!(
					T::Currency::balance_on_hold(&HoldReason::PromptDeposit.into(), &who) == amount,
					"held deposit differs from the deposits recorded"
				);
			}
			Ok(())
		}
	}
}
