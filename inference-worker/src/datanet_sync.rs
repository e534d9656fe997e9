//! DataNet records from the chain: the worker follows the DataNets it serves on a node's
//! JSON-RPC (`datanets_*`, see `node/src/registry_rpc/datanets.rs`) and keeps their accepted
//! records in the retrieval index ([`crate::retrieval`]), each under its on-chain record id.
//!
//! The node is the worker's view of the chain (run your own, or one you trust): what it
//! answers is not checked against finality proofs. What the sync does check is that its answers
//! agree with each other and with the runtime's rules, and that every content is the one the
//! chain names. Every round reads the chain at its last finalized block (so nothing indexed is
//! rolled back) and, for each DataNet:
//! - checks that the chain still holds the history already indexed: its commitment at the
//!   number of records indexed must equal ours. A node that is only behind (its DataNet has
//!   fewer records, with the commitment we had at that many) is waited for; a different
//!   history (say, the node now follows another chain) drops the DataNet's records, which are
//!   read again from the start;
//! - reads the records accepted since, a page at a time, and recomputes the DataNet's
//!   commitment over them ([`openledger_primitives::next_commitment`], as the runtime does): a
//!   record whose commitment does not follow from the ones before it and its content hash, or
//!   that is malformed, is refused with every record after it (those before it are kept);
//! - takes each record's content from the content folder, where it lies under its content hash
//!   (`<folder>/<64 hex digits>`, however the operator fetched it from the record's URI), and
//!   indexes it only if its BLAKE2b-256 hash is the one on chain;
//! - tries again, once a round, the records whose content was missing or wrong, or that found
//!   the index full.
//!
//! Records are accepted on chain for good (a DataNet with accepted records cannot be
//! destroyed), so the index only grows. A dropped connection or a failing node loses nothing:
//! the round fails, says why in the status ([`SyncStatus`], served at `GET /v1/datanets`), and
//! the next one reconnects and carries on from where the last one stopped.

use std::{
	collections::{BTreeMap, BTreeSet},
	io::Read,
	path::{Path, PathBuf},
	sync::{Arc, Mutex, RwLock},
	time::Duration,
};

use jsonrpsee::{rpc_params, ws_client::WsClient};
use openledger_primitives::{
	content_hash_of, next_commitment, ContentHash, DataNetId, RecordId, EMPTY_COMMITMENT, MAX_PAGE,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
	chain_rpc::{call, connect, hash_field, RpcError},
	embedding_service::EmbeddingService,
	retrieval::{add_records, Record, VectorIndex, MAX_RECORD_BYTES},
};

/// The most records embedded in one request to the embedding service.
const EMBED_CHUNK: usize = 256;
/// The most waiting or skipped records listed in the status (all are counted).
const LISTED: usize = 100;

/// What to follow, and where.
#[derive(Clone, Debug)]
pub struct SyncConfig {
	/// The node's WebSocket JSON-RPC endpoint (`ws://127.0.0.1:9944`).
	pub url: String,
	/// The DataNets whose accepted records are served.
	pub datanets: Vec<DataNetId>,
	/// The folder holding records' contents, each named by its content hash in hex.
	pub content_dir: PathBuf,
	/// How long to wait between rounds.
	pub interval: Duration,
	/// Records asked for per RPC call (at most [`MAX_PAGE`]).
	pub page: u32,
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
	/// The node could not be reached, refused a call or answered something malformed (a
	/// record out of place, a hash that is not one, a commitment that is not the records').
	#[error(transparent)]
	Rpc(#[from] RpcError),
	/// The DataNet is not on chain (not created yet, or a wrong id).
	#[error("DataNet {datanet} does not exist at finalized block {block}")]
	UnknownDataNet {
		/// The DataNet.
		datanet: DataNetId,
		/// The block read.
		block: String,
	},
	/// The node's finalized chain holds fewer of the DataNet's records than were indexed, with
	/// the commitment the worker had at that many: the node is behind (syncing, restarted).
	#[error(
		"DataNet {datanet}: the node has {node} accepted records at its finalized block, {indexed} 		 were checked already: waiting for it to catch up"
	)]
	Behind {
		/// The DataNet.
		datanet: DataNetId,
		/// Its accepted records on the node.
		node: u64,
		/// Those checked already.
		indexed: u64,
	},
	/// A record's place in the DataNet's commitment chain is not what the node says.
	#[error(
		"DataNet {datanet}: the commitment after record {record} (accepted record {index}) is \
		 not the one the records before it and its content hash give: refused with every \
		 record after it"
	)]
	Commitment {
		/// The DataNet.
		datanet: DataNetId,
		/// The record.
		record: RecordId,
		/// Its position among the DataNet's accepted records.
		index: u64,
	},
}

