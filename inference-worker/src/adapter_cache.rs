//! The adapters a worker holds in memory, in two tiers:
//!
//! - the **device tier**: adapters ready to serve (weights on the model's device), in LRU order
//!   under a byte budget, evicted when the budget is needed (pinned adapters never are);
//! - the **host tier** (optional): the adapters' files in host memory, under a budget of its own,
//!   so that an adapter evicted from the device comes back without reading the disk.
//!
//! Both are checked against the files on disk: an adapter whose files changed is reloaded.
//!
//! Requests hold an adapter through an [`Arc`], so evicting or reloading it never disturbs a
//! request already running with it, and loading happens outside the cache's lock, so a slow load
//! never stalls requests that use other adapters.

use std::{
	collections::HashMap,
	path::PathBuf,
	sync::{Arc, Mutex},
};

use crate::{
	error::{Error, Result},
	lora::{AdapterFiles, AdapterSource, FilesStamp, LoraAdapter},
};

/// What identifies the version of an adapter's files on disk: their folder and their
/// [`FilesStamp`]. A changed fingerprint means the adapter must be reloaded (the folder counts:
/// files copied elsewhere keep their sizes and often their times).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint(PathBuf, FilesStamp);

impl Fingerprint {
	/// The fingerprint of the files of adapter `name` in `source`.
	fn of(name: &str, source: &AdapterSource) -> Result<Self> {
		let dir = &source.dir;
		let stamp = FilesStamp::of(dir).map_err(|e| {
			source.unreadable(name, format!("cannot read {e} in {}", dir.display()))
		})?;
		Ok(Self(dir.to_path_buf(), stamp))
	}
}

struct Entry {
	adapter: Arc<LoraAdapter>,
	/// Where its files were read from (and the hash they had, if one was required).
	source: AdapterSource,
	fingerprint: Fingerprint,
	last_used: u64,
	pinned: bool,
}

/// What the LRU eviction of either tier needs to know of an entry.
trait Cached {
	/// The clock value of its last use.
	fn last_used(&self) -> u64;
	/// Bytes it holds.
	fn size(&self) -> usize;
	/// Whether it may be evicted.
	fn evictable(&self) -> bool;
}

impl Cached for Entry {
	fn last_used(&self) -> u64 {
		self.last_used
	}
	fn size(&self) -> usize {
		self.adapter.size_bytes
	}
	fn evictable(&self) -> bool {
		!self.pinned
	}
}

impl Cached for HostEntry {
	fn last_used(&self) -> u64 {
		self.last_used
	}
	fn size(&self) -> usize {
		self.files.size_bytes()
	}
	fn evictable(&self) -> bool {
		true
	}
}

/// Evicts the least recently used evictable entries of `map` (whose sizes add up to `used`)
/// until `need` more bytes fit in `budget`. Returns how many were evicted, or `None` when the
/// entries left cannot be evicted and there is still no room.
fn evict_lru<E: Cached>(
	map: &mut HashMap<String, E>,
	used: &mut usize,
	need: usize,
	budget: usize,
) -> Option<u64> {
	let mut evicted = 0;
	while *used + need > budget {
		let victim = map
			.iter()
			.filter(|(_, e)| e.evictable())
			.min_by_key(|(_, e)| e.last_used())
			.map(|(name, _)| name.clone())?;
		if let Some(entry) = map.remove(&victim) {
			*used -= entry.size();
			evicted += 1;
			tracing::debug!(adapter = %victim, "evicted");
		}
	}
	Some(evicted)
}

/// How the cache has been used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
	/// Requests served from memory.
	pub hits: u64,
	/// Adapters loaded from disk (first use, or after eviction).
	pub loads: u64,
	/// Adapters reloaded because their files changed.
	pub reloads: u64,
	/// Adapters evicted from the device tier to make room.
	pub evictions: u64,
	/// Adapters rebuilt from the host tier instead of read from disk.
	pub host_hits: u64,
}

