//! Tests of every call of the DataNets pallet: each success and each failure. Every test ends by
//! checking the pallet's invariants (`do_try_state`).

use crate::{mock::*, *};
use frame_support::{
	assert_noop, assert_ok,
	traits::fungible::{Inspect as _, InspectHold as _},
	BoundedVec,
};
use sp_runtime::{DispatchError, Perbill, TokenError};

fn bv<S: frame_support::traits::Get<u32>>(bytes: &[u8]) -> BoundedVec<u8, S> {
	bytes.to_vec().try_into().expect("test data fits its bound")
}

fn curators(accounts: &[u64]) -> BoundedVec<u64, <Test as Config>::MaxCurators> {
	accounts.to_vec().try_into().expect("test curators fit the bound")
}

const NAME: &[u8] = b"medical-qa";
const DESCRIPTION: &[u8] = b"ipfs://description";
const LICENSE: &[u8] = b"CC-BY-4.0";
const URI: &[u8] = b"ipfs://record";

fn datanet_deposit() -> u64 {
	DATANET_DEPOSIT + BYTE_DEPOSIT * (NAME.len() + DESCRIPTION.len() + LICENSE.len()) as u64
}

fn record_deposit(metadata: usize) -> u64 {
	RECORD_DEPOSIT + BYTE_DEPOSIT * (URI.len() + metadata) as u64
}

fn create(owner: u64, curation: CurationMode, with: &[u64], forfeit: u32) -> DataNetId {
	let id = NextDataNetId::<Test>::get();
	assert_ok!(DataNetsPallet::create_datanet(
		RuntimeOrigin::signed(owner),
		bv(NAME),
		bv(DESCRIPTION),
		[7u8; 32],
		bv(LICENSE),
		curation,
		curators(with),
		Perbill::from_percent(forfeit),
	));
	id
}

fn contribute(who: u64, datanet: DataNetId, content: u8) -> RecordId {
	let id = NextRecordId::<Test>::get();
	assert_ok!(DataNetsPallet::contribute(
		RuntimeOrigin::signed(who),
		datanet,
		[content; 32],
		bv(URI),
		1024,
		None
	));
	id
}

fn held(reason: HoldReason, who: u64) -> u64 {
	Balances::balance_on_hold(&reason.into(), &who)
}

fn free(who: u64) -> u64 {
	Balances::balance(&who)
}

fn last_event() -> RuntimeEvent {
	System::events().pop().expect("an event was deposited").event
}

// ---- create_datanet ----

#[test]
fn create_datanet_stores_it_and_holds_the_deposit() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[BOB, CHARLIE], 20);
		assert_eq!(id, 0);
		assert_eq!(NextDataNetId::<Test>::get(), 1);
		let net = DataNets::<Test>::get(id).unwrap();
		assert_eq!(net.owner, ALICE);
		assert_eq!(net.name.to_vec(), NAME.to_vec());
		assert_eq!(net.description_uri.to_vec(), DESCRIPTION.to_vec());
		assert_eq!(net.description_hash, [7u8; 32]);
		assert_eq!(net.license.to_vec(), LICENSE.to_vec());
		assert_eq!(net.curation, CurationMode::Curated);
		assert_eq!(net.curators.to_vec(), vec![BOB, CHARLIE]);
		assert_eq!(net.rejection_forfeit, Perbill::from_percent(20));
		assert_eq!((net.version, net.commitment, net.pending), (0, EMPTY_COMMITMENT, 0));
		assert_eq!(net.deposit, datanet_deposit());
		assert_eq!(held(HoldReason::DataNetDeposit, ALICE), datanet_deposit());
		assert_eq!(free(ALICE), ENDOWMENT - datanet_deposit());
		assert_eq!(
			last_event(),
			Event::DataNetCreated { datanet: 0, owner: ALICE, curation: CurationMode::Curated }
				.into()
		);
		assert_eq!(create(BOB, CurationMode::Open, &[], 0), 1);
	});
}