/// A record whose content is not indexed, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unindexed {
	/// The record's id on chain.
	pub record: RecordId,
	/// Where its content lives, as registered.
	pub uri: String,
	/// Its content hash (`0x` and 64 hex digits in the status): the file name in the content
	/// folder.
	#[serde(serialize_with = "serialize_hash")]
	pub content_hash: [u8; 32],
	/// Why it is not in the index.
	pub reason: String,
	#[serde(skip)]
	size: u64,
}

/// A hash as `0x` and hex digits.
fn serialize_hash<S: serde::Serializer>(hash: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
	serializer.serialize_str(&hex0x(hash))
}

/// How far a DataNet is synced.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DataNetStatus {
	/// The DataNet's id.
	pub datanet: DataNetId,
	/// Its accepted records on chain, at the block last read.
	pub accepted: u64,
	/// Accepted records whose place in the commitment chain was checked.
	pub verified: u64,
	/// Records in the retrieval index.
	pub indexed: u64,
	/// The commitment over the verified records (`0x` and hex).
	pub commitment: String,
	/// The finalized block last read (`0x` and hex).
	pub block: Option<String>,
	/// Records whose content was missing or wrong: tried again every round.
	pub waiting: Vec<Unindexed>,
	/// How many are waiting (the list shows the first 100).
	pub waiting_count: usize,
	/// Records whose content was right but cannot be served (too large, not text): for good.
	pub skipped: Vec<Unindexed>,
	/// How many are skipped (the list shows the first 100).
	pub skipped_count: usize,
	/// Why the last round stopped short for this DataNet, if it did.
	pub error: Option<String>,
}

/// The sync's state as the API shows it (`GET /v1/datanets`).
#[derive(Debug, Default)]
pub struct SyncStatus {
	inner: Mutex<StatusInner>,
}

#[derive(Clone, Debug, Default, Serialize)]
struct StatusInner {
	url: String,
	connected: bool,
	rounds: u64,
	failed_rounds: u64,
	error: Option<String>,
	datanets: Vec<DataNetStatus>,
}

impl SyncStatus {
	/// The status as JSON: the node, whether it is connected, rounds run, the last round's
	/// error and each DataNet's [`DataNetStatus`].
	pub fn to_json(&self) -> Value {
		let inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
		serde_json::json!({
			"object": "list",
			"chain": inner.url,
			"connected": inner.connected,
			"rounds": inner.rounds,
			"error": inner.error,
			"data": inner.datanets,
		})
	}

	/// Appends the sync's Prometheus metrics to `text`: rounds run and failed, whether the node
	/// is connected, and each DataNet's records accepted, verified, indexed, waiting and
	/// skipped (labelled `datanet`).
	pub fn render_metrics(&self, text: &mut String) {
		let inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
		let name = |metric: &str| format!("openledger_worker_datanet_{metric}");
		for (metric, kind, help, value) in [
			("sync_rounds_total", "counter", "DataNet sync rounds run.", inner.rounds),
			(
				"sync_failed_rounds_total",
				"counter",
				"DataNet sync rounds that failed.",
				inner.failed_rounds,
			),
			(
				"sync_connected",
				"gauge",
				"Whether the node is connected (1) or not (0).",
				u64::from(inner.connected),
			),
		] {
			let metric = name(metric);
			text.push_str(&format!(
				"# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {value}\n"
			));
		}
		type Field = fn(&DataNetStatus) -> u64;
		let per_datanet: [(&str, &str, Field); 5] = [
			("records_accepted", "Accepted records on chain at the block last read.", |d| {
				d.accepted
			}),
			("records_verified", "Accepted records checked against the commitment.", |d| {
				d.verified
			}),
			("records_indexed", "Records in the retrieval index.", |d| d.indexed),
			("records_waiting", "Records waiting for their content or room.", |d| {
				d.waiting_count as u64
			}),
			("records_skipped", "Records that cannot be served as documents.", |d| {
				d.skipped_count as u64
			}),
		];
		for (metric, help, field) in per_datanet {
			let metric = name(metric);
			text.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} gauge\n"));
			for net in &inner.datanets {
				text.push_str(&format!("{metric}{{datanet=\"{}\"}} {}\n", net.datanet, field(net)));
			}
		}
	}

	/// Replaces the status of `net`'s DataNet (progress within a round).
	fn publish(&self, net: DataNetStatus) {
		let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
		if let Some(entry) = inner.datanets.iter_mut().find(|d| d.datanet == net.datanet) {
			*entry = net;
		}
	}

	/// The DataNets' statuses.
	pub fn datanets(&self) -> Vec<DataNetStatus> {
		self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).datanets.clone()
	}
}