/// An adapter's files in the host tier.
struct HostEntry {
	files: Arc<AdapterFiles>,
	fingerprint: Fingerprint,
	last_used: u64,
}

struct Inner {
	entries: HashMap<String, Entry>,
	used_bytes: usize,
	host: HashMap<String, HostEntry>,
	host_bytes: usize,
	clock: u64,
	stats: CacheStats,
}

/// An LRU cache of adapters bounded by bytes, with an optional host tier.
pub struct AdapterCache {
	budget_bytes: usize,
	host_budget_bytes: usize,
	inner: Mutex<Inner>,
}

impl AdapterCache {
	/// A cache that holds at most `budget_bytes` of adapter weights ready to serve, and no host
	/// tier.
	pub fn new(budget_bytes: usize) -> Self {
		Self::with_host_tier(budget_bytes, 0)
	}

	/// A cache with a device tier of `budget_bytes` and a host tier of `host_budget_bytes` of
	/// adapter files.
	pub fn with_host_tier(budget_bytes: usize, host_budget_bytes: usize) -> Self {
		Self {
			budget_bytes,
			host_budget_bytes,
			inner: Mutex::new(Inner {
				entries: HashMap::new(),
				used_bytes: 0,
				host: HashMap::new(),
				host_bytes: 0,
				clock: 0,
				stats: CacheStats::default(),
			}),
		}
	}

	fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
		// A panic while holding the lock leaves the maps consistent (every mutation is a single
		// insert or remove), so a poisoned lock is still usable.
		self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}

	/// The adapter `name` whose files are in `source`: from the device tier if it was loaded
	/// from the same source and its files have not changed, else built with `load` (outside the
	/// lock) from its files — from the host tier when they are there, else read from disk —
	/// once they are found to be the files `source` names by hash, if it does
	/// ([`AdapterSource::verify`]), and inserted, evicting the least recently used unpinned
	/// adapters as the budget requires.
	pub fn get_or_load(
		&self,
		name: &str,
		source: &AdapterSource,
		load: impl FnOnce(&AdapterFiles) -> Result<LoraAdapter>,
	) -> Result<Arc<LoraAdapter>> {
		let fingerprint = Fingerprint::of(name, source)?;
		let mut reload = false;
		{
			let mut inner = self.lock();
			inner.clock += 1;
			let now = inner.clock;
			if let Some(entry) = inner.entries.get_mut(name) {
				if entry.fingerprint == fingerprint && entry.source == *source {
					entry.last_used = now;
					let adapter = entry.adapter.clone();
					inner.stats.hits += 1;
					return Ok(adapter);
				}
				reload = true;
			}
		}
		let files = self.files(name, source, &fingerprint)?;
		let adapter = Arc::new(load(&files)?);
		if adapter.size_bytes > self.budget_bytes {
			return Err(Error::Adapter {
				name: name.to_string(),
				reason: format!(
					"needs {} bytes, more than the cache's whole budget of {}",
					adapter.size_bytes, self.budget_bytes
				),
			});
		}
		let mut inner = self.lock();
		let pinned = match inner.entries.remove(name) {
			Some(old) => {
				inner.used_bytes -= old.adapter.size_bytes;
				old.pinned
			}
			None => false,
		};
		let inner_ref = &mut *inner;
		match evict_lru(
			&mut inner_ref.entries,
			&mut inner_ref.used_bytes,
			adapter.size_bytes,
			self.budget_bytes,
		) {
			Some(evicted) => inner.stats.evictions += evicted,
			None => {
				return Err(Error::Adapter {
					name: name.to_string(),
					reason: format!(
						"no room: {} of {} bytes are held by pinned adapters",
						inner.used_bytes, self.budget_bytes
					),
				})
			}
		}
		inner.clock += 1;
		let last_used = inner.clock;
		inner.used_bytes += adapter.size_bytes;
		if reload {
			inner.stats.reloads += 1;
		} else {
			inner.stats.loads += 1;
		}
		inner.entries.insert(
			name.to_string(),
			Entry {
				adapter: adapter.clone(),
				source: source.clone(),
				fingerprint,
				last_used,
				pinned,
			},
		);
		Ok(adapter)
	}

	/// The files of `name` in `source`, found to be the files it names by hash if it does: from
	/// the host tier if they are there and current ([`AdapterSource::verify`]), else from disk
	/// ([`AdapterSource::read`]; then kept in the host tier, evicting its least recently used
	/// entries as needed; files refused are not kept).
	fn files(
		&self,
		name: &str,
		source: &AdapterSource,
		fingerprint: &Fingerprint,
	) -> Result<Arc<AdapterFiles>> {
		let held = {
			let inner = self.lock();
			let entry = inner.host.get(name).filter(|entry| entry.fingerprint == *fingerprint);
			entry.map(|entry| entry.files.clone())
		};
		// (Checked outside the lock: the first check of files held hashes them, which takes a
		// while; later ones read the hash worked out then. Files of another hash are read
		// again.)
		if let Some(files) = held.filter(|files| source.verify(name, files).is_ok()) {
			let mut inner = self.lock();
			inner.clock += 1;
			let now = inner.clock;
			if let Some(entry) = inner.host.get_mut(name) {
				entry.last_used = now;
			}
			inner.stats.host_hits += 1;
			return Ok(files);
		}
		let files = Arc::new(source.read(name)?);
		let size = files.size_bytes();
		if size <= self.host_budget_bytes {
			let mut inner = self.lock();
			if let Some(old) = inner.host.remove(name) {
				inner.host_bytes -= old.files.size_bytes();
			}
			let inner_ref = &mut *inner;
			// Every host entry is evictable and `size` fits the budget, so room is always made.
			let _ = evict_lru(
				&mut inner_ref.host,
				&mut inner_ref.host_bytes,
				size,
				self.host_budget_bytes,
			);
			inner.clock += 1;
			let last_used = inner.clock;
			inner.host_bytes += size;
			let entry =
				HostEntry { files: files.clone(), fingerprint: fingerprint.clone(), last_used };
			inner.host.insert(name.to_string(), entry);
		}
		Ok(files)
	}

	/// Bytes of adapter files in the host tier.
	pub fn host_bytes(&self) -> usize {
		self.lock().host_bytes
	}

	/// Pins or unpins an adapter already in the cache: a pinned adapter is never evicted.
	/// Returns whether the adapter was there.
	pub fn set_pinned(&self, name: &str, pinned: bool) -> bool {
		match self.lock().entries.get_mut(name) {
			Some(entry) => {
				entry.pinned = pinned;
				true
			}
			None => false,
		}
	}

	/// Whether `name`, loaded from `source`, is in the device tier.
	pub fn contains_from(&self, name: &str, source: &AdapterSource) -> bool {
		self.lock().entries.get(name).is_some_and(|entry| entry.source == *source)
	}

	/// Whether `name` is in the device tier (from whichever source).
	pub fn contains(&self, name: &str) -> bool {
		self.lock().entries.contains_key(name)
	}

	/// Bytes of adapter weights in memory.
	pub fn used_bytes(&self) -> usize {
		self.lock().used_bytes
	}

	/// Adapters in memory.
	pub fn len(&self) -> usize {
		self.lock().entries.len()
	}

	/// Whether no adapter is in memory.
	pub fn is_empty(&self) -> bool {
		self.len() == 0
	}

	/// Hits, loads, reloads and evictions so far.
	pub fn stats(&self) -> CacheStats {
		self.lock().stats
	}

	/// What the cache has done and holds, at one moment.
	pub fn figures(&self) -> CacheFigures {
		let inner = self.lock();
		CacheFigures {
			stats: inner.stats,
			resident: inner.entries.len(),
			used_bytes: inner.used_bytes,
			host_bytes: inner.host_bytes,
		}
	}
}

