//! Adapters from the chain's model registry (`pallet-adapters`): a request may name a LoRA
//! adapter registered on chain as its model, `"model": "chain:7"` (adapter 7). The worker reads
//! the adapter and its base model through the node's `adapters_*` RPC at the node's last
//! finalized block and serves it only if:
//! - it is registered and not retired;
//! - its base model is the one this worker serves: the base model's weights hash on chain is
//!   the SHA-256 (as Hugging Face and PyPI publish it) or the BLAKE2b-256 of the served weights
//!   file (the GGUF file, or a folder's `model.safetensors`);
//! - its files are in the content folder, `DIR/<content hash in hex>/adapter_config.json` and
//!   `adapter_model.safetensors`, and hash to its content hash on chain
//!   ([`openledger_primitives::adapter_content_hash`]);
//! - they are what the owner declared: the weights' ranks (the rows of each `lora_A`) are the
//!   rank on chain, and the projections they adapt are the target modules on chain;
//! - they build for the served model.
//!
//! It is then served as any adapter: loaded when a request needs it, evicted when others need
//! the room. Each request reads the chain again (the finalized head, the adapter and its base
//! model; the head's number too when the head has moved since it was last asked), so a
//! retirement or a new price applies from the next finalized block on; the files are examined
//! once (what was wrong with them too), and again only when one of them changes (its size,
//! modification time, inode or change time). The engine is given the content hash with the
//! folder ([`crate::lora::AdapterSource`]) and checks the files against it whenever it reads
//! them from disk (files it holds in memory were hashed once, when read), so nothing but the
//! files hashed on chain is served under the adapter's id: files changed since they were
//! checked fail the request with [`crate::Error::AdapterChanged`]. Requests looking an
//! adapter up at once settle what they found in the order of the blocks they read
//! ([`Verdicts`]).

use std::{
	collections::HashMap,
	io::Read,
	path::{Path, PathBuf},
	sync::{Arc, Mutex},
};

use blake2::{digest::consts::U32, Blake2b};
use jsonrpsee::rpc_params;
use openledger_primitives::{adapter_content_hash, AdapterId, BaseModelId, ContentHash, DataNetId};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::{
	chain_rpc::{call, finalized_head, hash_field, Node, RpcError},
	lora::{read_adapter_files, AdapterFiles, FilesStamp, Projection},
};

/// How a request names an adapter registered on chain: `chain:` and its id.
pub const PREFIX: &str = "chain:";

/// The adapter id a model name names on chain (`chain:7`), if it is such a name; an error if it
/// starts so but is no id.
pub fn chain_id(model: &str) -> Option<Result<AdapterId, AdapterError>> {
	let id = model.strip_prefix(PREFIX)?;
	// Written as the answer writes it back: no sign, no leading zero.
	let parsed = id.parse::<AdapterId>().ok().filter(|parsed| parsed.to_string() == id);
	Some(parsed.ok_or_else(|| {
		AdapterError::Name(format!(
			"{model:?}: {PREFIX} is followed by an adapter's id on chain, in decimal"
		))
	}))
}

/// Refuses `name` where the operator or a client names an adapter, or the served model:
/// names that begin [`PREFIX`] are the adapters registered on chain.
pub fn unreserved(name: &str) -> Result<(), String> {
	match name.starts_with(PREFIX) {
		true => Err(format!(
			"{name:?}: names that begin {PREFIX:?} are the adapters registered on chain"
		)),
		false => Ok(()),
	}
}

/// An adapter registered on chain, checked and ready to serve.
#[derive(Clone, Debug, PartialEq)]
pub struct RegisteredAdapter {
	/// Its id on chain.
	pub id: AdapterId,
	/// Its owner (SS58), paid for its use.
	pub owner: String,
	/// Its name on chain.
	pub name: String,
	/// The content hash of its files.
	pub content_hash: ContentHash,
	/// What 1,000 generated tokens cost, in the smallest unit of OPEN (a decimal string).
	pub price_per_1k_tokens: String,
	/// The DataNets it was trained on, each with its share of the training in parts per
	/// billion.
	pub datanets: Vec<(DataNetId, u32)>,
	/// The finalized block it was read at.
	pub block: String,
	/// The folder holding its files.
	pub dir: PathBuf,
}