/// One DataNet's progress.
#[derive(Debug)]
struct DataNetState {
	id: DataNetId,
	/// The commitment after each accepted record checked, in acceptance order.
	commitments: Vec<[u8; 32]>,
	accepted: u64,
	block: Option<String>,
	indexed: BTreeSet<RecordId>,
	waiting: BTreeMap<RecordId, Unindexed>,
	skipped: BTreeMap<RecordId, Unindexed>,
	error: Option<String>,
}

impl DataNetState {
	fn new(id: DataNetId) -> Self {
		Self {
			id,
			commitments: Vec::new(),
			accepted: 0,
			block: None,
			indexed: BTreeSet::new(),
			waiting: BTreeMap::new(),
			skipped: BTreeMap::new(),
			error: None,
		}
	}

	/// Accepted records checked.
	fn verified(&self) -> u64 {
		self.commitments.len() as u64
	}

	/// The commitment after the first `records` checked.
	fn commitment_at(&self, records: u64) -> Option<[u8; 32]> {
		match records {
			0 => Some(EMPTY_COMMITMENT),
			n => self.commitments.get(usize::try_from(n - 1).ok()?).copied(),
		}
	}

	/// The commitment over every record checked.
	fn commitment(&self) -> [u8; 32] {
		self.commitments.last().copied().unwrap_or(EMPTY_COMMITMENT)
	}

	fn status(&self) -> DataNetStatus {
		DataNetStatus {
			datanet: self.id,
			accepted: self.accepted,
			verified: self.verified(),
			indexed: self.indexed.len() as u64,
			commitment: hex0x(&self.commitment()),
			block: self.block.clone(),
			waiting: self.waiting.values().take(LISTED).cloned().collect(),
			waiting_count: self.waiting.len(),
			skipped: self.skipped.values().take(LISTED).cloned().collect(),
			skipped_count: self.skipped.len(),
			error: self.error.clone(),
		}
	}
}

/// A DataNet as `datanets_getDataNet` returns it (the fields read here).
#[derive(Debug, Deserialize)]
struct RpcDataNet {
	version: u64,
	commitment: String,
}

/// An accepted record as `datanets_acceptedRecords` returns it (the fields read here).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RpcRecord {
	id: RecordId,
	datanet: DataNetId,
	content_hash: String,
	uri: String,
	size: u64,
	status: Value,
	commitment: String,
}

/// `datanets_commitment`'s answer.
#[derive(Debug, Deserialize)]
struct RpcCommitment {
	commitment: String,
}

/// Follows DataNets on a node and keeps their records in a retrieval index.
pub struct DataNetSync {
	config: SyncConfig,
	service: Arc<EmbeddingService>,
	index: Arc<RwLock<VectorIndex>>,
	client: Option<WsClient>,
	/// The genesis hash of the chain indexed.
	genesis: Option<String>,
	nets: Vec<DataNetState>,
	status: Arc<SyncStatus>,
}

impl DataNetSync {
	/// A sync of `config.datanets` into `index`, embedding with `service`; nothing is read
	/// until [`Self::round`] or [`Self::run`].
	pub fn new(
		config: SyncConfig,
		service: Arc<EmbeddingService>,
		index: Arc<RwLock<VectorIndex>>,
	) -> Self {
		let mut ids = config.datanets.clone();
		ids.sort_unstable();
		ids.dedup();
		let nets: Vec<DataNetState> = ids.into_iter().map(DataNetState::new).collect();
		let status = Arc::new(SyncStatus::default());
		{
			let mut inner = status.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
			inner.url = config.url.clone();
			inner.datanets = nets.iter().map(DataNetState::status).collect();
		}
		Self { config, service, index, client: None, genesis: None, nets, status }
	}