#[test]
fn create_datanet_rejects_bad_input() {
	run_test(|| {
		let call = |origin, name: &[u8], forfeit, with: &[u64]| {
			DataNetsPallet::create_datanet(
				origin,
				bv(name),
				bv(DESCRIPTION),
				[0u8; 32],
				bv(LICENSE),
				CurationMode::Curated,
				curators(with),
				Perbill::from_percent(forfeit),
			)
		};
		assert_noop!(call(RuntimeOrigin::none(), NAME, 0, &[]), DispatchError::BadOrigin);
		assert_noop!(call(RuntimeOrigin::signed(ALICE), b"", 0, &[]), Error::<Test>::EmptyName);
		assert_noop!(
			call(RuntimeOrigin::signed(ALICE), NAME, 51, &[]),
			Error::<Test>::ForfeitTooHigh
		);
		assert_noop!(
			call(RuntimeOrigin::signed(ALICE), NAME, 0, &[BOB, CHARLIE, BOB]),
			Error::<Test>::DuplicateCurator
		);
		assert_noop!(
			call(RuntimeOrigin::signed(PAUPER), NAME, 0, &[]),
			TokenError::FundsUnavailable
		);
		NextDataNetId::<Test>::put(DataNetId::MAX);
		assert_noop!(call(RuntimeOrigin::signed(ALICE), NAME, 0, &[]), Error::<Test>::IdsExhausted);
	});
}

// ---- set_curators / set_curation ----

#[test]
fn owner_sets_curators_and_curation() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[BOB], 0);
		assert_ok!(DataNetsPallet::set_curators(
			RuntimeOrigin::signed(ALICE),
			id,
			curators(&[CHARLIE])
		));
		assert_eq!(DataNets::<Test>::get(id).unwrap().curators.to_vec(), vec![CHARLIE]);
		assert_eq!(
			last_event(),
			Event::CuratorsSet { datanet: id, curators: curators(&[CHARLIE]) }.into()
		);
		let record = contribute(DAVE, id, 1);
		assert_noop!(
			DataNetsPallet::accept_record(RuntimeOrigin::signed(BOB), record),
			Error::<Test>::NotCurator
		);
		assert_ok!(DataNetsPallet::accept_record(RuntimeOrigin::signed(CHARLIE), record));

		assert_ok!(DataNetsPallet::set_curation(
			RuntimeOrigin::signed(ALICE),
			id,
			CurationMode::Open,
			Perbill::from_percent(50)
		));
		let net = DataNets::<Test>::get(id).unwrap();
		assert_eq!(
			(net.curation, net.rejection_forfeit),
			(CurationMode::Open, Perbill::from_percent(50))
		);
		assert_eq!(
			last_event(),
			Event::CurationSet {
				datanet: id,
				curation: CurationMode::Open,
				rejection_forfeit: Perbill::from_percent(50)
			}
			.into()
		);
		let open = contribute(DAVE, id, 2);
		assert_eq!(Records::<Test>::get(open).unwrap().status, RecordStatus::Accepted { index: 1 });
	});
}

#[test]
fn set_curators_and_curation_fail_for_others() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[BOB], 0);
		assert_noop!(
			DataNetsPallet::set_curators(RuntimeOrigin::signed(BOB), id, curators(&[BOB])),
			Error::<Test>::NotOwner
		);
		assert_noop!(
			DataNetsPallet::set_curators(RuntimeOrigin::signed(ALICE), 9, curators(&[BOB])),
			Error::<Test>::UnknownDataNet
		);
		assert_noop!(
			DataNetsPallet::set_curators(RuntimeOrigin::signed(ALICE), id, curators(&[BOB, BOB])),
			Error::<Test>::DuplicateCurator
		);
		assert_noop!(
			DataNetsPallet::set_curators(RuntimeOrigin::none(), id, curators(&[])),
			DispatchError::BadOrigin
		);
		let open = CurationMode::Open;
		assert_noop!(
			DataNetsPallet::set_curation(RuntimeOrigin::signed(BOB), id, open, Perbill::zero()),
			Error::<Test>::NotOwner
		);
		assert_noop!(
			DataNetsPallet::set_curation(RuntimeOrigin::signed(ALICE), 9, open, Perbill::zero()),
			Error::<Test>::UnknownDataNet
		);
		assert_noop!(
			DataNetsPallet::set_curation(
				RuntimeOrigin::signed(ALICE),
				id,
				open,
				Perbill::from_percent(60)
			),
			Error::<Test>::ForfeitTooHigh
		);
		assert_noop!(
			DataNetsPallet::set_curation(RuntimeOrigin::none(), id, open, Perbill::zero()),
			DispatchError::BadOrigin
		);
	});
}

// ---- destroy_datanet ----

