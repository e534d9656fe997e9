//! Tests of every call of the prompts pallet: each success and each failure. Every test ends by
//! checking the pallet's invariants (`do_try_state`).

use crate::{mock::*, *};
use frame_support::{
	assert_noop, assert_ok,
	traits::fungible::{Inspect as _, InspectHold as _},
};
use sp_runtime::{DispatchError, TokenError};

const NAME: &[u8] = b"support-agent";
const TEXT: &[u8] = b"<|im_start|>system\nYou are a helpful support agent.<|im_end|>";

fn bv<S: Get<u32>>(bytes: &[u8]) -> BoundedVec<u8, S> {
	bytes.to_vec().try_into().expect("test data fits its bound")
}

fn inline(text: &[u8]) -> TemplateOf<Test> {
	Template::Inline(bv(text))
}

fn external(uri: &[u8], hash: u8) -> TemplateOf<Test> {
	Template::External { uri: bv(uri), hash: [hash; 32] }
}

fn register(owner: u64, template: TemplateOf<Test>, price: u64) -> PromptId {
	let id = NextPromptId::<Test>::get();
	assert_ok!(PromptsPallet::register_prompt(
		RuntimeOrigin::signed(owner),
		bv(NAME),
		template,
		price
	));
	id
}

fn held(who: u64) -> u64 {
	Balances::balance_on_hold(&HoldReason::PromptDeposit.into(), &who)
}

fn last_event() -> RuntimeEvent {
	System::events().pop().expect("an event was deposited").event
}

fn prompt_deposit() -> u64 {
	PROMPT_DEPOSIT + BYTE_DEPOSIT * NAME.len() as u64
}

fn version_deposit(bytes: usize) -> u64 {
	VERSION_DEPOSIT + BYTE_DEPOSIT * bytes as u64
}

// ---- register_prompt ----

#[test]
fn register_prompt_stores_the_first_version_and_holds_deposits() {
	run_test(|| {
		let id = register(ALICE, inline(TEXT), 5);
		assert_eq!(id, 0);
		let prompt = Prompts::<Test>::get(id).unwrap();
		assert_eq!(prompt.owner, ALICE);
		assert_eq!(prompt.name.to_vec(), NAME.to_vec());
		assert_eq!((prompt.latest, prompt.pending_owner), (1, None));
		let version = Versions::<Test>::get(id, 1).unwrap();
		let hash = openledger_primitives::content_hash_of(TEXT);
		assert_eq!(version.content_hash, hash);
		assert_eq!(version.price_per_use, 5);
		assert!(!version.deprecated);
		assert_eq!(held(ALICE), prompt_deposit() + version_deposit(TEXT.len()));
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - held(ALICE));
		assert_eq!(
			last_event(),
			Event::PromptRegistered { prompt: id, owner: ALICE, content_hash: hash }.into()
		);
		// An external template is named by the hash its owner declares.
		let other = register(BOB, external(b"ipfs://prompt", 9), 0);
		assert_eq!(Versions::<Test>::get(other, 1).unwrap().content_hash, [9u8; 32]);
		assert_eq!(held(BOB), prompt_deposit() + version_deposit(b"ipfs://prompt".len()));
	});
}

#[test]
fn register_prompt_rejects_bad_input() {
	run_test(|| {
		let call = |origin, name: &[u8], template| {
			PromptsPallet::register_prompt(origin, bv(name), template, 1)
		};
		assert_noop!(call(RuntimeOrigin::none(), NAME, inline(TEXT)), DispatchError::BadOrigin);
		assert_noop!(
			call(RuntimeOrigin::signed(ALICE), b"", inline(TEXT)),
			Error::<Test>::EmptyName
		);
		assert_noop!(
			call(RuntimeOrigin::signed(ALICE), NAME, inline(b"")),
			Error::<Test>::EmptyTemplate
		);
		assert_noop!(
			call(RuntimeOrigin::signed(ALICE), NAME, external(b"", 1)),
			Error::<Test>::EmptyTemplate
		);
		assert_noop!(
			call(RuntimeOrigin::signed(PAUPER), NAME, inline(TEXT)),
			TokenError::FundsUnavailable
		);
		NextPromptId::<Test>::put(PromptId::MAX);
		assert_noop!(
			call(RuntimeOrigin::signed(ALICE), NAME, inline(TEXT)),
			Error::<Test>::IdsExhausted
		);
	});
}

