//! # Tools pallet
//!
//! MCP-style tools (Model Context Protocol integrations: search, code execution, APIs) that a
//! worker may call while it answers a request, registered on chain so that each call can be
//! attributed to the tool and its owner paid.
//!
//! A tool has an owner, a name, an endpoint (the URI of the MCP server that serves it), the
//! content hash of its descriptor (the MCP tool definition: name, description and input schema,
//! as the endpoint serves it, so a worker can check it calls what was registered) and a price per
//! call in the native token. Owners move the endpoint, change the price, pause the tool while it
//! should not be called, hand it to a new owner (who must accept, because the deposit moves to
//! them) and remove it. A deposit is held from the owner while the tool is registered.

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

pub use openledger_primitives::{ContentHash, ToolId};

use codec::{Decode, Encode, MaxEncodedLen};
use frame_support::{
	traits::fungible::Inspect, BoundedVec, CloneNoBound, DebugNoBound, EqNoBound, PartialEqNoBound,
};
use scale_info::TypeInfo;

type AccountIdOf<T> = <T as frame_system::Config>::AccountId;
/// The balance type of the pallet's currency.
pub type BalanceOf<T> = <<T as Config>::Currency as Inspect<AccountIdOf<T>>>::Balance;

/// A registered tool.
#[derive(
	Encode, Decode, MaxEncodedLen, TypeInfo, CloneNoBound, PartialEqNoBound, EqNoBound, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound(T: Config))]