#[test]
fn destroy_datanet_releases_the_deposit() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[], 0);
		assert_ok!(DataNetsPallet::destroy_datanet(RuntimeOrigin::signed(ALICE), id));
		assert!(DataNets::<Test>::get(id).is_none());
		assert_eq!(held(HoldReason::DataNetDeposit, ALICE), 0);
		assert_eq!(free(ALICE), ENDOWMENT);
		assert_eq!(last_event(), Event::DataNetDestroyed { datanet: id }.into());
		// Ids are never reused.
		assert_eq!(create(ALICE, CurationMode::Curated, &[], 0), id + 1);
	});
}

#[test]
fn destroy_datanet_fails_for_others_and_non_empty_datanets() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[], 0);
		assert_noop!(
			DataNetsPallet::destroy_datanet(RuntimeOrigin::signed(BOB), id),
			Error::<Test>::NotOwner
		);
		assert_noop!(
			DataNetsPallet::destroy_datanet(RuntimeOrigin::signed(ALICE), 9),
			Error::<Test>::UnknownDataNet
		);
		assert_noop!(
			DataNetsPallet::destroy_datanet(RuntimeOrigin::none(), id),
			DispatchError::BadOrigin
		);
		let record = contribute(BOB, id, 1);
		assert_noop!(
			DataNetsPallet::destroy_datanet(RuntimeOrigin::signed(ALICE), id),
			Error::<Test>::DataNetNotEmpty
		);
		assert_ok!(DataNetsPallet::accept_record(RuntimeOrigin::signed(ALICE), record));
		assert_noop!(
			DataNetsPallet::destroy_datanet(RuntimeOrigin::signed(ALICE), id),
			Error::<Test>::DataNetNotEmpty
		);
	});
}

// ---- contribute ----

#[test]
fn contribute_to_a_curated_datanet_leaves_the_record_pending() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[], 0);
		let metadata: BoundedVec<u8, _> = bv(br#"{"lang":"en"}"#);
		assert_ok!(DataNetsPallet::contribute(
			RuntimeOrigin::signed(BOB),
			id,
			[1u8; 32],
			bv(URI),
			4096,
			Some(metadata.clone())
		));
		let record = Records::<Test>::get(0).unwrap();
		assert_eq!(record.datanet, id);
		assert_eq!(record.contributor, BOB);
		assert_eq!(record.content_hash, [1u8; 32]);
		assert_eq!(record.uri.to_vec(), URI.to_vec());
		assert_eq!(record.size, 4096);
		assert_eq!(record.metadata, Some(metadata.clone()));
		assert_eq!(record.status, RecordStatus::Pending);
		assert_eq!(record.deposit, record_deposit(metadata.len()));
		assert_eq!(held(HoldReason::RecordDeposit, BOB), record_deposit(metadata.len()));
		assert_eq!(RecordsByHash::<Test>::get(id, [1u8; 32]), Some(0));
		assert_eq!(ContributorRecords::<Test>::get(BOB, 0), Some(id));
		let net = DataNets::<Test>::get(id).unwrap();
		assert_eq!((net.pending, net.version, net.commitment), (1, 0, EMPTY_COMMITMENT));
		assert_eq!(
			last_event(),
			Event::RecordContributed {
				datanet: id,
				record: 0,
				contributor: BOB,
				content_hash: [1u8; 32]
			}
			.into()
		);
	});
}

#[test]
fn contribute_to_an_open_datanet_accepts_at_once() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Open, &[], 0);
		let first = contribute(BOB, id, 1);
		let second = contribute(CHARLIE, id, 2);
		let net = DataNets::<Test>::get(id).unwrap();
		assert_eq!((net.version, net.pending), (2, 0));
		let expected =
			openledger_primitives::commitment_of([(first, &[1u8; 32]), (second, &[2u8; 32])]);
		assert_eq!(net.commitment, expected);
		assert_eq!(
			Records::<Test>::get(second).unwrap().status,
			RecordStatus::Accepted { index: 1 }
		);
		assert_eq!(AcceptedRecords::<Test>::get(id, 1).unwrap().record, second);
		assert_eq!(Contributions::<Test>::get(id, CHARLIE).unwrap().accepted, 1);
		assert_eq!(
			last_event(),
			Event::RecordAccepted {
				datanet: id,
				record: second,
				index: 1,
				version: 2,
				commitment: expected
			}
			.into()
		);
	});
}

