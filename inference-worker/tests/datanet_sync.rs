//! The DataNet sync ([`openledger_inference_worker::datanet_sync`]) against a node that
//! answers the registry's JSON-RPC methods as `node/src/registry_rpc/datanets.rs` does, from a
//! chain the test writes (and, to check what the worker refuses, falsifies), with the real
//! all-MiniLM-L6-v2 embedding the records. `node/tests/worker_sync.rs` runs the worker against
//! a real node.

use std::{
	collections::BTreeMap,
	net::SocketAddr,
	path::Path,
	sync::{atomic::Ordering, Arc, Mutex, RwLock},
	time::Duration,
};

use jsonrpsee::{
	server::{Server, ServerHandle},
	types::{ErrorObjectOwned, Params},
	RpcModule,
};
use openledger_inference_worker::{
	chain_rpc::RpcError,
	datanet_sync::{store_content, DataNetStatus, DataNetSync, SyncConfig, SyncError},
	embedding_service::EmbeddingService,
	embeddings::EmbeddingModel,
	models,
	retrieval::VectorIndex,
};
use openledger_primitives::{commitment_of, content_hash_of, next_commitment, EMPTY_COMMITMENT};
use serde_json::{json, Value};

/// A record on the test's chain.
#[derive(Clone)]
struct ChainRecord {
	id: u64,
	hash: [u8; 32],
	size: u64,
}

/// The chain the mock node serves.
#[derive(Default)]
struct Chain {
	genesis: String,
	/// Each DataNet's accepted records in acceptance order.
	nets: BTreeMap<u32, Vec<ChainRecord>>,
	/// A DataNet and position whose commitment the node falsifies.
	lie_at: Option<(u32, u64)>,
	/// A DataNet and position whose content hash the node garbles.
	garble_at: Option<(u32, u64)>,
	/// The node is behind: it serves only the first this many records of each DataNet.
	behind: Option<usize>,
	next_id: u64,
}

impl Chain {
	fn new(genesis: &str) -> Self {
		Self { genesis: genesis.into(), next_id: 100, ..Default::default() }
	}

	/// Accepts a record of `content` into `datanet`; returns its id.
	fn accept(&mut self, datanet: u32, content: &[u8]) -> u64 {
		let id = self.next_id;
		self.next_id += 1;
		let record = ChainRecord { id, hash: content_hash_of(content), size: content.len() as u64 };
		self.nets.entry(datanet).or_default().push(record);
		id
	}

	/// The records of `datanet` the node serves.
	fn records(&self, datanet: u32) -> Option<&[ChainRecord]> {
		let all = self.nets.get(&datanet)?;
		Some(&all[..self.behind.unwrap_or(usize::MAX).min(all.len())])
	}

	/// The commitments after each accepted record of `datanet`, as the runtime keeps them.
	fn commitments(&self, datanet: u32) -> Vec<[u8; 32]> {
		let mut acc = EMPTY_COMMITMENT;
		self.records(datanet)
			.unwrap_or_default()
			.iter()
			.enumerate()
			.map(|(i, r)| {
				acc = next_commitment(&acc, i as u64, r.id, &r.hash);
				acc
			})
			.collect()
	}
}

fn hex0x(bytes: &[u8]) -> String {
	format!("0x{}", hex::encode(bytes))
}

type Shared = Arc<Mutex<Chain>>;