/// What an [`AdapterCache`] has done and holds, at one moment (for `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheFigures {
	/// Hits, loads, reloads and evictions so far.
	pub stats: CacheStats,
	/// Adapters in memory.
	pub resident: usize,
	/// Bytes of adapter weights in memory.
	pub used_bytes: usize,
	/// Bytes of adapter files in the host tier.
	pub host_bytes: usize,
}

#[cfg(test)]
mod tests {
	use std::{collections::BTreeMap, path::Path};

	use candle_core::Device;

	use super::*;
	use crate::{
		config::{LlamaConfig, RopeLayout},
		lora::{
			synthetic::{self, SyntheticAdapter},
			Projection,
		},
	};

	fn config() -> LlamaConfig {
		LlamaConfig::tiny(RopeLayout::Interleaved)
	}

	fn write(dir: &Path, seed: u64, rank: usize) {
		let spec = SyntheticAdapter {
			seed,
			rank,
			alpha: 8.0,
			targets: vec![Projection::Q, Projection::V],
			rank_pattern: BTreeMap::new(),
			alpha_pattern: BTreeMap::new(),
		};
		synthetic::write(&spec, &config(), dir).unwrap();
	}

	/// The `A` of layer 0's Q projection: what tells two of these adapters apart.
	fn q_a(adapter: &LoraAdapter) -> Vec<Vec<f32>> {
		adapter.weights(0, Projection::Q).unwrap().a.to_vec2::<f32>().unwrap()
	}

	fn load(files: &AdapterFiles) -> Result<LoraAdapter> {
		let config = config();
		LoraAdapter::from_files(
			files,
			"test",
			&config,
			|l, p| (l < config.num_layers).then(|| synthetic::widths(&config, p)),
			&Device::Cpu,
		)
	}

	/// Bytes of one rank-`rank` adapter on q and v of [`config`].
	fn size(rank: usize) -> usize {
		// q: A 16 in + B 16 out; v: A 16 in + B 8 out; two layers; f32.
		2 * ((16 + 16) + (16 + 8)) * rank * 4
	}

	#[test]
	fn evicts_the_least_recently_used_and_never_a_pinned_one() {
		let root = tempfile::tempdir().unwrap();
		let dirs: Vec<PathBuf> = (0..4)
			.map(|i| {
				let dir = root.path().join(format!("a{i}"));
				write(&dir, i, 2);
				dir
			})
			.collect();
		let cache = AdapterCache::new(3 * size(2));
		for (i, dir) in dirs.iter().take(3).enumerate() {
			let adapter =
				cache.get_or_load(&format!("a{i}"), &AdapterSource::from(dir), load).unwrap();
			assert_eq!(adapter.size_bytes, size(2));
		}
		assert_eq!((cache.len(), cache.used_bytes()), (3, 3 * size(2)));
		// Use a0 again, pin a1: a2 is the one to go.
		let held = cache.get_or_load("a0", &AdapterSource::from(&dirs[0]), load).unwrap();
		assert!(cache.set_pinned("a1", true));
		cache.get_or_load("a3", &AdapterSource::from(&dirs[3]), load).unwrap();
		assert!(cache.contains("a0") && cache.contains("a1") && cache.contains("a3"));
		assert!(!cache.contains("a2"));
		// Next a0 goes (a1 is pinned), though a request still holds it.
		cache.get_or_load("a2", &AdapterSource::from(&dirs[2]), load).unwrap();
		assert!(!cache.contains("a0") && cache.contains("a1"));
		assert!(held.weights(0, Projection::Q).is_some(), "the evicted adapter stays usable");
		let stats = cache.stats();
		assert_eq!(stats, CacheStats { hits: 1, loads: 5, reloads: 0, evictions: 2, host_hits: 0 });
		assert_eq!(cache.used_bytes(), 3 * size(2));
	}