// ---- publish_version ----

#[test]
fn publish_version_adds_versions_up_to_the_limit() {
	run_test(|| {
		let id = register(ALICE, inline(TEXT), 5);
		assert_ok!(PromptsPallet::publish_version(
			RuntimeOrigin::signed(ALICE),
			id,
			external(b"ipfs://v2", 2),
			7
		));
		assert_eq!(Prompts::<Test>::get(id).unwrap().latest, 2);
		let v2 = Versions::<Test>::get(id, 2).unwrap();
		assert_eq!((v2.content_hash, v2.price_per_use), ([2u8; 32], 7));
		assert_eq!(
			last_event(),
			Event::VersionPublished { prompt: id, version: 2, content_hash: [2u8; 32] }.into()
		);
		assert_eq!(
			held(ALICE),
			prompt_deposit() + version_deposit(TEXT.len()) + version_deposit(b"ipfs://v2".len())
		);
		// Version 1 is untouched.
		assert_eq!(Versions::<Test>::get(id, 1).unwrap().price_per_use, 5);
		assert_ok!(PromptsPallet::publish_version(
			RuntimeOrigin::signed(ALICE),
			id,
			inline(b"v3"),
			7
		));
		assert_noop!(
			PromptsPallet::publish_version(RuntimeOrigin::signed(ALICE), id, inline(b"v4"), 7),
			Error::<Test>::TooManyVersions
		);
	});
}

#[test]
fn publish_version_fails_for_others_unknown_prompts_and_bad_templates() {
	run_test(|| {
		let id = register(ALICE, inline(TEXT), 5);
		assert_noop!(
			PromptsPallet::publish_version(RuntimeOrigin::none(), id, inline(b"x"), 1),
			DispatchError::BadOrigin
		);
		assert_noop!(
			PromptsPallet::publish_version(RuntimeOrigin::signed(BOB), id, inline(b"x"), 1),
			Error::<Test>::NotOwner
		);
		assert_noop!(
			PromptsPallet::publish_version(RuntimeOrigin::signed(ALICE), 9, inline(b"x"), 1),
			Error::<Test>::UnknownPrompt
		);
		assert_noop!(
			PromptsPallet::publish_version(RuntimeOrigin::signed(ALICE), id, inline(b""), 1),
			Error::<Test>::EmptyTemplate
		);
	});
}

// ---- set_price / deprecate_version ----

#[test]
fn owner_sets_prices_and_deprecates_versions() {
	run_test(|| {
		let id = register(ALICE, inline(TEXT), 5);
		assert_eq!(PromptsPallet::usable(id, 1), Some((ALICE, 5)));
		assert_ok!(PromptsPallet::set_price(RuntimeOrigin::signed(ALICE), id, 1, 11));
		assert_eq!(
			last_event(),
			Event::PriceSet { prompt: id, version: 1, price_per_use: 11 }.into()
		);
		assert_eq!(PromptsPallet::usable(id, 1), Some((ALICE, 11)));
		assert_ok!(PromptsPallet::deprecate_version(RuntimeOrigin::signed(ALICE), id, 1));
		assert_eq!(last_event(), Event::VersionDeprecated { prompt: id, version: 1 }.into());
		assert!(Versions::<Test>::get(id, 1).unwrap().deprecated);
		assert_eq!(PromptsPallet::usable(id, 1), None);
		assert_eq!(PromptsPallet::usable(id, 2), None);
		assert_eq!(PromptsPallet::usable(9, 1), None);
	});
}