/// The node's methods over `chain`.
fn module(chain: Shared) -> RpcModule<Shared> {
	let mut module = RpcModule::new(chain);
	type Answer = Result<Value, ErrorObjectOwned>;
	module
		.register_method("chain_getBlockHash", |params: Params, chain, _| -> Answer {
			let number: u64 = params.sequence().next()?;
			assert_eq!(number, 0, "the worker asks for the genesis hash only");
			Ok(json!(chain.lock().unwrap().genesis))
		})
		.unwrap();
	module
		.register_method("chain_getFinalizedHead", |_, _, _| -> Answer {
			Ok(json!(hex0x(&[0x11; 32])))
		})
		.unwrap();
	module
		.register_method("datanets_getDataNet", |params: Params, chain, _| -> Answer {
			let id: u32 = params.sequence().next()?;
			let chain = chain.lock().unwrap();
			Ok(match chain.records(id) {
				None => Value::Null,
				Some(records) => json!({
					"name": format!("net {id}"),
					"version": records.len(),
					"commitment": hex0x(&chain.commitments(id).last().copied().unwrap_or(EMPTY_COMMITMENT)),
					"pending": 0,
				}),
			})
		})
		.unwrap();
	module
		.register_method("datanets_commitment", |params: Params, chain, _| -> Answer {
			let mut seq = params.sequence();
			let id: u32 = seq.next()?;
			let version: u64 = seq.next()?;
			let chain = chain.lock().unwrap();
			let Some(records) = chain.records(id) else { return Ok(Value::Null) };
			if version as usize > records.len() {
				return Ok(Value::Null);
			}
			let commitment = match version {
				0 => EMPTY_COMMITMENT,
				v => chain.commitments(id)[v as usize - 1],
			};
			Ok(json!({ "version": version, "commitment": hex0x(&commitment) }))
		})
		.unwrap();
	module
		.register_method("datanets_acceptedRecords", |params: Params, chain, _| -> Answer {
			let mut seq = params.sequence();
			let id: u32 = seq.next()?;
			let start: u64 = seq.next()?;
			let limit: u32 = seq.next()?;
			let chain = chain.lock().unwrap();
			let Some(records) = chain.records(id) else { return Ok(json!([])) };
			let commitments = chain.commitments(id);
			let page: Vec<Value> = (start..records.len() as u64)
				.take(limit as usize)
				.map(|i| {
					let r = &records[i as usize];
					let mut commitment = commitments[i as usize];
					if chain.lie_at == Some((id, i)) {
						commitment[0] ^= 1;
					}
					let content_hash = match chain.garble_at == Some((id, i)) {
						true => "0xnot-a-hash".to_string(),
						false => hex0x(&r.hash),
					};
					json!({
						"id": r.id,
						"datanet": id,
						"contributor": "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
						"contentHash": content_hash,
						"uri": format!("ipfs://record-{}", r.id),
						"size": r.size,
						"metadata": null,
						"deposit": "1000",
						"status": { "accepted": i },
						"commitment": hex0x(&commitment),
					})
				})
				.collect();
			Ok(json!(page))
		})
		.unwrap();
	module
}

/// Starts the mock node on `addr` (port 0: any).
async fn start_node(chain: &Shared, addr: SocketAddr) -> (ServerHandle, SocketAddr) {
	let server = Server::builder().build(addr).await.expect("the mock node binds");
	let addr = server.local_addr().unwrap();
	(server.start(module(chain.clone())), addr)
}

async fn stop_node(handle: ServerHandle) {
	handle.stop().unwrap();
	handle.stopped().await;
}

fn embedding_service() -> Arc<EmbeddingService> {
	let dir = models::minilm_dir();
	assert!(dir.exists(), "{} is missing: run scripts/fetch-models.sh", dir.display());
	Arc::new(EmbeddingService::start(EmbeddingModel::load(&dir).unwrap()).unwrap())
}

struct Setup {
	sync: DataNetSync,
	index: Arc<RwLock<VectorIndex>>,
	service: Arc<EmbeddingService>,
}

fn setup(addr: SocketAddr, datanets: &[u32], content_dir: &Path, page: u32) -> Setup {
	setup_holding(addr, datanets, content_dir, page, 1000)
}

fn setup_holding(
	addr: SocketAddr,
	datanets: &[u32],
	content_dir: &Path,
	page: u32,
	capacity: usize,
) -> Setup {
	let service = embedding_service();
	let index = Arc::new(RwLock::new(VectorIndex::new(service.dimensions(), capacity)));
	let config = SyncConfig {
		url: format!("ws://{addr}"),
		datanets: datanets.to_vec(),
		content_dir: content_dir.to_path_buf(),
		interval: Duration::from_secs(1),
		page,
	};
	Setup { sync: DataNetSync::new(config, service.clone(), index.clone()), index, service }
}

impl Setup {
	fn status(&self, datanet: u32) -> DataNetStatus {
		self.sync.status().datanets().into_iter().find(|s| s.datanet == datanet).unwrap()
	}

	fn ids(&self) -> Vec<String> {
		let index = self.index.read().unwrap();
		let mut ids: Vec<String> =
			(100..200).map(|i: u64| i.to_string()).filter(|id| index.get(id).is_some()).collect();
		ids.sort();
		ids
	}