	#[test]
	fn an_evicted_adapter_comes_back_from_the_host_tier_until_its_files_change() {
		let root = tempfile::tempdir().unwrap();
		let (a, b) = (root.path().join("a"), root.path().join("b"));
		write(&a, 1, 2);
		write(&b, 2, 2);
		// Room for one adapter on the device, both in host memory.
		let cache = AdapterCache::with_host_tier(size(2), 1 << 20);
		cache.get_or_load("a", &AdapterSource::from(&a), load).unwrap();
		let b1 = cache.get_or_load("b", &AdapterSource::from(&b), load).unwrap();
		assert!(!cache.contains("a"), "a was evicted from the device");
		let files_a = AdapterFiles::read(&a, "a").unwrap().size_bytes();
		let files_b = AdapterFiles::read(&b, "b").unwrap().size_bytes();
		assert_eq!(cache.host_bytes(), files_a + files_b);
		let again = cache.get_or_load("a", &AdapterSource::from(&a), load).unwrap();
		assert_eq!(cache.stats().host_hits, 1, "rebuilt from host memory");
		assert!(!cache.lock().host["a"].files.hashed_yet(), "named by its folder: never hashed");
		assert_eq!(again.weights(0, Projection::Q).unwrap().rank, 2);
		// New weights on disk: the host copy is stale and is not used.
		write(&b, 3, 2);
		let b2 = cache.get_or_load("b", &AdapterSource::from(&b), load).unwrap();
		assert_ne!(q_a(&b1), q_a(&b2));
		assert_eq!(cache.stats().host_hits, 1);
		// A host tier too small for an adapter's files just does not keep them.
		let tiny = AdapterCache::with_host_tier(size(2), 10);
		tiny.get_or_load("a", &AdapterSource::from(&a), load).unwrap();
		assert_eq!(tiny.host_bytes(), 0);
	}

	#[test]
	fn reloads_an_adapter_whose_files_changed() {
		let root = tempfile::tempdir().unwrap();
		let dir = root.path().join("a");
		write(&dir, 1, 2);
		let cache = AdapterCache::new(10 * size(4));
		let first = cache.get_or_load("a", &AdapterSource::from(&dir), load).unwrap();
		assert_eq!(first.weights(0, Projection::Q).unwrap().rank, 2);
		// The owner publishes a new version at a higher rank.
		write(&dir, 2, 4);
		let second = cache.get_or_load("a", &AdapterSource::from(&dir), load).unwrap();
		assert_eq!(second.weights(0, Projection::Q).unwrap().rank, 4);
		assert_eq!(first.weights(0, Projection::Q).unwrap().rank, 2, "old holders keep theirs");
		assert_eq!(cache.used_bytes(), size(4));
		assert_eq!(cache.stats().reloads, 1);
	}

	/// (On unix, where the stamp has the inode and change time.)
	#[cfg(unix)]
	#[test]
	fn reloads_an_adapter_replaced_by_one_of_the_same_size_and_modification_time() {
		let root = tempfile::tempdir().unwrap();
		let (dir, retrained) = (root.path().join("a"), root.path().join("retrained"));
		write(&dir, 1, 2);
		write(&retrained, 2, 2);
		let cache = AdapterCache::new(10 * size(2));
		let first = cache.get_or_load("a", &AdapterSource::from(&dir), load).unwrap();
		// Retrained at the same rank, copied in place as `rsync -a` does: same sizes, the old
		// modification times, put in place by renaming.
		for file in openledger_primitives::ADAPTER_FILES {
			let (old, new) = (dir.join(file), retrained.join(file));
			let old_meta = std::fs::metadata(&old).unwrap();
			assert_eq!(old_meta.len(), std::fs::metadata(&new).unwrap().len());
			let times = std::fs::File::options().write(true).open(&new).unwrap();
			times.set_modified(old_meta.modified().unwrap()).unwrap();
			std::fs::rename(&new, &old).unwrap();
		}
		let second = cache.get_or_load("a", &AdapterSource::from(&dir), load).unwrap();
		assert_ne!(q_a(&first), q_a(&second), "the retrained weights are served");
		assert_eq!((cache.stats().reloads, cache.stats().hits), (1, 0));
		// Unchanged since, it is a hit.
		cache.get_or_load("a", &AdapterSource::from(&dir), load).unwrap();
		assert_eq!(cache.stats().hits, 1);
	}