#[test]
fn set_price_and_deprecate_fail_for_others_and_unknown_versions() {
	run_test(|| {
		let id = register(ALICE, inline(TEXT), 5);
		assert_noop!(
			PromptsPallet::set_price(RuntimeOrigin::none(), id, 1, 1),
			DispatchError::BadOrigin
		);
		assert_noop!(
			PromptsPallet::set_price(RuntimeOrigin::signed(BOB), id, 1, 1),
			Error::<Test>::NotOwner
		);
		assert_noop!(
			PromptsPallet::set_price(RuntimeOrigin::signed(ALICE), 9, 1, 1),
			Error::<Test>::UnknownPrompt
		);
		assert_noop!(
			PromptsPallet::set_price(RuntimeOrigin::signed(ALICE), id, 2, 1),
			Error::<Test>::UnknownVersion
		);
		assert_noop!(
			PromptsPallet::deprecate_version(RuntimeOrigin::none(), id, 1),
			DispatchError::BadOrigin
		);
		assert_noop!(
			PromptsPallet::deprecate_version(RuntimeOrigin::signed(BOB), id, 1),
			Error::<Test>::NotOwner
		);
		assert_noop!(
			PromptsPallet::deprecate_version(RuntimeOrigin::signed(ALICE), 9, 1),
			Error::<Test>::UnknownPrompt
		);
		assert_noop!(
			PromptsPallet::deprecate_version(RuntimeOrigin::signed(ALICE), id, 2),
			Error::<Test>::UnknownVersion
		);
		assert_ok!(PromptsPallet::deprecate_version(RuntimeOrigin::signed(ALICE), id, 1));
		assert_noop!(
			PromptsPallet::deprecate_version(RuntimeOrigin::signed(ALICE), id, 1),
			Error::<Test>::AlreadyDeprecated
		);
	});
}

// ---- transfer_ownership / accept_ownership ----

#[test]
fn ownership_moves_with_the_deposits_once_accepted() {
	run_test(|| {
		let id = register(ALICE, inline(TEXT), 5);
		assert_ok!(PromptsPallet::publish_version(
			RuntimeOrigin::signed(ALICE),
			id,
			inline(b"v2"),
			5
		));
		let total = held(ALICE);
		assert_ok!(PromptsPallet::transfer_ownership(RuntimeOrigin::signed(ALICE), id, BOB));
		assert_eq!(
			last_event(),
			Event::TransferOffered { prompt: id, from: ALICE, to: BOB }.into()
		);
		assert_eq!(Prompts::<Test>::get(id).unwrap().pending_owner, Some(BOB));
		// Nothing moves until Bob accepts; Alice still owns it and may change the offer.
		assert_eq!(held(BOB), 0);
		assert_ok!(PromptsPallet::transfer_ownership(RuntimeOrigin::signed(ALICE), id, CHARLIE));
		assert_noop!(
			PromptsPallet::accept_ownership(RuntimeOrigin::signed(BOB), id),
			Error::<Test>::NotPendingOwner
		);
		assert_ok!(PromptsPallet::accept_ownership(RuntimeOrigin::signed(CHARLIE), id));
		assert_eq!(
			last_event(),
			Event::OwnershipTransferred { prompt: id, from: ALICE, to: CHARLIE }.into()
		);
		let prompt = Prompts::<Test>::get(id).unwrap();
		assert_eq!((prompt.owner, prompt.pending_owner), (CHARLIE, None));
		assert_eq!((held(ALICE), held(CHARLIE)), (0, total));
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
		assert_eq!(PromptsPallet::usable(id, 2), Some((CHARLIE, 5)));
	});
}