/// Why an adapter registered on chain cannot be served.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AdapterError {
	/// The worker does not follow a chain (`serve --chain`).
	#[error(
		"model: this worker does not follow a chain (serve --chain --content-dir), so it serves \
		 no adapters registered on chain"
	)]
	NoChain,
	/// The name is not `chain:` and an id.
	#[error("model: {0}")]
	Name(String),
	/// The node could not be reached, refused a call or answered something malformed.
	#[error("model: the chain could not be read: {0}")]
	Chain(#[from] RpcError),
	/// No such adapter at the finalized block.
	#[error(
		"the model \"{PREFIX}{0}\" does not exist: no adapter {0} is registered on chain (at its \
		 last finalized block)"
	)]
	NotFound(AdapterId),
	/// Its owner retired it.
	#[error("the model \"{PREFIX}{0}\" is no longer served: adapter {0} is retired by its owner")]
	Retired(AdapterId),
	/// It adapts another base model than the one served.
	#[error(
		"model: adapter {id} adapts base model {base_model} ({base}), not the model this worker \
		 serves ({ours})"
	)]
	OtherBase {
		/// The adapter.
		id: AdapterId,
		/// Its base model.
		base_model: BaseModelId,
		/// The base model as the chain names it (name and weights hash).
		base: String,
		/// The model served (its file's hashes).
		ours: String,
	},
	/// The served model's weights cannot be hashed (to be compared with a base model's): this
	/// worker serves no adapter registered on chain now.
	#[error("model: this worker serves no adapters registered on chain: {0}")]
	Weights(String),
	/// Its files are not in the content folder, or are not the files hashed on chain.
	#[error("model: the files of adapter {id}: {reason}")]
	Content {
		/// The adapter.
		id: AdapterId,
		/// What is wrong.
		reason: String,
	},
	/// Its files are the ones hashed on chain but not what its owner declared (rank, target
	/// modules), or not an adapter this worker can build: no worker can serve it as registered.
	#[error("model: adapter {id} cannot be served as registered: {reason}")]
	Unservable {
		/// The adapter.
		id: AdapterId,
		/// What is wrong.
		reason: String,
	},
}

impl AdapterError {
	/// Whether the request is at fault (a client error) rather than the chain or the worker.
	pub fn is_request_error(&self) -> bool {
		matches!(
			self,
			Self::NoChain
				| Self::Name(_)
				| Self::NotFound(_)
				| Self::Retired(_)
				| Self::OtherBase { .. }
		)
	}

	/// Whether the adapter is not to be served (nor listed) now, if it was: it is gone from the
	/// chain, is for another model, or its files are no longer what the chain names.
	pub fn is_gone(&self) -> bool {
		matches!(
			self,
			Self::NotFound(_)
				| Self::Retired(_)
				| Self::OtherBase { .. }
				| Self::Content { .. }
				| Self::Unservable { .. }
		)
	}
}

/// An adapter as `adapters_getAdapter` answers it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdapterInfo {
	owner: String,
	base_model: BaseModelId,
	name: String,
	content_hash: String,
	rank: u32,
	target_modules: Vec<String>,
	price_per_1k_tokens: String,
	datanets: Vec<TrainedOn>,
	retired: bool,
}

/// A DataNet an adapter was trained on, as `adapters_getAdapter` answers it.
#[derive(Debug, Deserialize)]
struct TrainedOn {
	datanet: DataNetId,
	weight: u32,
}

/// A base model as `adapters_getBaseModel` answers it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BaseModelInfo {
	name: String,
	weights_hash: String,
}

/// The served weights file's hashes.
#[derive(Clone, Copy, Debug)]
struct WeightsHashes {
	sha256: [u8; 32],
	blake2: [u8; 32],
}