	/// The id of the record most similar to `query`.
	async fn nearest(&self, query: &str) -> String {
		let tokens = self.service.model().tokenize(query, None).unwrap();
		let vector = self.service.embed(vec![tokens]).await.unwrap().pop().unwrap();
		let index = self.index.read().unwrap();
		index.search(&vector, 1, &[]).first().map(|(r, _)| r.id.clone()).unwrap_or_default()
	}
}

/// Writes `content` into the content folder under its hash.
fn store(dir: &Path, content: &[u8]) {
	store_content(dir, content).unwrap();
}

const TEXTS: [&str; 6] = [
	"The Eiffel Tower is a wrought-iron lattice tower in Paris, finished in 1889.",
	"Photosynthesis turns light, water and carbon dioxide into glucose and oxygen.",
	"Rust's borrow checker rejects programs with data races at compile time.",
	"The Nile flows north through eleven countries into the Mediterranean Sea.",
	"Sourdough bread rises with wild yeast and lactic acid bacteria.",
	"Jupiter is the largest planet in the Solar System.",
];

#[tokio::test(flavor = "multi_thread")]
async fn follows_datanets_checking_contents_and_commitments() {
	let dir = tempfile::tempdir().unwrap();
	let chain: Shared = Arc::new(Mutex::new(Chain::new("0xaa")));
	let ids: Vec<u64> = {
		let mut c = chain.lock().unwrap();
		let ids = TEXTS[..5].iter().map(|t| c.accept(0, t.as_bytes())).collect();
		c.accept(1, &[0xff, 0xfe, 0x00, 0x01]);
		ids
	};
	for text in &TEXTS[..3] {
		store(dir.path(), text.as_bytes());
	}
	// Record 3's content is missing; record 4's file holds something else.
	std::fs::write(dir.path().join(hex::encode(content_hash_of(TEXTS[4].as_bytes()))), "forged")
		.unwrap();
	store(dir.path(), &[0xff, 0xfe, 0x00, 0x01]);
	let (node, addr) = start_node(&chain, "127.0.0.1:0".parse().unwrap()).await;
	// Pages of two records: the sync reads three pages for DataNet 0.
	// DataNet 1 named twice is followed once.
	let mut s = setup(addr, &[0, 1, 9, 1], dir.path(), 2);
	assert_eq!(s.sync.status().datanets().len(), 3);

	let error = s.sync.round().await.unwrap_err();
	assert!(matches!(error, SyncError::UnknownDataNet { datanet: 9, .. }), "{error}");
	let net0 = s.status(0);
	assert_eq!((net0.accepted, net0.verified, net0.indexed), (5, 5, 3));
	let expected: Vec<[u8; 32]> =
		TEXTS[..5].iter().map(|t| content_hash_of(t.as_bytes())).collect();
	assert_eq!(net0.commitment, hex0x(&commitment_of(ids.iter().copied().zip(expected.iter()))));
	assert_eq!(net0.waiting_count, 2);
	assert_eq!(net0.waiting[0].record, ids[3]);
	assert!(net0.waiting[0].reason.contains("No such file"), "{}", net0.waiting[0].reason);
	assert_eq!(net0.waiting[0].uri, format!("ipfs://record-{}", ids[3]));
	assert!(net0.waiting[1].reason.contains("BLAKE2b"), "{}", net0.waiting[1].reason);
	assert_eq!(net0.error, None);
	let net1 = s.status(1);
	assert_eq!((net1.verified, net1.indexed, net1.skipped_count), (1, 0, 1));
	assert!(net1.skipped[0].reason.contains("not UTF-8"), "{}", net1.skipped[0].reason);
	assert!(s.status(9).error.unwrap().contains("does not exist"));
	assert_eq!(s.ids(), ids[..3].iter().map(u64::to_string).collect::<Vec<_>>());
	let indexed = s.index.read().unwrap().get(&ids[2].to_string()).cloned().unwrap();
	assert_eq!((indexed.datanet.as_str(), indexed.text.as_str()), ("0", TEXTS[2]));
	assert_eq!(s.nearest("Which tower was built in Paris in 1889?").await, ids[0].to_string());
	let mut metrics = String::new();
	s.sync.status().render_metrics(&mut metrics);
	for line in [
		"openledger_worker_datanet_sync_rounds_total 1",
		"openledger_worker_datanet_sync_failed_rounds_total 1",
		"openledger_worker_datanet_sync_connected 1",
		"openledger_worker_datanet_records_accepted{datanet=\"0\"} 5",
		"openledger_worker_datanet_records_indexed{datanet=\"0\"} 3",
		"openledger_worker_datanet_records_waiting{datanet=\"0\"} 2",
		"openledger_worker_datanet_records_skipped{datanet=\"1\"} 1",
		"openledger_worker_datanet_records_verified{datanet=\"9\"} 0",
	] {
		assert!(metrics.lines().any(|l| l == line), "{line} not in\n{metrics}");
	}
	let json = s.sync.status().to_json();
	assert_eq!(json["rounds"], json!(1));
	assert_eq!(json["connected"], json!(true));
	assert!(json["error"].as_str().unwrap().contains("DataNet 9"));
	let missing = &json["data"][0]["waiting"][0];
	assert_eq!(missing["content_hash"], json!(hex0x(&content_hash_of(TEXTS[3].as_bytes()))));

	// The missing contents arrive, the forged one is replaced, and the chain accepts another
	// record: the next round indexes all three.
	store(dir.path(), TEXTS[3].as_bytes());
	store(dir.path(), TEXTS[4].as_bytes());
	let sixth = chain.lock().unwrap().accept(0, TEXTS[5].as_bytes());
	store(dir.path(), TEXTS[5].as_bytes());
	let _ = s.sync.round().await;
	let net0 = s.status(0);
	assert_eq!((net0.accepted, net0.verified, net0.indexed, net0.waiting_count), (6, 6, 6, 0));
	assert_eq!(s.nearest("the biggest planet").await, sixth.to_string());
	assert_eq!(s.nearest("Which river flows into the Mediterranean?").await, ids[3].to_string());
	stop_node(node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_whose_commitment_does_not_follow_is_refused_with_those_after_it() {
	let dir = tempfile::tempdir().unwrap();
	let chain: Shared = Arc::new(Mutex::new(Chain::new("0xaa")));
	let ids: Vec<u64> = {
		let mut c = chain.lock().unwrap();
		TEXTS[..4].iter().map(|t| c.accept(0, t.as_bytes())).collect()
	};
	TEXTS.iter().for_each(|t| store(dir.path(), t.as_bytes()));
	chain.lock().unwrap().lie_at = Some((0, 2));
	let (node, addr) = start_node(&chain, "127.0.0.1:0".parse().unwrap()).await;
	let mut s = setup(addr, &[0], dir.path(), 10);

	let error = s.sync.round().await.unwrap_err();
	assert!(
		matches!(error, SyncError::Commitment { datanet: 0, record, index: 2 } if record == ids[2]),
		"{error}"
	);
	let net = s.status(0);
	assert_eq!((net.accepted, net.verified, net.indexed), (4, 2, 2));
	assert!(net.error.unwrap().contains("refused"));
	assert_eq!(s.ids(), ids[..2].iter().map(u64::to_string).collect::<Vec<_>>());

	// Asked again, the node lies again: still nothing past the lie.
	assert!(s.sync.round().await.is_err());
	assert_eq!(s.status(0).indexed, 2);
	// An honest node: the rest follows.
	chain.lock().unwrap().lie_at = None;
	s.sync.round().await.unwrap();
	let net = s.status(0);
	assert_eq!((net.verified, net.indexed, net.error), (4, 4, None));

	// Two more records, the second malformed (a content hash that is not one): the first is
	// kept, the second refused until the node answers properly.
	let more: Vec<u64> = {
		let mut c = chain.lock().unwrap();
		c.garble_at = Some((0, 5));
		TEXTS[4..].iter().map(|t| c.accept(0, t.as_bytes())).collect()
	};
	let error = s.sync.round().await.unwrap_err();
	assert!(matches!(error, SyncError::Rpc(RpcError::Malformed { .. })), "{error}");
	assert!(error.to_string().contains("not-a-hash"), "{error}");
	assert_eq!((s.status(0).verified, s.status(0).indexed), (5, 5));
	assert!(s.index.read().unwrap().get(&more[0].to_string()).is_some());
	chain.lock().unwrap().garble_at = None;
	s.sync.round().await.unwrap();
	assert_eq!((s.status(0).verified, s.status(0).indexed), (6, 6));
	stop_node(node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_connection_loses_nothing_and_another_chain_is_indexed_anew() {
	let dir = tempfile::tempdir().unwrap();
	TEXTS.iter().for_each(|t| store(dir.path(), t.as_bytes()));
	let chain: Shared = Arc::new(Mutex::new(Chain::new("0xaa")));
	let first: Vec<u64> = {
		let mut c = chain.lock().unwrap();
		TEXTS[..2].iter().map(|t| c.accept(0, t.as_bytes())).collect()
	};
	let (node, addr) = start_node(&chain, "127.0.0.1:0".parse().unwrap()).await;
	let mut s = setup(addr, &[0], dir.path(), 10);
	s.sync.round().await.unwrap();
	assert_eq!(s.status(0).indexed, 2);

	// The node goes away: the round fails, the index keeps what it had.
	stop_node(node).await;
	let error = s.sync.round().await.unwrap_err();
	assert!(matches!(error, SyncError::Rpc(RpcError::Call { .. })), "{error}");
	assert_eq!(s.ids(), first.iter().map(u64::to_string).collect::<Vec<_>>());
	assert_eq!(s.sync.status().to_json()["connected"], json!(false));
	assert!(s.sync.round().await.is_err());

	// It comes back with one more record: the sync reconnects and carries on.
	let third = chain.lock().unwrap().accept(0, TEXTS[2].as_bytes());
	let (node, _) = start_node(&chain, addr).await;
	s.sync.round().await.unwrap();
	let mut expected = first.clone();
	expected.push(third);
	assert_eq!(s.ids(), expected.iter().map(u64::to_string).collect::<Vec<_>>());
	assert_eq!(s.sync.status().to_json()["connected"], json!(true));

	// A node that is behind (restarted, syncing): waited for, nothing dropped.
	chain.lock().unwrap().behind = Some(1);
	let error = s.sync.round().await.unwrap_err();
	assert!(matches!(error, SyncError::Behind { datanet: 0, node: 1, indexed: 3 }), "{error}");
	assert_eq!(s.ids(), expected.iter().map(u64::to_string).collect::<Vec<_>>());
	chain.lock().unwrap().behind = None;
	s.sync.round().await.unwrap();
	assert_eq!(s.status(0).indexed, 3);

	// The same chain with its history rewritten (a node that resynced another fork, say):
	// the DataNet is indexed anew.
	{
		let mut c = chain.lock().unwrap();
		c.nets.clear();
		c.next_id = 150;
		c.accept(0, TEXTS[3].as_bytes());
	}
	s.sync.round().await.unwrap();
	assert_eq!(s.ids(), vec!["150".to_string()]);
	stop_node(node).await;

	// Another chain on the same address: what was indexed from the first one goes.
	let other: Shared = Arc::new(Mutex::new(Chain::new("0xbb")));
	let fresh: Vec<u64> = {
		let mut c = other.lock().unwrap();
		c.next_id = 170;
		TEXTS[4..].iter().map(|t| c.accept(0, t.as_bytes())).collect()
	};
	let (node, _) = start_node(&other, addr).await;
	// The client notices the dropped connection on its first call.
	if s.sync.round().await.is_err() {
		s.sync.round().await.unwrap();
	}
	assert_eq!(s.ids(), fresh.iter().map(u64::to_string).collect::<Vec<_>>());
	assert_eq!(s.status(0).verified, 2);
	stop_node(node).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_index_takes_what_fits_and_the_rest_waits() {
	let dir = tempfile::tempdir().unwrap();
	TEXTS.iter().for_each(|t| store(dir.path(), t.as_bytes()));
	let chain: Shared = Arc::new(Mutex::new(Chain::new("0xaa")));
	let ids: Vec<u64> = {
		let mut c = chain.lock().unwrap();
		TEXTS[..5].iter().map(|t| c.accept(0, t.as_bytes())).collect()
	};
	let (node, addr) = start_node(&chain, "127.0.0.1:0".parse().unwrap()).await;
	let mut s = setup_holding(addr, &[0], dir.path(), 10, 3);
	s.sync.round().await.unwrap();
	let net = s.status(0);
	assert_eq!((net.verified, net.indexed, net.waiting_count), (5, 3, 2));
	assert_eq!(s.ids(), ids[..3].iter().map(u64::to_string).collect::<Vec<_>>());
	assert!(net.waiting[0].reason.contains("index is full"), "{}", net.waiting[0].reason);
	// The next round embeds nothing: the index still has no room.
	let embedded = s.service.stats().inputs.load(Ordering::Relaxed);
	s.sync.round().await.unwrap();
	assert_eq!(s.service.stats().inputs.load(Ordering::Relaxed), embedded);
	let net = s.status(0);
	assert_eq!((net.indexed, net.waiting_count), (3, 2));
	stop_node(node).await;
}