#[test]
fn transfer_and_accept_fail_for_the_wrong_accounts() {
	run_test(|| {
		let id = register(ALICE, inline(TEXT), 5);
		assert_noop!(
			PromptsPallet::transfer_ownership(RuntimeOrigin::none(), id, BOB),
			DispatchError::BadOrigin
		);
		assert_noop!(
			PromptsPallet::transfer_ownership(RuntimeOrigin::signed(BOB), id, BOB),
			Error::<Test>::NotOwner
		);
		assert_noop!(
			PromptsPallet::transfer_ownership(RuntimeOrigin::signed(ALICE), 9, BOB),
			Error::<Test>::UnknownPrompt
		);
		assert_noop!(
			PromptsPallet::transfer_ownership(RuntimeOrigin::signed(ALICE), id, ALICE),
			Error::<Test>::AlreadyOwner
		);
		assert_noop!(
			PromptsPallet::accept_ownership(RuntimeOrigin::none(), id),
			DispatchError::BadOrigin
		);
		assert_noop!(
			PromptsPallet::accept_ownership(RuntimeOrigin::signed(BOB), 9),
			Error::<Test>::UnknownPrompt
		);
		assert_noop!(
			PromptsPallet::accept_ownership(RuntimeOrigin::signed(BOB), id),
			Error::<Test>::NotPendingOwner
		);
		// A new owner who cannot pay the deposits cannot accept.
		assert_ok!(PromptsPallet::transfer_ownership(RuntimeOrigin::signed(ALICE), id, PAUPER));
		assert_noop!(
			PromptsPallet::accept_ownership(RuntimeOrigin::signed(PAUPER), id),
			TokenError::FundsUnavailable
		);
	});
}

// ---- remove_prompt ----

#[test]
fn remove_prompt_releases_every_deposit() {
	run_test(|| {
		let id = register(ALICE, inline(TEXT), 5);
		assert_ok!(PromptsPallet::publish_version(
			RuntimeOrigin::signed(ALICE),
			id,
			inline(b"v2"),
			5
		));
		let keep = register(ALICE, inline(b"other"), 1);
		let kept =
			held(ALICE) - (prompt_deposit() + version_deposit(TEXT.len()) + version_deposit(2));
		assert_ok!(PromptsPallet::remove_prompt(RuntimeOrigin::signed(ALICE), id));
		assert_eq!(last_event(), Event::PromptRemoved { prompt: id }.into());
		assert!(Prompts::<Test>::get(id).is_none());
		assert_eq!(Versions::<Test>::iter_prefix(id).count(), 0);
		assert_eq!(held(ALICE), kept);
		assert!(Prompts::<Test>::get(keep).is_some());
	});
}

#[test]
fn remove_prompt_fails_for_others_and_unknown_prompts() {
	run_test(|| {
		let id = register(ALICE, inline(TEXT), 5);
		assert_noop!(
			PromptsPallet::remove_prompt(RuntimeOrigin::none(), id),
			DispatchError::BadOrigin
		);
		assert_noop!(
			PromptsPallet::remove_prompt(RuntimeOrigin::signed(BOB), id),
			Error::<Test>::NotOwner
		);
		assert_noop!(
			PromptsPallet::remove_prompt(RuntimeOrigin::signed(ALICE), 9),
			Error::<Test>::UnknownPrompt
		);
	});
}

#[test]
fn try_state_detects_tampered_hashes_and_deposits() {
	new_test_ext().execute_with(|| {
		let id = register(ALICE, inline(TEXT), 5);
		assert_ok!(PromptsPallet::do_try_state());
		Versions::<Test>::mutate(id, 1, |v| v.as_mut().unwrap().content_hash = [0u8; 32]);
		assert!(PromptsPallet::do_try_state().is_err());
		Versions::<Test>::mutate(id, 1, |v| {
			let v = v.as_mut().unwrap();
			v.content_hash = v.template.content_hash();
			v.deposit += 1;
		});
		assert!(PromptsPallet::do_try_state().is_err());
	});
}