pub struct Tool<T: Config> {
	/// The owner, who is paid for its calls and whose deposit it holds.
	pub owner: T::AccountId,
	/// A short human-readable name.
	pub name: BoundedVec<u8, T::MaxNameLen>,
	/// The URI of the MCP server that serves the tool.
	pub endpoint: BoundedVec<u8, T::MaxUriLen>,
	/// The content hash of the tool's descriptor (its MCP definition) as the endpoint serves it.
	pub descriptor_hash: ContentHash,
	/// What one call costs, in the smallest unit of the native token.
	pub price_per_call: BalanceOf<T>,
	/// A paused tool stays registered but must not be called.
	pub paused: bool,
	/// The account the owner offered the tool to, until it accepts.
	pub pending_owner: Option<T::AccountId>,
	/// The deposit held for the tool.
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
		/// The deposit of a registered tool, held from its owner.
		ToolDeposit,
	}

	/// The pallet's configuration.
	#[pallet::config]
	pub trait Config: frame_system::Config {
		/// The currency deposits are held in and prices are quoted in.
		type Currency: fungible::MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>
			+ fungible::Mutate<Self::AccountId>;

		/// The runtime's hold reason, which includes this pallet's [`HoldReason`].
		type RuntimeHoldReason: From<HoldReason>;

		/// The base deposit held for a tool.
		#[pallet::constant]
		type ToolDeposit: Get<BalanceOf<Self>>;

		/// The deposit per byte of the name and endpoint stored on chain.
		#[pallet::constant]
		type ByteDeposit: Get<BalanceOf<Self>>;

		/// The longest tool name, in bytes.
		#[pallet::constant]
		type MaxNameLen: Get<u32>;

		/// The longest endpoint URI, in bytes.
		#[pallet::constant]
		type MaxUriLen: Get<u32>;

		/// Weights of the pallet's calls, from its benchmarks.
		type WeightInfo: WeightInfo;
	}

	/// The id the next tool will get.
	#[pallet::storage]
	pub type NextToolId<T> = StorageValue<_, ToolId, ValueQuery>;

	/// The registered tools, by id.
	#[pallet::storage]
	pub type Tools<T: Config> = StorageMap<_, Blake2_128Concat, ToolId, Tool<T>>;

	#[pallet::event]
	#[pallet::generate_deposit(pub(super) fn deposit_event)]
	pub enum Event<T: Config> {
		/// A tool was registered.
		ToolRegistered { tool: ToolId, owner: T::AccountId, descriptor_hash: ContentHash },
		/// A tool moved to a new endpoint or changed its descriptor.
		EndpointUpdated { tool: ToolId, descriptor_hash: ContentHash },
		/// A tool's price per call changed.
		PriceSet { tool: ToolId, price_per_call: BalanceOf<T> },
		/// A tool was paused (`paused: true`) or resumed.
		PausedSet { tool: ToolId, paused: bool },
		/// The owner offered the tool to a new owner.
		TransferOffered { tool: ToolId, from: T::AccountId, to: T::AccountId },
		/// The new owner accepted the tool; the deposit moved to them.
		OwnershipTransferred { tool: ToolId, from: T::AccountId, to: T::AccountId },
		/// A tool was removed and its deposit released.
		ToolRemoved { tool: ToolId },
	}

	#[pallet::error]
	pub enum Error<T> {
		/// No tool has this id.
		UnknownTool,
		/// Only the tool's owner may do this.
		NotOwner,
		/// Only the account the tool was offered to may accept it.
		NotPendingOwner,
		/// The tool is already owned by that account.
		AlreadyOwner,
		/// The name or the endpoint is empty.
		EmptyField,
		/// The tool is already paused, or already running.
		AlreadySet,
		/// No more tool ids are available.
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
		/// Register a tool owned by the caller.
		///
		/// Holds [`Config::ToolDeposit`] plus [`Config::ByteDeposit`] per byte of the name and
		/// endpoint. `descriptor_hash` is the content hash of the tool's MCP definition as the
		/// endpoint serves it.
		#[pallet::call_index(0)]
		#[pallet::weight(T::WeightInfo::register_tool())]
		pub fn register_tool(
			origin: OriginFor<T>,
			name: BoundedVec<u8, T::MaxNameLen>,
			endpoint: BoundedVec<u8, T::MaxUriLen>,
			descriptor_hash: ContentHash,
			#[pallet::compact] price_per_call: BalanceOf<T>,
		) -> DispatchResult {
			let owner = ensure_signed(origin)?;
			ensure!(!name.is_empty() && !endpoint.is_empty(), Error::<T>::EmptyField);
			let id = NextToolId::<T>::get();
			let next = id.checked_add(1).ok_or(Error::<T>::IdsExhausted)?;
			let deposit = Self::deposit_for(&name, &endpoint);
			T::Currency::hold(&HoldReason::ToolDeposit.into(), &owner, deposit)?;
			Tools::<T>::insert(
				id,
				Tool {
					owner: owner.clone(),
					name,
					endpoint,
					descriptor_hash,
					price_per_call,
					paused: false,
					pending_owner: None,
					deposit,
				},
			);
			NextToolId::<T>::put(next);
			Self::deposit_event(Event::ToolRegistered { tool: id, owner, descriptor_hash });
			Ok(())
		}

		/// Move the tool to a new endpoint and/or descriptor. Only the owner may do this; the
		/// deposit follows the endpoint's length.
		#[pallet::call_index(1)]
		#[pallet::weight(T::WeightInfo::update_endpoint())]
		pub fn update_endpoint(
			origin: OriginFor<T>,
			tool: ToolId,
			endpoint: BoundedVec<u8, T::MaxUriLen>,
			descriptor_hash: ContentHash,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			ensure!(!endpoint.is_empty(), Error::<T>::EmptyField);
			Self::mutate_owned(tool, &who, |info| {
				let deposit = Self::deposit_for(&info.name, &endpoint);
				let reason = HoldReason::ToolDeposit.into();
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
				info.endpoint = endpoint;
				info.descriptor_hash = descriptor_hash;
				Ok(())
			})?;
			Self::deposit_event(Event::EndpointUpdated { tool, descriptor_hash });
			Ok(())
		}

		/// Change what one call costs. Only the owner may do this.
		#[pallet::call_index(2)]
		#[pallet::weight(T::WeightInfo::set_price())]
		pub fn set_price(
			origin: OriginFor<T>,
			tool: ToolId,
			#[pallet::compact] price_per_call: BalanceOf<T>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			Self::mutate_owned(tool, &who, |info| {
				info.price_per_call = price_per_call;
				Ok(())
			})?;
			Self::deposit_event(Event::PriceSet { tool, price_per_call });
			Ok(())
		}

		/// Pause the tool (`paused: true`: it must not be called until resumed) or resume it.
		/// Only the owner may do this.
		#[pallet::call_index(3)]
		#[pallet::weight(T::WeightInfo::set_paused())]
		pub fn set_paused(origin: OriginFor<T>, tool: ToolId, paused: bool) -> DispatchResult {
			let who = ensure_signed(origin)?;
			Self::mutate_owned(tool, &who, |info| {
				ensure!(info.paused != paused, Error::<T>::AlreadySet);
				info.paused = paused;
				Ok(())
			})?;
			Self::deposit_event(Event::PausedSet { tool, paused });
			Ok(())
		}

		/// Offer the tool to a new owner, who takes it (and its deposit) over with
		/// [`Pallet::accept_ownership`]; a later offer replaces this one. Only the owner may do
		/// this.
		#[pallet::call_index(4)]
		#[pallet::weight(T::WeightInfo::transfer_ownership())]
		pub fn transfer_ownership(
			origin: OriginFor<T>,
			tool: ToolId,
			new_owner: AccountIdLookupOf<T>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let new_owner = T::Lookup::lookup(new_owner)?;
			ensure!(new_owner != who, Error::<T>::AlreadyOwner);
			Self::mutate_owned(tool, &who, |info| {
				info.pending_owner = Some(new_owner.clone());
				Ok(())
			})?;
			Self::deposit_event(Event::TransferOffered { tool, from: who, to: new_owner });
			Ok(())
		}

		/// Accept a tool offered to the caller: its deposit is held from the caller and
		/// released to the previous owner.
		#[pallet::call_index(5)]
		#[pallet::weight(T::WeightInfo::accept_ownership())]
		pub fn accept_ownership(origin: OriginFor<T>, tool: ToolId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let mut info = Tools::<T>::get(tool).ok_or(Error::<T>::UnknownTool)?;
			ensure!(info.pending_owner.as_ref() == Some(&who), Error::<T>::NotPendingOwner);
			let reason = HoldReason::ToolDeposit.into();
			T::Currency::hold(&reason, &who, info.deposit)?;
			T::Currency::release(&reason, &info.owner, info.deposit, Precision::BestEffort)?;
			let from = core::mem::replace(&mut info.owner, who.clone());
			info.pending_owner = None;
			Tools::<T>::insert(tool, info);
			Self::deposit_event(Event::OwnershipTransferred { tool, from, to: who });
			Ok(())
		}

		/// Remove the tool and release its deposit. Only the owner may do this.
		#[pallet::call_index(6)]
		#[pallet::weight(T::WeightInfo::remove_tool())]
		pub fn remove_tool(origin: OriginFor<T>, tool: ToolId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let info = Tools::<T>::get(tool).ok_or(Error::<T>::UnknownTool)?;
			ensure!(info.owner == who, Error::<T>::NotOwner);
			T::Currency::release(
				&HoldReason::ToolDeposit.into(),
				&who,
				info.deposit,
				Precision::BestEffort,
			)?;
			Tools::<T>::remove(tool);
			Self::deposit_event(Event::ToolRemoved { tool });
			Ok(())
		}
	}

	impl<T: Config> Pallet<T> {
		/// Applies `change` to a tool that `who` owns.
		fn mutate_owned(
			tool: ToolId,
			who: &T::AccountId,
			change: impl FnOnce(&mut Tool<T>) -> DispatchResult,
		) -> DispatchResult {
			Tools::<T>::try_mutate(tool, |maybe| {
				let info = maybe.as_mut().ok_or(Error::<T>::UnknownTool)?;
				ensure!(info.owner == *who, Error::<T>::NotOwner);
				change(info)
			})
		}

		/// The deposit of a tool with this name and endpoint.
		fn deposit_for(name: &[u8], endpoint: &[u8]) -> BalanceOf<T> {
			openledger_primitives::storage_deposit(
				T::ToolDeposit::get(),
				T::ByteDeposit::get(),
				name.len().saturating_add(endpoint.len()),
			)
		}

		/// The tool if it may be called now (registered and not paused): its owner, price per
		/// call and descriptor hash (for the settlement pallet and the worker).
		pub fn callable(tool: ToolId) -> Option<(T::AccountId, BalanceOf<T>, ContentHash)> {
			Tools::<T>::get(tool)
				.filter(|info| !info.paused)
				.map(|info| (info.owner, info.price_per_call, info.descriptor_hash))
		}

		/// Checks the pallet's invariants: every tool's id is below the next id, its name and
		/// endpoint are not empty, it is not offered to its own owner, and the deposit held from each owner equals the deposits of their tools.
		#[cfg(any(feature = "try-runtime", test))]
		pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
			use alloc::collections::btree_map::BTreeMap;
			use frame_support::traits::fungible::InspectHold;

			let mut held: BTreeMap<T::AccountId, BalanceOf<T>> = BTreeMap::new();
			for (id, info) in Tools::<T>::iter() {
				ensure!(id < NextToolId::<T>::get(), "tool id not below the next id");
				ensure!(!info.name.is_empty() && !info.endpoint.is_empty(), "empty field");
				ensure!(info.pending_owner.as_ref() != Some(&info.owner), "offered to its owner");
				let entry = held.entry(info.owner.clone()).or_default();
				*entry = entry.saturating_add(info.deposit);
			}
			for (who, amount) in held {
				ensure!(
					T::Currency::balance_on_hold(&HoldReason::ToolDeposit.into(), &who) == amount,
					"held deposit differs from the deposits recorded"
				);
			}
			Ok(())
		}
	}
}