#[test]
fn contribute_rejects_bad_input() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[], 0);
		let call = |origin, datanet, content: u8, size| {
			DataNetsPallet::contribute(origin, datanet, [content; 32], bv(URI), size, None)
		};
		assert_noop!(call(RuntimeOrigin::none(), id, 1, 1), DispatchError::BadOrigin);
		assert_noop!(call(RuntimeOrigin::signed(BOB), id, 1, 0), Error::<Test>::EmptyRecord);
		assert_noop!(call(RuntimeOrigin::signed(BOB), 9, 1, 1), Error::<Test>::UnknownDataNet);
		assert_noop!(call(RuntimeOrigin::signed(PAUPER), id, 1, 1), TokenError::FundsUnavailable);
		contribute(BOB, id, 1);
		// The same content twice, from anyone, is refused.
		assert_noop!(
			call(RuntimeOrigin::signed(CHARLIE), id, 1, 1),
			Error::<Test>::DuplicateContent
		);
		NextRecordId::<Test>::put(RecordId::MAX);
		assert_noop!(call(RuntimeOrigin::signed(BOB), id, 2, 1), Error::<Test>::IdsExhausted);
	});
}

// ---- accept_record ----

#[test]
fn curators_accept_records_and_the_commitment_tracks_every_version() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[BOB], 0);
		let records: Vec<_> = (1..=4).map(|c| contribute(CHARLIE, id, c)).collect();
		// Accept out of contribution order: the commitment follows acceptance order.
		let order = [records[2], records[0], records[3]];
		let mut chain = Vec::new();
		for (i, record) in order.iter().enumerate() {
			let curator = if i % 2 == 0 { BOB } else { ALICE };
			assert_ok!(DataNetsPallet::accept_record(RuntimeOrigin::signed(curator), *record));
			let content = Records::<Test>::get(record).unwrap().content_hash;
			chain.push((*record, content));
			let expected = openledger_primitives::commitment_of(chain.iter().map(|(r, c)| (*r, c)));
			let net = DataNets::<Test>::get(id).unwrap();
			assert_eq!(net.version, i as u64 + 1);
			assert_eq!(net.commitment, expected);
			assert_eq!(
				AcceptedRecords::<Test>::get(id, i as u64),
				Some(AcceptedRecord { record: *record, commitment: expected })
			);
			assert_eq!(
				last_event(),
				Event::RecordAccepted {
					datanet: id,
					record: *record,
					index: i as u64,
					version: i as u64 + 1,
					commitment: expected
				}
				.into()
			);
		}
		assert_eq!(DataNets::<Test>::get(id).unwrap().pending, 1);
		assert_eq!(Contributions::<Test>::get(id, CHARLIE).unwrap().accepted, 3);
		// Accepted records keep their deposit: they stay on chain.
		assert_eq!(held(HoldReason::RecordDeposit, CHARLIE), 4 * record_deposit(0));
	});
}

#[test]
fn accept_record_fails_for_non_curators_unknown_and_accepted_records() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[BOB], 0);
		let record = contribute(CHARLIE, id, 1);
		assert_noop!(
			DataNetsPallet::accept_record(RuntimeOrigin::none(), record),
			DispatchError::BadOrigin
		);
		assert_noop!(
			DataNetsPallet::accept_record(RuntimeOrigin::signed(CHARLIE), record),
			Error::<Test>::NotCurator
		);
		assert_noop!(
			DataNetsPallet::accept_record(RuntimeOrigin::signed(BOB), 77),
			Error::<Test>::UnknownRecord
		);
		assert_ok!(DataNetsPallet::accept_record(RuntimeOrigin::signed(BOB), record));
		assert_noop!(
			DataNetsPallet::accept_record(RuntimeOrigin::signed(BOB), record),
			Error::<Test>::AlreadyAccepted
		);
	});
}

// ---- reject_record ----

#[test]
fn reject_record_forfeits_the_configured_share() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[BOB], 40);
		let record = contribute(CHARLIE, id, 1);
		let deposit = record_deposit(0);
		let forfeited = Perbill::from_percent(40).mul_floor(deposit);
		let issuance = Balances::total_issuance();
		assert_ok!(DataNetsPallet::reject_record(RuntimeOrigin::signed(BOB), record));
		assert_eq!(held(HoldReason::RecordDeposit, CHARLIE), 0);
		assert_eq!(free(CHARLIE), ENDOWMENT - forfeited);
		assert_eq!(free(TREASURY), ENDOWMENT + forfeited);
		assert_eq!(Balances::total_issuance(), issuance);
		assert!(Records::<Test>::get(record).is_none());
		assert!(ContributorRecords::<Test>::get(CHARLIE, record).is_none());
		assert_eq!(DataNets::<Test>::get(id).unwrap().pending, 0);
		assert_eq!(last_event(), Event::RecordRejected { datanet: id, record, forfeited }.into());
		// The content may be contributed again, under a new id.
		assert_eq!(contribute(DAVE, id, 1), record + 1);
	});
}