/// What an adapter's weights say of it: the ranks of its modules and the projections it adapts
/// ([`AdapterFiles::outline`]).
type Outline = (Vec<usize>, Vec<Projection>);

/// Builds an adapter's files (its name, the files) for the served model, as serving them would,
/// or says why they cannot be.
pub type Build = Arc<dyn Fn(&str, &AdapterFiles) -> Result<(), String> + Send + Sync>;

/// What the files of an adapter were found to be.
#[derive(Clone, Debug)]
enum Found {
	/// The files hashed, built for the served model; what their weights say.
	Good(Outline),
	/// Not the files hashed: why.
	Wrong(String),
	/// The files hashed, which no worker can serve: why.
	Unservable(String),
}

/// What the folders of adapters' files were found to be, and as what they were then.
type Checked = Mutex<HashMap<ContentHash, (FilesStamp, Found)>>;

/// The adapters registered on the chain a node follows.
pub struct AdapterRegistry {
	/// The node.
	node: Arc<Node>,
	/// The folder holding adapters' files, a folder each named by its content hash in hex.
	content_dir: PathBuf,
	/// The served model's weights file, if it has one.
	weights: Option<PathBuf>,
	/// Its hashes, once computed.
	hashes: OnceCell<WeightsHashes>,
	/// The adapters' files examined.
	checked: Checked,
	/// Held while files are examined (one adapter's at a time: requests naming the same one
	/// wait for the result rather than repeat the work).
	checking: tokio::sync::Mutex<()>,
	/// The lookups in flight and the verdicts they came to.
	verdicts: Verdicts,
}

/// What a request does with what its lookup found ([`Lookup::settle`]).
#[derive(Debug)]
pub enum Settled {
	/// No lookup of a later block has settled: list the adapter, or unlist it, as this one
	/// found.
	Latest,
	/// A lookup of a later block has settled and found the adapter servable: leave the listing
	/// alone.
	Overtaken,
	/// A lookup of a later block has settled and found the adapter not to be served, for this
	/// reason: the request is answered with it, though its own lookup found the adapter
	/// servable.
	Gone(AdapterError),
}

/// What the lookups of adapters on chain found, so that what a lookup of an older block found
/// never undoes what one of a newer block found: requests look adapters up concurrently, read
/// the finalized head when they get to it and finish in any order (an adapter found servable
/// at one block must not be listed again after a request that read a later block found it
/// retired and unlisted it). Lookups are ordered by the number of the block they read, then by
/// when they came to what they found (of the same block, the one that examined the files
/// last). This holds of one node, whose finalized head only moves forward: a `--chain` URL
/// behind which several nodes answer in turn may order them otherwise. What is found of the
/// files (missing, changed) is ordered by block too, though the files are not on chain: a
/// lookup of an older block that finds files put in place since is answered as a newer one
/// found them, until a lookup of a newer block finds them.
#[derive(Default)]
pub struct Verdicts {
	inner: Mutex<VerdictsInner>,
}

#[derive(Default)]
struct VerdictsInner {
	/// The next ticket (the order lookups came to what they found in).
	next: u64,
	/// Per adapter with lookups in flight: how many, and the latest verdict settled while they
	/// are (its block number and ticket, and why the adapter is not to be served if it found
	/// so). A lookup beginning once none is in flight reads a finalized block no older than any
	/// verdict settled before, so an adapter's entry goes with its last lookup: there are no
	/// more entries than lookups in flight.
	adapters: HashMap<AdapterId, InFlight>,
}

struct InFlight {
	lookups: usize,
	latest: Option<((u64, u64), Option<AdapterError>)>,
}

impl Verdicts {
	fn lock(&self) -> std::sync::MutexGuard<'_, VerdictsInner> {
		self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}

	/// A lookup of adapter `id` beginning now.
	pub fn begin(&self, id: AdapterId) -> Lookup<'_> {
		let mut inner = self.lock();
		inner.adapters.entry(id).or_insert(InFlight { lookups: 0, latest: None }).lookups += 1;
		Lookup { verdicts: self, id, ticket: 0, block: None }
	}

	/// How many adapters have lookups in flight (each with what the latest settled found).
	pub fn in_flight(&self) -> usize {
		self.lock().adapters.len()
	}
}