	#[test]
	fn an_adapter_named_by_hash_is_never_one_loaded_otherwise() {
		let root = tempfile::tempdir().unwrap();
		let dir = root.path().join("a");
		write(&dir, 1, 2);
		let hash = AdapterFiles::read(&dir, "a").unwrap().content_hash();
		let cache = AdapterCache::with_host_tier(10 * size(4), 1 << 20);
		let plain = AdapterSource::from(&dir);
		cache.get_or_load("a", &plain, load).unwrap();
		assert!(cache.contains_from("a", &plain));
		assert!(!cache.lock().host["a"].files.hashed_yet(), "not hashed when not named by hash");
		// In both tiers, loaded from the folder alone: named by another hash, it is not served
		// from either, and its files are refused.
		let other = AdapterSource::hashed(&dir, [9; 32]);
		assert!(!cache.contains_from("a", &other));
		let (before, held) = (cache.stats(), cache.host_bytes());
		let err = cache.get_or_load("a", &other, load).unwrap_err().to_string();
		assert!(err.contains("no longer hash to 0x0909"), "{err}");
		assert_eq!((cache.stats(), cache.host_bytes()), (before, held), "nothing counted or kept");
		// Named by its own hash, it is read (from the host tier), checked and built again. The
		// files held were hashed once, by the first check, and are not hashed again.
		assert!(cache.lock().host["a"].files.hashed_yet());
		let hashed = AdapterSource::hashed(&dir, hash);
		let before = cache.stats();
		cache.get_or_load("a", &hashed, load).unwrap();
		assert!(cache.contains_from("a", &hashed) && !cache.contains_from("a", &plain));
		let after = cache.stats();
		assert_eq!(after.loads + after.reloads, before.loads + before.reloads + 1);
		assert_eq!((after.hits, after.host_hits), (before.hits, before.host_hits + 1));
		// Its files gone once it was checked: they changed under the worker (for the adapter
		// named by hash), or cannot be loaded (for one named by its folder).
		std::fs::remove_file(dir.join(openledger_primitives::ADAPTER_FILES[1])).unwrap();
		let gone = cache.get_or_load("a", &hashed, load).unwrap_err();
		assert!(matches!(&gone, Error::AdapterChanged { .. }), "{gone:?}");
		assert!(gone.to_string().contains("cannot read adapter_model.safetensors"), "{gone}");
		let gone = cache.get_or_load("a", &plain, load).unwrap_err();
		assert!(matches!(gone, Error::Adapter { .. }), "{gone:?}");
	}

	#[test]
	fn refuses_what_cannot_fit_and_keeps_what_it_had() {
		let root = tempfile::tempdir().unwrap();
		let (small, big) = (root.path().join("small"), root.path().join("big"));
		write(&small, 1, 2);
		write(&big, 2, 8);
		let cache = AdapterCache::new(2 * size(2));
		cache.get_or_load("small", &AdapterSource::from(&small), load).unwrap();
		let err =
			cache.get_or_load("big", &AdapterSource::from(&big), load).unwrap_err().to_string();
		assert!(err.contains("more than the cache's whole budget"), "{err}");
		assert!(cache.set_pinned("small", true));
		let other = root.path().join("other");
		write(&other, 3, 3);
		let err =
			cache.get_or_load("other", &AdapterSource::from(&other), load).unwrap_err().to_string();
		assert!(err.contains("pinned"), "{err}");
		assert!(cache.contains("small") && cache.used_bytes() == size(2));
		// A corrupt adapter is an error, and nothing changes.
		std::fs::write(other.join("adapter_config.json"), "{").unwrap();
		assert!(cache.get_or_load("other", &AdapterSource::from(&other), load).is_err());
		assert_eq!(cache.len(), 1);
	}
}