#[test]
fn reject_record_with_no_forfeit_refunds_everything() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[], 0);
		let record = contribute(CHARLIE, id, 1);
		assert_ok!(DataNetsPallet::reject_record(RuntimeOrigin::signed(ALICE), record));
		assert_eq!(free(CHARLIE), ENDOWMENT);
		assert_eq!(free(TREASURY), ENDOWMENT);
		assert_eq!(
			last_event(),
			Event::RecordRejected { datanet: id, record, forfeited: 0 }.into()
		);
	});
}

#[test]
fn reject_record_fails_for_non_curators_unknown_and_accepted_records() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[BOB], 10);
		let record = contribute(CHARLIE, id, 1);
		assert_noop!(
			DataNetsPallet::reject_record(RuntimeOrigin::none(), record),
			DispatchError::BadOrigin
		);
		assert_noop!(
			DataNetsPallet::reject_record(RuntimeOrigin::signed(DAVE), record),
			Error::<Test>::NotCurator
		);
		assert_noop!(
			DataNetsPallet::reject_record(RuntimeOrigin::signed(BOB), 77),
			Error::<Test>::UnknownRecord
		);
		assert_ok!(DataNetsPallet::accept_record(RuntimeOrigin::signed(BOB), record));
		assert_noop!(
			DataNetsPallet::reject_record(RuntimeOrigin::signed(BOB), record),
			Error::<Test>::AlreadyAccepted
		);
	});
}

// ---- withdraw_record ----

#[test]
fn withdraw_record_refunds_the_whole_deposit() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[], 50);
		let record = contribute(CHARLIE, id, 1);
		assert_ok!(DataNetsPallet::withdraw_record(RuntimeOrigin::signed(CHARLIE), record));
		assert_eq!(free(CHARLIE), ENDOWMENT);
		assert_eq!(held(HoldReason::RecordDeposit, CHARLIE), 0);
		assert!(Records::<Test>::get(record).is_none());
		assert!(RecordsByHash::<Test>::get(id, [1u8; 32]).is_none());
		assert_eq!(DataNets::<Test>::get(id).unwrap().pending, 0);
		assert_eq!(last_event(), Event::RecordWithdrawn { datanet: id, record }.into());
	});
}

#[test]
fn withdraw_record_fails_for_others_unknown_and_accepted_records() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[], 0);
		let record = contribute(CHARLIE, id, 1);
		assert_noop!(
			DataNetsPallet::withdraw_record(RuntimeOrigin::none(), record),
			DispatchError::BadOrigin
		);
		assert_noop!(
			DataNetsPallet::withdraw_record(RuntimeOrigin::signed(ALICE), record),
			Error::<Test>::NotContributor
		);
		assert_noop!(
			DataNetsPallet::withdraw_record(RuntimeOrigin::signed(CHARLIE), 77),
			Error::<Test>::UnknownRecord
		);
		assert_ok!(DataNetsPallet::accept_record(RuntimeOrigin::signed(ALICE), record));
		assert_noop!(
			DataNetsPallet::withdraw_record(RuntimeOrigin::signed(CHARLIE), record),
			Error::<Test>::AlreadyAccepted
		);
	});
}

// ---- reward / claim_rewards ----