/// A lookup of an adapter on chain ([`Verdicts`]).
pub struct Lookup<'a> {
	verdicts: &'a Verdicts,
	/// The adapter.
	id: AdapterId,
	/// When it came to what it found, among all lookups (0 until then).
	ticket: u64,
	/// The number of the finalized block read, once read.
	block: Option<u64>,
}

impl Lookup<'_> {
	/// The adapter looked up.
	pub fn id(&self) -> AdapterId {
		self.id
	}

	/// Notes that the chain is read at block number `block`.
	pub fn read_at(&mut self, block: u64) {
		self.block = Some(block);
	}

	/// Notes that what the lookup finds is known now.
	pub fn found(&mut self) {
		let mut inner = self.verdicts.lock();
		inner.next = inner.next.saturating_add(1);
		self.ticket = inner.next;
	}

	/// Settles what this lookup found: the adapter servable (`gone` is `None`), or not to be
	/// served for the reason `gone` ([`AdapterError::is_gone`]). Call it, and apply what it
	/// says, under the lock of the listing it orders.
	pub fn settle(self, gone: Option<&AdapterError>) -> Settled {
		// (A lookup that read no block found nothing of the chain: it orders before any.)
		let key = (self.block.unwrap_or(0), self.ticket);
		let mut inner = self.verdicts.lock();
		let Some(adapter) = inner.adapters.get_mut(&self.id) else { return Settled::Overtaken };
		match &adapter.latest {
			Some((later, verdict)) if *later > key => match verdict {
				Some(reason) if gone.is_none() => Settled::Gone(reason.clone()),
				_ => Settled::Overtaken,
			},
			_ => {
				adapter.latest = Some((key, gone.cloned()));
				Settled::Latest
			}
		}
	}
}

impl Drop for Lookup<'_> {
	fn drop(&mut self) {
		let mut inner = self.verdicts.lock();
		if let Some(adapter) = inner.adapters.get_mut(&self.id) {
			adapter.lookups = adapter.lookups.saturating_sub(1);
			if adapter.lookups == 0 {
				inner.adapters.remove(&self.id);
			}
		}
	}
}

impl AdapterRegistry {
	/// The adapters registered on the chain `node` follows, their files read from
	/// `content_dir`; `weights` is the served model's weights file (its hashes name the base
	/// model on chain), `None` where it has none (a model in shards).
	pub fn new(node: Arc<Node>, content_dir: impl Into<PathBuf>, weights: Option<PathBuf>) -> Self {
		Self {
			node,
			content_dir: content_dir.into(),
			weights,
			hashes: OnceCell::new(),
			checked: Mutex::new(HashMap::new()),
			checking: tokio::sync::Mutex::new(()),
			verdicts: Verdicts::default(),
		}
	}

	/// The served weights file of the model at `model` (a GGUF file, or a Hugging Face folder's
	/// `model.safetensors`), if it has one.
	pub fn weights_file(model: &Path) -> Option<PathBuf> {
		match model.is_dir() {
			true => Some(model.join("model.safetensors")).filter(|f| f.is_file()),
			false => Some(model.to_path_buf()),
		}
	}

	/// Hashes the served weights file now (once; later calls wait for it, and one that failed
	/// is tried again): call it at start so that the first request naming an adapter on chain
	/// does not wait for it.
	pub async fn hash_weights(&self) {
		let _ = self.weights_hashes().await;
	}

	/// The served weights file's hashes (computed once; a failure is tried again next time).
	async fn weights_hashes(&self) -> Result<WeightsHashes, AdapterError> {
		let hashes = self.hashes.get_or_try_init(|| async {
			let Some(file) = self.weights.clone() else {
				return Err("the model served has no single weights file to compare with a base \
				            model's weights hash (a model in shards)"
					.to_string());
			};
			let hashed = tokio::task::spawn_blocking(move || hash_file(&file)).await;
			hashed.map_err(|e| e.to_string()).and_then(|hashed| hashed)
		});
		hashes.await.copied().map_err(AdapterError::Weights)
	}