	/// The status the sync keeps up to date.
	pub fn status(&self) -> Arc<SyncStatus> {
		self.status.clone()
	}

	/// Runs a round every [`SyncConfig::interval`], for ever; a failed round is logged and the
	/// next one tries again.
	pub async fn run(mut self) {
		loop {
			if let Err(error) = self.round().await {
				tracing::warn!(%error, chain = %self.config.url, "DataNet sync");
			}
			tokio::time::sleep(self.config.interval).await;
		}
	}

	/// One round: every DataNet brought up to the chain's last finalized block. Returns the
	/// first error (the other DataNets are still synced when one fails).
	pub async fn round(&mut self) -> Result<(), SyncError> {
		let result = self.round_inner().await;
		let mut inner = self.status.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
		inner.rounds += 1;
		inner.failed_rounds += u64::from(result.is_err());
		inner.connected = self.client.as_ref().is_some_and(WsClient::is_connected);
		inner.error = result.as_ref().err().map(ToString::to_string);
		inner.datanets = self.nets.iter().map(DataNetState::status).collect();
		result
	}

	/// Connects to the node; if it follows another chain than the one indexed, forgets what
	/// was indexed.
	async fn connect(&mut self) -> Result<WsClient, SyncError> {
		let client = connect(&self.config.url, Duration::from_secs(60)).await?;
		let genesis: String = call(&client, "chain_getBlockHash", rpc_params![0]).await?;
		if self.genesis.as_ref().is_some_and(|known| *known != genesis) {
			tracing::warn!(%genesis, "the node follows another chain: indexing its DataNets anew");
			for net in &mut self.nets {
				drop_indexed(&self.index, net);
			}
		}
		self.genesis = Some(genesis);
		Ok(client)
	}

	async fn round_inner(&mut self) -> Result<(), SyncError> {
		let client = match self.client.take() {
			Some(client) if client.is_connected() => client,
			_ => self.connect().await?,
		};
		let client = &*self.client.insert(client);
		let head: String = call(client, "chain_getFinalizedHead", rpc_params![]).await?;
		let mut first_error = None;
		for net in &mut self.nets {
			let result = sync_datanet(
				client,
				&self.config,
				&self.service,
				&self.index,
				&self.status,
				net,
				&head,
			)
			.await;
			net.error = result.as_ref().err().map(ToString::to_string);
			if let Err(error) = result {
				first_error.get_or_insert(error);
			}
		}
		first_error.map_or(Ok(()), Err)
	}
}