#[test]
fn rewards_are_shared_by_accepted_records_and_claimed() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Open, &[], 0);
		contribute(BOB, id, 1);
		for c in 2..=4 {
			contribute(CHARLIE, id, c);
		}
		let pot = DataNetsPallet::account_id();
		let pot_before = free(pot);
		assert_ok!(DataNetsPallet::reward(RuntimeOrigin::signed(DAVE), id, 400));
		assert_eq!(
			last_event(),
			Event::DataNetRewarded { datanet: id, payer: DAVE, amount: 400 }.into()
		);
		assert_eq!(free(DAVE), ENDOWMENT - 400);
		assert_eq!(free(pot), pot_before + 400);
		assert_eq!(DataNetsPallet::claimable(id, &BOB), 100);
		assert_eq!(DataNetsPallet::claimable(id, &CHARLIE), 300);

		// A record accepted after a payment does not share in it.
		contribute(DAVE, id, 5);
		assert_eq!(DataNetsPallet::claimable(id, &DAVE), 0);
		assert_ok!(DataNetsPallet::reward(RuntimeOrigin::signed(ALICE), id, 500));
		assert_eq!(DataNetsPallet::claimable(id, &BOB), 200);
		assert_eq!(DataNetsPallet::claimable(id, &CHARLIE), 600);
		assert_eq!(DataNetsPallet::claimable(id, &DAVE), 100);

		let bob = free(BOB);
		assert_ok!(DataNetsPallet::claim_rewards(RuntimeOrigin::signed(BOB), id));
		assert_eq!(free(BOB), bob + 200);
		assert_eq!(
			last_event(),
			Event::RewardsClaimed { datanet: id, contributor: BOB, amount: 200 }.into()
		);
		assert_eq!(DataNetsPallet::claimable(id, &BOB), 0);
		assert_noop!(
			DataNetsPallet::claim_rewards(RuntimeOrigin::signed(BOB), id),
			Error::<Test>::NothingToClaim
		);
		// Bob contributes again: his earlier unclaimed share is kept when his weight changes.
		assert_ok!(DataNetsPallet::reward(RuntimeOrigin::signed(ALICE), id, 50));
		contribute(BOB, id, 6);
		assert_eq!(DataNetsPallet::claimable(id, &BOB), 10);
		assert_ok!(DataNetsPallet::claim_rewards(RuntimeOrigin::signed(CHARLIE), id));
		assert_ok!(DataNetsPallet::claim_rewards(RuntimeOrigin::signed(DAVE), id));
		assert_ok!(DataNetsPallet::claim_rewards(RuntimeOrigin::signed(BOB), id));
		// Everything paid in went out; the pot keeps its existential deposit.
		assert_eq!(free(pot), pot_before);
		assert_eq!(DataNets::<Test>::get(id).unwrap().rewards_paid, 950);
	});
}

#[test]
fn reward_rounding_never_pays_out_more_than_was_paid_in() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Open, &[], 0);
		for c in 1..=3 {
			contribute(BOB + (c as u64 % 2), id, c);
		}
		assert_ok!(DataNetsPallet::reward(RuntimeOrigin::signed(DAVE), id, 100));
		let shares = DataNetsPallet::claimable(id, &BOB) + DataNetsPallet::claimable(id, &CHARLIE);
		assert!((99..=100).contains(&shares), "shares {shares}");
		assert_ok!(DataNetsPallet::claim_rewards(RuntimeOrigin::signed(BOB), id));
		assert_ok!(DataNetsPallet::claim_rewards(RuntimeOrigin::signed(CHARLIE), id));
		assert!(free(DataNetsPallet::account_id()) >= EXISTENTIAL_DEPOSIT);
	});
}

#[test]
fn reward_fails_for_small_amounts_empty_and_unknown_datanets_and_poor_payers() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Curated, &[], 0);
		assert_noop!(
			DataNetsPallet::reward(RuntimeOrigin::none(), id, 100),
			DispatchError::BadOrigin
		);
		assert_noop!(
			DataNetsPallet::reward(RuntimeOrigin::signed(DAVE), 9, 100),
			Error::<Test>::UnknownDataNet
		);
		assert_noop!(
			DataNetsPallet::reward(RuntimeOrigin::signed(DAVE), id, 100),
			Error::<Test>::NoContributors
		);
		let record = contribute(BOB, id, 1);
		assert_ok!(DataNetsPallet::accept_record(RuntimeOrigin::signed(ALICE), record));
		assert_noop!(
			DataNetsPallet::reward(RuntimeOrigin::signed(DAVE), id, 9),
			Error::<Test>::RewardTooSmall
		);
		assert_noop!(
			DataNetsPallet::reward(RuntimeOrigin::signed(PAUPER), id, 100),
			TokenError::FundsUnavailable
		);
		// The accumulator refuses to overflow rather than wrap.
		DataNets::<Test>::mutate(id, |net| net.as_mut().unwrap().reward_per_record = u128::MAX - 1);
		assert_noop!(
			DataNetsPallet::reward(RuntimeOrigin::signed(DAVE), id, 100),
			Error::<Test>::Overflow
		);
		DataNets::<Test>::mutate(id, |net| net.as_mut().unwrap().reward_per_record = 0);
	});
}