	/// What this registry's lookups found: begin a [`Lookup`] for [`Self::adapter`] and settle
	/// what it found.
	pub fn verdicts(&self) -> &Verdicts {
		&self.verdicts
	}

	/// The adapter `lookup` names at the chain's last finalized block (the block's number
	/// noted in `lookup`), checked as the module says (`build` builds its files for the served
	/// model, as serving them would).
	pub async fn adapter(
		&self,
		lookup: &mut Lookup<'_>,
		build: Build,
	) -> Result<RegisteredAdapter, AdapterError> {
		let found = self.check(lookup, build).await;
		lookup.found();
		found
	}

	/// [`Self::adapter`], but for noting when it was found.
	async fn check(
		&self,
		lookup: &mut Lookup<'_>,
		build: Build,
	) -> Result<RegisteredAdapter, AdapterError> {
		let id = lookup.id();
		let methods = "connect, chain_getFinalizedHead, chain_getHeader, adapters_getAdapter, \
		               adapters_getBaseModel";
		let (info, base, block) = self.node.within(methods, self.look_up(lookup)).await?;
		let ours = self.weights_hashes().await?;
		let weights_hash = hash_field("adapters_getBaseModel", "weightsHash", &base.weights_hash)?;
		if weights_hash != ours.sha256 && weights_hash != ours.blake2 {
			return Err(AdapterError::OtherBase {
				id,
				base_model: info.base_model,
				base: format!("{}, weights hash {}", base.name, base.weights_hash),
				ours: format!(
					"SHA-256 0x{}, BLAKE2b-256 0x{}",
					hex::encode(ours.sha256),
					hex::encode(ours.blake2)
				),
			});
		}
		let content_hash = hash_field("adapters_getAdapter", "contentHash", &info.content_hash)?;
		let dir = self.content_dir.join(hex::encode(content_hash));
		match self.files(id, &dir, content_hash, build).await? {
			Found::Good(outline) => {
				check_declared(id, &outline, (info.rank, &info.target_modules))?
			}
			Found::Wrong(reason) => return Err(AdapterError::Content { id, reason }),
			Found::Unservable(reason) => return Err(AdapterError::Unservable { id, reason }),
		}
		Ok(RegisteredAdapter {
			id,
			owner: info.owner,
			name: info.name,
			content_hash,
			price_per_1k_tokens: info.price_per_1k_tokens,
			datanets: info.datanets.iter().map(|t| (t.datanet, t.weight)).collect(),
			block,
			dir,
		})
	}

	/// What the files of adapter `id` in `dir` are ([`examine`]): as found before if they have
	/// not changed since (what was wrong with them too), otherwise examined now, one adapter's at
	/// a time, off the async threads.
	async fn files(
		&self,
		id: AdapterId,
		dir: &Path,
		content_hash: ContentHash,
		build: Build,
	) -> Result<Found, AdapterError> {
		let content = |reason: String| AdapterError::Content { id, reason };
		let stamp = FilesStamp::of(dir).map_err(|e| {
			content(format!("{e} (they go in {}, named by the content hash)", dir.display()))
		})?;
		let known = || {
			let checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
			checked
				.get(&content_hash)
				.filter(|(was, _)| *was == stamp)
				.map(|(_, found)| found.clone())
		};
		if let Some(found) = known() {
			return Ok(found);
		}
		let _checking = self.checking.lock().await;
		if let Some(found) = known() {
			return Ok(found);
		}
		// (Named by their hash: what is remembered holds for any adapter of these files.)
		let (name, folder) = (format!("0x{}", hex::encode(content_hash)), dir.to_path_buf());
		let examined = move || examine(&folder, &content_hash, &name, &build);
		let found = tokio::task::spawn_blocking(examined)
			.await
			.map_err(|e| content(format!("checking them stopped: {e}")))?
			.map_err(content)?;
		let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
		checked.insert(content_hash, (stamp, found.clone()));
		Ok(found)
	}