/// Brings one DataNet up to block `head`.
async fn sync_datanet(
	client: &WsClient,
	config: &SyncConfig,
	service: &EmbeddingService,
	index: &RwLock<VectorIndex>,
	status: &SyncStatus,
	net: &mut DataNetState,
	head: &str,
) -> Result<(), SyncError> {
	let id = net.id;
	let Some(chain_net) =
		call::<Option<RpcDataNet>>(client, "datanets_getDataNet", rpc_params![id, head]).await?
	else {
		return Err(SyncError::UnknownDataNet { datanet: id, block: head.to_string() });
	};
	let chain_commitment = hash_field("datanets_getDataNet", "commitment", &chain_net.commitment)?;
	// The history indexed must still be the chain's.
	if chain_net.version < net.verified() {
		if net.commitment_at(chain_net.version) == Some(chain_commitment) {
			return Err(SyncError::Behind {
				datanet: id,
				node: chain_net.version,
				indexed: net.verified(),
			});
		}
		tracing::warn!(datanet = id, "the chain holds other records than those indexed: anew");
		drop_indexed(index, net);
	} else if net.verified() > 0 {
		let theirs: Option<RpcCommitment> =
			call(client, "datanets_commitment", rpc_params![id, net.verified(), head]).await?;
		let theirs = match theirs {
			Some(c) => Some(hash_field("datanets_commitment", "commitment", &c.commitment)?),
			None => None,
		};
		if theirs != Some(net.commitment()) {
			tracing::warn!(datanet = id, "the chain holds other records than those indexed: anew");
			drop_indexed(index, net);
		}
	}
	net.block = Some(head.to_string());
	net.accepted = chain_net.version;
	// Only the records that waited before this round are tried again in it.
	let retry: Vec<Unindexed> = std::mem::take(&mut net.waiting).into_values().collect();
	let method = "datanets_acceptedRecords";
	let page = config.page.clamp(1, MAX_PAGE);
	let mut refused = None;
	while net.verified() < chain_net.version && refused.is_none() {
		let records: Vec<RpcRecord> =
			call(client, method, rpc_params![id, net.verified(), page, head]).await?;
		if records.is_empty() {
			refused = Some(
				RpcError::malformed(
					method,
					format!(
						"no records from position {} of the {} accepted",
						net.verified(),
						chain_net.version
					),
				)
				.into(),
			);
			break;
		}
		let mut fresh = Vec::with_capacity(records.len());
		let left = usize::try_from(chain_net.version - net.verified()).unwrap_or(usize::MAX);
		for record in records.into_iter().take(left) {
			match check_record(net, record) {
				Ok(checked) => fresh.push(checked),
				Err(error) => {
					refused = Some(error);
					break;
				}
			}
		}
		index_records(config, service, index, net, fresh).await;
		status.publish(net.status());
	}
	index_records(config, service, index, net, retry).await;
	if let Some(error) = refused {
		return Err(error);
	}
	if net.commitment() != chain_commitment {
		return Err(RpcError::malformed(
			"datanets_getDataNet",
			format!(
				"DataNet {id}'s commitment {} is not {}, the one over its {} accepted records",
				chain_net.commitment,
				hex0x(&net.commitment()),
				net.verified()
			),
		)
		.into());
	}
	Ok(())
}

/// Checks that `record` is `net`'s next accepted record and that its commitment follows; if so
/// takes it as checked.
fn check_record(net: &mut DataNetState, record: RpcRecord) -> Result<Unindexed, SyncError> {
	let method = "datanets_acceptedRecords";
	let position = net.verified();
	if record.datanet != net.id || record.status != serde_json::json!({ "accepted": position }) {
		return Err(RpcError::malformed(
			method,
			format!(
				"record {} is in DataNet {} with status {}, not accepted record {position} of \
				 DataNet {}",
				record.id, record.datanet, record.status, net.id
			),
		)
		.into());
	}
	let hash = hash_field(method, "contentHash", &record.content_hash)?;
	let next = next_commitment(&net.commitment(), position, record.id, &hash);
	if next != hash_field(method, "commitment", &record.commitment)? {
		return Err(SyncError::Commitment { datanet: net.id, record: record.id, index: position });
	}
	net.commitments.push(next);
	Ok(Unindexed {
		record: record.id,
		uri: record.uri,
		content_hash: hash,
		reason: String::new(),
		size: record.size,
	})
}

