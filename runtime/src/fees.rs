//! Where transaction fees go.
//!
//! Every fee is split in two: [`FeeTreasuryShare`] of it goes to the treasury account
//! ([`treasury_account`]), the rest, with the whole tip, to the author of the block. If the
//! author cannot be paid (no author is known, or the amount would leave its account below the
//! existential deposit), its part goes to the treasury too, so no fee is burned by accident.
//!
//! The share is a runtime parameter kept in storage: governance (sudo on the dev and local
//! chains) changes it with `system.set_storage` at the key [`FeeTreasuryShare::key`], without a
//! runtime upgrade.

use core::marker::PhantomData;

use frame_support::{
	parameter_types,
	traits::{
		fungible::{Balanced, Credit},
		FindAuthor, Imbalance, OnUnbalanced,
	},
};
use sp_runtime::{traits::AccountIdConversion, ConsensusEngineId, Perbill};

use crate::{configs::TreasuryPalletId, AccountId, Balances, Runtime};

parameter_types! {
	/// The part of every transaction fee (tips excluded) that is paid to the treasury.
	pub storage FeeTreasuryShare: Perbill = Perbill::from_percent(20);
}

/// The treasury's account, derived from [`TreasuryPalletId`]. No one holds its key.
pub fn treasury_account() -> AccountId {
	TreasuryPalletId::get().into_account_truncating()
}

/// Splits the fees and tips of a transaction between the treasury and the block author.
pub struct DealWithFees<R>(PhantomData<R>);

impl<R> OnUnbalanced<Credit<AccountId, Balances>> for DealWithFees<R>
where
	R: pallet_authorship::Config<AccountId = AccountId>,
{
	fn on_unbalanceds(mut fees_then_tips: impl Iterator<Item = Credit<AccountId, Balances>>) {
		let Some(fees) = fees_then_tips.next() else { return };
		let to_treasury_amount = FeeTreasuryShare::get().mul_floor(fees.peek());
		let (to_treasury, mut to_author) = fees.split(to_treasury_amount);
		for tip in fees_then_tips {
			to_author.subsume(tip);
		}
		pay_treasury(to_treasury);
		match pallet_authorship::Pallet::<R>::author() {
			Some(author) => {
				if let Err(unpaid) = <Balances as Balanced<AccountId>>::resolve(&author, to_author)
				{
					pay_treasury(unpaid);
				}
			}
			None => pay_treasury(to_author),
		}
	}
}

/// Deposits `credit` into the treasury account. The treasury is endowed at genesis, so this
/// only fails if it has been emptied below the existential deposit and `credit` is smaller
/// than it; then the credit is dropped, which burns it.
fn pay_treasury(credit: Credit<AccountId, Balances>) {
	let _ = <Balances as Balanced<AccountId>>::resolve(&treasury_account(), credit);
}

/// Finds the author of a block as an account: the account whose public key is the Aura
/// authority that sealed it.
pub struct AuraAccountAdapter;

impl FindAuthor<AccountId> for AuraAccountAdapter {
	fn find_author<'a, I>(digests: I) -> Option<AccountId>
	where
		I: 'a + IntoIterator<Item = (ConsensusEngineId, &'a [u8])>,
	{
		let index = pallet_aura::Pallet::<Runtime>::find_author(digests)?;
		let authority = pallet_aura::Authorities::<Runtime>::get().get(index as usize)?.clone();
		Some(AccountId::from(authority.into_inner()))
	}
}