	/// The adapter `lookup` names and its base model at the last finalized block (and that
	/// block, its number noted in `lookup`), however long the node takes; not found and retired
	/// adapters refused.
	async fn look_up(
		&self,
		lookup: &mut Lookup<'_>,
	) -> Result<(AdapterInfo, BaseModelInfo, String), AdapterError> {
		let id = lookup.id();
		let client = self.node.client().await?;
		let client = &*client;
		let block = finalized_head(client).await?;
		lookup.read_at(self.node.block_number(client, &block).await?);
		let method = "adapters_getAdapter";
		let info: Option<AdapterInfo> = call(client, method, rpc_params![id, &block]).await?;
		let info = info.ok_or(AdapterError::NotFound(id))?;
		if info.retired {
			return Err(AdapterError::Retired(id));
		}
		let method = "adapters_getBaseModel";
		let base: Option<BaseModelInfo> =
			call(client, method, rpc_params![info.base_model, &block]).await?;
		let base = base.ok_or_else(|| {
			RpcError::malformed(method, format!("base model {} does not exist", info.base_model))
		})?;
		Ok((info, base, block))
	}
}

/// Examines the adapter files in `dir` (`name` in what it says of them): whether they hash to
/// `content_hash`, what their weights say, and whether `build` can build them for the served
/// model. An error only where they cannot be read.
fn examine(
	dir: &Path,
	content_hash: &ContentHash,
	name: &str,
	build: &Build,
) -> Result<Found, String> {
	let bytes = read_adapter_files(dir)?;
	let hash = adapter_content_hash(&bytes[0], &bytes[1]);
	if hash != *content_hash {
		return Ok(Found::Wrong(format!(
			"those in {} hash to 0x{}, not to the content hash on chain",
			dir.display(),
			hex::encode(hash)
		)));
	}
	// (What is built is what was hashed.)
	let files = match AdapterFiles::from_bytes(bytes, name) {
		Ok(files) => files,
		Err(e) => return Ok(Found::Unservable(e.to_string())),
	};
	let outline = match files.outline(name) {
		Ok(outline) => outline,
		Err(e) => return Ok(Found::Unservable(e.to_string())),
	};
	Ok(match build(name, &files) {
		Ok(()) => Found::Good(outline),
		Err(e) => Found::Unservable(e),
	})
}

/// Whether what adapter `id`'s weights say (`outline`) is what the chain declares: `(rank,
/// target modules)`.
fn check_declared(
	id: AdapterId,
	(ranks, adapted): &Outline,
	(rank, modules): (u32, &[String]),
) -> Result<(), AdapterError> {
	let unservable = |reason: String| AdapterError::Unservable { id, reason };
	if ranks.iter().any(|r| u32::try_from(*r).ok() != Some(rank)) {
		return Err(unservable(format!(
			"its weights have rank {ranks:?}, the chain declares {rank}"
		)));
	}
	let adapted: Vec<String> = adapted.iter().map(|p| module_name(*p).to_string()).collect();
	let mut declared = modules.to_vec();
	declared.sort_by_key(|m| module_order(m));
	if adapted != declared {
		return Err(unservable(format!(
			"its weights adapt {adapted:?}, the chain declares {modules:?}"
		)));
	}
	Ok(())
}

/// The name the chain gives `projection` (`pallet_adapters::TargetModule`'s).
fn module_name(projection: Projection) -> &'static str {
	match projection {
		Projection::Q => "Q",
		Projection::K => "K",
		Projection::V => "V",
		Projection::O => "O",
		Projection::Gate => "Gate",
		Projection::Up => "Up",
		Projection::Down => "Down",
	}
}

/// Where a module the chain names comes in block order (unknown names last).
fn module_order(name: &str) -> usize {
	Projection::ALL.iter().position(|p| module_name(*p) == name).unwrap_or(Projection::ALL.len())
}