/// Fetches, checks and indexes `records` of `net`; those that fail wait or are skipped.
async fn index_records(
	config: &SyncConfig,
	service: &EmbeddingService,
	index: &RwLock<VectorIndex>,
	net: &mut DataNetState,
	records: Vec<Unindexed>,
) {
	if records.is_empty() {
		return;
	}
	// Files read off the async runtime's threads.
	let dir = config.content_dir.clone();
	let batch = records.clone();
	let read = tokio::task::spawn_blocking(move || {
		let contents: Vec<_> = batch.iter().map(|record| read_content(&dir, record)).collect();
		contents
	})
	.await;
	let read: Vec<(Unindexed, Result<String, Unreadable>)> = match read {
		Ok(contents) => records.into_iter().zip(contents).collect(),
		Err(error) => {
			tracing::error!(%error, "reading DataNet contents");
			let reason = format!("reading its content failed: {error}");
			records.into_iter().map(|r| (r, Err(Unreadable::Missing(reason.clone())))).collect()
		}
	};
	let mut ready = Vec::new();
	for (mut record, content) in read {
		match content {
			Ok(text) => ready.push((record, text)),
			Err(Unreadable::Missing(reason)) => {
				record.reason = reason;
				net.waiting.insert(record.record, record);
			}
			Err(Unreadable::Unservable(reason)) => {
				record.reason = reason;
				net.skipped.insert(record.record, record);
			}
		}
	}
	// No embedding for what the index has no room for.
	let (capacity, held) = {
		let held = index.read().unwrap_or_else(|poisoned| poisoned.into_inner());
		(held.capacity(), held.len())
	};
	let room = capacity.saturating_sub(held);
	if ready.len() > room {
		for (mut record, _) in ready.drain(room..) {
			record.reason = format!("the retrieval index is full (--max-records {capacity})");
			net.waiting.insert(record.record, record);
		}
	}
	while !ready.is_empty() {
		let chunk: Vec<(Unindexed, String)> = ready.drain(..ready.len().min(EMBED_CHUNK)).collect();
		let entries: Vec<Record> = chunk
			.iter()
			.map(|(r, text)| Record {
				id: r.record.to_string(),
				datanet: net.id.to_string(),
				text: text.clone(),
			})
			.collect();
		match add_records(service, index, entries.clone()).await {
			Ok(_) => net.indexed.extend(chunk.iter().map(|(r, _)| r.record)),
			// All or none failed: one by one, so that only the records that fail wait.
			Err(_) if chunk.len() > 1 => {
				for ((mut record, _), entry) in chunk.into_iter().zip(entries) {
					match add_records(service, index, vec![entry]).await {
						Ok(_) => {
							net.indexed.insert(record.record);
						}
						Err(error) => {
							tracing::warn!(datanet = net.id, record = record.record, %error, "indexing a DataNet record");
							record.reason = format!("indexing failed: {error}");
							net.waiting.insert(record.record, record);
						}
					}
				}
			}
			Err(error) => {
				tracing::warn!(datanet = net.id, %error, "indexing a DataNet record");
				for (mut record, _) in chunk {
					record.reason = format!("indexing failed: {error}");
					net.waiting.insert(record.record, record);
				}
			}
		}
	}
}

/// Why a record's content is not indexed.
enum Unreadable {
	/// Not in the content folder, or not the content hashed on chain: tried again later.
	Missing(String),
	/// The right content, but not servable as a document.
	Unservable(String),
}

/// The most bytes read of a content file: a file larger than this is not the content of any
/// record that can be served, and is not hashed.
const MAX_CONTENT_FILE: u64 = 1 << 20;

/// The record's content from the content folder `dir`, checked against its hash on chain, as
/// text.
fn read_content(dir: &Path, record: &Unindexed) -> Result<String, Unreadable> {
	let limit = MAX_RECORD_BYTES as u64;
	if record.size > limit {
		return Err(Unreadable::Unservable(format!(
			"{} bytes on chain, more than a document holds ({MAX_RECORD_BYTES})",
			record.size
		)));
	}
	let path = dir.join(hex::encode(record.content_hash));
	let mut bytes = Vec::new();
	std::fs::File::open(&path)
		.and_then(|file| file.take(MAX_CONTENT_FILE + 1).read_to_end(&mut bytes))
		.map_err(|e| Unreadable::Missing(format!("{}: {e}", path.display())))?;
	if bytes.len() as u64 > MAX_CONTENT_FILE || content_hash_of(&bytes) != record.content_hash {
		return Err(Unreadable::Missing(format!(
			"{} is not the content hashed on chain (its BLAKE2b-256 differs)",
			path.display()
		)));
	}
	if bytes.len() as u64 > limit {
		return Err(Unreadable::Unservable(format!(
			"its content has {} bytes (the chain says {}), more than a document holds \
			 ({MAX_RECORD_BYTES})",
			bytes.len(),
			record.size
		)));
	}
	if bytes.len() as u64 != record.size {
		tracing::debug!(
			record = record.record,
			size = record.size,
			actual = bytes.len(),
			"a record's size on chain is not its content's"
		);
	}
	let text = String::from_utf8(bytes)
		.map_err(|_| Unreadable::Unservable("its content is not UTF-8 text".into()))?;
	if text.trim().is_empty() {
		return Err(Unreadable::Unservable("its content is blank".into()));
	}
	Ok(text)
}

/// Writes `content` into the content folder `dir` (made if missing) under its content hash,
/// where the sync reads it; returns the hash and the file's path. The file appears whole or
/// not at all.
pub fn store_content(dir: &Path, content: &[u8]) -> std::io::Result<(ContentHash, PathBuf)> {
	std::fs::create_dir_all(dir)?;
	let hash = content_hash_of(content);
	let name = hex::encode(hash);
	let path = dir.join(&name);
	let partial = dir.join(format!(".{name}.partial"));
	std::fs::write(&partial, content)?;
	std::fs::rename(&partial, &path)?;
	Ok((hash, path))
}