#[test]
fn claim_rewards_fails_without_rewards_or_datanet() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Open, &[], 0);
		assert_noop!(
			DataNetsPallet::claim_rewards(RuntimeOrigin::none(), id),
			DispatchError::BadOrigin
		);
		assert_noop!(
			DataNetsPallet::claim_rewards(RuntimeOrigin::signed(BOB), 9),
			Error::<Test>::UnknownDataNet
		);
		assert_noop!(
			DataNetsPallet::claim_rewards(RuntimeOrigin::signed(BOB), id),
			Error::<Test>::NothingToClaim
		);
		contribute(BOB, id, 1);
		assert_noop!(
			DataNetsPallet::claim_rewards(RuntimeOrigin::signed(BOB), id),
			Error::<Test>::NothingToClaim
		);
	});
}

// ---- invariants ----

#[test]
fn try_state_detects_a_tampered_commitment_and_deposit() {
	new_test_ext().execute_with(|| {
		let id = create(ALICE, CurationMode::Open, &[], 0);
		contribute(BOB, id, 1);
		assert_ok!(DataNetsPallet::do_try_state());
		DataNets::<Test>::mutate(id, |net| net.as_mut().unwrap().commitment = [9u8; 32]);
		assert!(DataNetsPallet::do_try_state().is_err());
		DataNets::<Test>::mutate(id, |net| {
			let net = net.as_mut().unwrap();
			net.commitment = AcceptedRecords::<Test>::get(id, 0).unwrap().commitment;
			net.deposit += 1;
		});
		assert!(DataNetsPallet::do_try_state().is_err());
	});
}

#[test]
fn genesis_endows_the_reward_account() {
	run_test(|| {
		assert_eq!(free(DataNetsPallet::account_id()), EXISTENTIAL_DEPOSIT);
	});
}

// ---- reads for the runtime API ----

#[test]
fn pages_of_accepted_records_commitments_and_contributor_records() {
	run_test(|| {
		let id = create(ALICE, CurationMode::Open, &[], 0);
		let records: Vec<_> =
			(0..5u8).map(|c| contribute(if c % 2 == 0 { BOB } else { CHARLIE }, id, c)).collect();
		let page = DataNetsPallet::accepted_page(id, 1, 2);
		assert_eq!(page.iter().map(|(r, _, _)| *r).collect::<Vec<_>>(), records[1..3].to_vec());
		assert_eq!(page[1].2, AcceptedRecords::<Test>::get(id, 2).unwrap().commitment);
		assert_eq!(DataNetsPallet::accepted_page(id, 4, 10).len(), 1);
		assert!(DataNetsPallet::accepted_page(id, 5, 10).is_empty());
		assert!(DataNetsPallet::accepted_page(9, 0, 10).is_empty());

		let net = DataNets::<Test>::get(id).unwrap();
		assert_eq!(DataNetsPallet::commitment_at(id, None), Some((5, net.commitment)));
		assert_eq!(DataNetsPallet::commitment_at(id, Some(5)), Some((5, net.commitment)));
		assert_eq!(DataNetsPallet::commitment_at(id, Some(0)), Some((0, EMPTY_COMMITMENT)));
		let two = openledger_primitives::commitment_of([
			(records[0], &[0u8; 32]),
			(records[1], &[1u8; 32]),
		]);
		assert_eq!(DataNetsPallet::commitment_at(id, Some(2)), Some((2, two)));
		assert_eq!(DataNetsPallet::commitment_at(id, Some(6)), None);
		assert_eq!(DataNetsPallet::commitment_at(9, None), None);

		// Paging through Bob's records with a cursor visits each exactly once.
		let mut seen = Vec::new();
		let mut cursor = None;
		loop {
			let page = DataNetsPallet::contributor_page(&BOB, cursor, 2);
			if page.is_empty() {
				break;
			}
			assert!(page.len() <= 2);
			cursor = page.last().map(|(r, _)| *r);
			seen.extend(page.into_iter().map(|(r, rec)| {
				assert_eq!(rec.contributor, BOB);
				r
			}));
		}
		seen.sort();
		assert_eq!(seen, vec![records[0], records[2], records[4]]);
		assert!(DataNetsPallet::contributor_page(&DAVE, None, 10).is_empty());
	});
}