/// The SHA-256 and BLAKE2b-256 of the file at `path`, read once.
fn hash_file(path: &Path) -> Result<WeightsHashes, String> {
	let read = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
	let mut file = std::fs::File::open(path).map_err(read)?;
	let (mut sha256, mut blake2) = (Sha256::new(), Blake2b::<U32>::new());
	let mut buffer = vec![0u8; 1 << 20];
	loop {
		let n = file.read(&mut buffer).map_err(read)?;
		if n == 0 {
			break;
		}
		sha256.update(&buffer[..n]);
		blake2.update(&buffer[..n]);
	}
	Ok(WeightsHashes { sha256: sha256.finalize().into(), blake2: blake2.finalize().into() })
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn names_beginning_chain_are_kept_for_adapters_on_chain() {
		let refused = unreserved("chain:3").unwrap_err();
		assert_eq!(
			refused,
			"\"chain:3\": names that begin \"chain:\" are the adapters registered on chain"
		);
		assert!(unreserved("chain").is_ok() && unreserved("my-chain:3").is_ok());
	}

	#[test]
	fn what_a_lookup_of_a_later_block_found_stands() {
		let verdicts = Verdicts::default();
		let retired = AdapterError::Retired(7);
		// (Each comes to what it finds as it begins.)
		let begin = |block: u64| {
			let mut lookup = verdicts.begin(7);
			lookup.read_at(block);
			lookup.found();
			lookup
		};
		// Found servable at block 10, then retired at block 11 by a lookup that settles first:
		// the first is answered as the second found, and lists nothing.
		let (early, late) = (begin(10), begin(11));
		assert!(matches!(late.settle(Some(&retired)), Settled::Latest));
		assert!(matches!(early.settle(None), Settled::Gone(AdapterError::Retired(7))));
		// A lookup that began first but read the later block (its head came later) is the
		// later one, whichever settles first.
		let (read_later, read_earlier) = (begin(12), begin(11));
		assert!(matches!(read_later.settle(Some(&retired)), Settled::Latest));
		assert!(matches!(read_earlier.settle(None), Settled::Gone(_)));
		let (read_later, read_earlier) = (begin(12), begin(11));
		assert!(matches!(read_earlier.settle(None), Settled::Latest));
		assert!(matches!(read_later.settle(Some(&retired)), Settled::Latest));
		// Found gone at block 10, servable at block 11 by one that settles first: the first
		// unlists nothing.
		let (early, late) = (begin(10), begin(11));
		assert!(matches!(late.settle(None), Settled::Latest));
		assert!(matches!(early.settle(Some(&AdapterError::NotFound(7))), Settled::Overtaken));
		// Two finding it servable: the older serves it as listed.
		let (early, late) = (begin(10), begin(11));
		assert!(matches!(late.settle(None), Settled::Latest));
		assert!(matches!(early.settle(None), Settled::Overtaken));
		// At the same block, the one that came to what it found later is the later one (the
		// files examined again, changed).
		let (first, second) = (begin(11), begin(11));
		let files = AdapterError::Content { id: 7, reason: "changed".into() };
		assert!(matches!(second.settle(Some(&files)), Settled::Latest));
		assert!(matches!(first.settle(None), Settled::Gone(AdapterError::Content { .. })));
		// Settled in the order of their blocks, each is the latest; other adapters are apart.
		let (first, second) = (begin(11), begin(12));
		let mut other = verdicts.begin(8);
		other.read_at(13);
		other.found();
		assert!(matches!(first.settle(None), Settled::Latest));
		assert!(matches!(other.settle(Some(&AdapterError::NotFound(8))), Settled::Latest));
		assert!(matches!(second.settle(Some(&retired)), Settled::Latest));
	}

	#[test]
	fn verdicts_are_kept_only_while_lookups_of_their_adapter_are_in_flight() {
		let verdicts = Verdicts::default();
		assert_eq!(verdicts.in_flight(), 0);
		let (mut pending, mut later) = (verdicts.begin(7), verdicts.begin(7));
		pending.read_at(10);
		later.read_at(11);
		later.found();
		assert!(matches!(later.settle(Some(&AdapterError::Retired(7))), Settled::Latest));
		assert_eq!(verdicts.in_flight(), 1, "kept for the lookup still in flight");
		drop(pending);
		assert_eq!(verdicts.in_flight(), 0);
		// Many adapters looked up, none remembered once settled; one dropped unsettled (its
		// client gone) orders nothing.
		for id in 0..100 {
			let mut lookup = verdicts.begin(id);
			lookup.read_at(20);
			lookup.found();
			assert!(matches!(lookup.settle(Some(&AdapterError::NotFound(id))), Settled::Latest));
		}
		assert_eq!(verdicts.in_flight(), 0);
		let (dropped, mut after) = (verdicts.begin(7), verdicts.begin(7));
		drop(dropped);
		after.read_at(21);
		after.found();
		assert!(matches!(after.settle(None), Settled::Latest));
		assert_eq!(verdicts.in_flight(), 0);
	}

	#[test]
	fn of_the_same_block_what_was_found_last_stands_whenever_its_lookup_began() {
		let verdicts = Verdicts::default();
		let (mut began_first, mut began_last) = (verdicts.begin(7), verdicts.begin(7));
		began_first.read_at(11);
		began_last.read_at(11);
		// The one that began last found the files as they were, the first then found them
		// changed: its verdict stands, whichever settles first.
		began_last.found();
		began_first.found();
		let changed = AdapterError::Content { id: 7, reason: "changed".into() };
		assert!(matches!(began_last.settle(None), Settled::Latest));
		assert!(matches!(began_first.settle(Some(&changed)), Settled::Latest));
		let (mut began_first, mut began_last) = (verdicts.begin(7), verdicts.begin(7));
		began_first.read_at(12);
		began_last.read_at(12);
		began_last.found();
		began_first.found();
		assert!(matches!(began_first.settle(Some(&changed)), Settled::Latest));
		assert!(matches!(began_last.settle(None), Settled::Gone(AdapterError::Content { .. })));
	}

	#[test]
	fn names_on_chain_are_parsed() {
		assert!(chain_id("my-adapter").is_none());
		assert_eq!(chain_id("chain:7").unwrap().unwrap(), 7);
		assert!(matches!(chain_id("chain:x"), Some(Err(AdapterError::Name(_)))));
		assert!(matches!(chain_id("chain:"), Some(Err(AdapterError::Name(_)))));
		assert!(matches!(chain_id("chain:-1"), Some(Err(AdapterError::Name(_)))));
		assert!(matches!(chain_id("chain:+7"), Some(Err(AdapterError::Name(_)))));
		assert!(matches!(chain_id("chain:007"), Some(Err(AdapterError::Name(_)))));
		assert_eq!(chain_id("chain:0").unwrap().unwrap(), 0);
	}

	#[test]
	fn a_files_hashes_are_sha256_and_blake2b_256() {
		let dir = tempfile::tempdir().unwrap();
		let path = dir.path().join("weights");
		// More than one read's worth.
		let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
		std::fs::write(&path, &bytes).unwrap();
		let hashes = hash_file(&path).unwrap();
		assert_eq!(hashes.blake2, openledger_primitives::content_hash_of(&bytes));
		let sha: [u8; 32] = Sha256::digest(&bytes).into();
		assert_eq!(hashes.sha256, sha);
		// SHA-256 of "abc" (FIPS 180-2's example).
		std::fs::write(&path, b"abc").unwrap();
		assert_eq!(
			hex::encode(hash_file(&path).unwrap().sha256),
			"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
		);
		assert!(hash_file(&dir.path().join("missing")).unwrap_err().contains("cannot read"));
	}

	#[test]
	fn modules_are_named_and_ordered_as_the_chain_names_them() {
		let names: Vec<&str> = Projection::ALL.iter().map(|p| module_name(*p)).collect();
		assert_eq!(names, ["Q", "K", "V", "O", "Gate", "Up", "Down"]);
		let mut declared = vec!["V".to_string(), "Q".to_string(), "X".to_string()];
		declared.sort_by_key(|m| module_order(m));
		assert_eq!(declared, ["Q", "V", "X"]);
	}
}