/// Removes `net`'s records from the index and forgets its progress.
fn drop_indexed(index: &RwLock<VectorIndex>, net: &mut DataNetState) {
	let mut held = index.write().unwrap_or_else(|poisoned| poisoned.into_inner());
	for record in &net.indexed {
		held.remove(&record.to_string());
	}
	drop(held);
	*net = DataNetState::new(net.id);
}

/// `0x` and the hex digits of `bytes`.
fn hex0x(bytes: &[u8]) -> String {
	format!("0x{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
	use super::*;

	fn record(dir: &std::path::Path, content: &[u8], size: u64) -> (SyncConfig, Unindexed) {
		let config = SyncConfig {
			url: String::new(),
			datanets: vec![],
			content_dir: dir.to_path_buf(),
			interval: Duration::from_secs(1),
			page: 10,
		};
		let hash = content_hash_of(content);
		let record = Unindexed {
			record: 7,
			uri: "ipfs://x".into(),
			content_hash: hash,
			reason: String::new(),
			size,
		};
		(config, record)
	}

	#[test]
	fn content_is_read_by_hash_and_checked() {
		let dir = tempfile::tempdir().unwrap();
		let text = "Rust was first released in 2015.";
		let (config, rec) = record(dir.path(), text.as_bytes(), text.len() as u64);
		assert!(matches!(read_content(&config.content_dir, &rec), Err(Unreadable::Missing(_))));
		let path = dir.path().join(hex::encode(rec.content_hash));
		std::fs::write(&path, "something else").unwrap();
		match read_content(&config.content_dir, &rec) {
			Err(Unreadable::Missing(reason)) => assert!(reason.contains("BLAKE2b"), "{reason}"),
			_ => panic!("wrong content accepted"),
		}
		std::fs::write(&path, text).unwrap();
		assert_eq!(read_content(&config.content_dir, &rec).ok().as_deref(), Some(text));
	}

	#[test]
	fn stored_content_is_found_by_the_sync() {
		let dir = tempfile::tempdir().unwrap();
		let folder = dir.path().join("content");
		let text = "Stored under its hash.";
		let (hash, path) = store_content(&folder, text.as_bytes()).unwrap();
		let (config, rec) = record(&folder, text.as_bytes(), text.len() as u64);
		assert_eq!((hash, path), (rec.content_hash, folder.join(hex::encode(rec.content_hash))));
		assert_eq!(read_content(&config.content_dir, &rec).ok().as_deref(), Some(text));
		assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 1, "no partial file left");
	}

	#[test]
	fn content_that_cannot_be_a_document_is_skipped() {
		let dir = tempfile::tempdir().unwrap();
		let (config, rec) = record(dir.path(), b"x", MAX_RECORD_BYTES as u64 + 1);
		assert!(matches!(read_content(&config.content_dir, &rec), Err(Unreadable::Unservable(_))));
		let binary = [0xffu8, 0xfe, 0x00];
		let (config, rec) = record(dir.path(), &binary, 3);
		std::fs::write(dir.path().join(hex::encode(rec.content_hash)), binary).unwrap();
		assert!(matches!(read_content(&config.content_dir, &rec), Err(Unreadable::Unservable(_))));
		// Declared small on chain, but the content with that hash is too large.
		let large = "a".repeat(MAX_RECORD_BYTES + 1);
		let (config, rec) = record(dir.path(), large.as_bytes(), 100);
		std::fs::write(dir.path().join(hex::encode(rec.content_hash)), &large).unwrap();
		match read_content(&config.content_dir, &rec) {
			Err(Unreadable::Unservable(reason)) => {
				assert!(reason.contains("8193 bytes"), "{reason}")
			}
			_ => panic!("a content too large was not skipped"),
		}
		let (config, rec) = record(dir.path(), b" \n ", 3);
		std::fs::write(dir.path().join(hex::encode(rec.content_hash)), b" \n ").unwrap();
		assert!(matches!(read_content(&config.content_dir, &rec), Err(Unreadable::Unservable(_))));
	}
}
