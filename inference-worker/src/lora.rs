//! PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`), kept apart from the
//! base weights: a projection's output becomes `W x + s · B (A x)` with `s = alpha / r` (or
//! `alpha / sqrt(r)` with rsLoRA), per module as `rank_pattern` and `alpha_pattern` say.

use std::{
	collections::{BTreeSet, HashMap},
	path::{Path, PathBuf},
	sync::OnceLock,
	time::SystemTime,
};

use candle_core::{DType, Device, Tensor};
use openledger_primitives::{adapter_content_hash, ContentHash, ADAPTER_FILES};
use serde::Deserialize;

use crate::{
	config::{LlamaConfig, RopeLayout},
	error::{Error, Result},
};

/// A projection of a transformer block that LoRA can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
	/// `self_attn.q_proj`.
	Q,
	/// `self_attn.k_proj`.
	K,
	/// `self_attn.v_proj`.
	V,
	/// `self_attn.o_proj`.
	O,
	/// `mlp.gate_proj`.
	Gate,
	/// `mlp.up_proj`.
	Up,
	/// `mlp.down_proj`.
	Down,
}

impl Projection {
	/// Every projection, in block order.
	pub const ALL: [Projection; 7] = [
		Projection::Q,
		Projection::K,
		Projection::V,
		Projection::O,
		Projection::Gate,
		Projection::Up,
		Projection::Down,
	];

	/// The module's name in a Hugging Face Llama (`q_proj`, ...).
	pub fn hf_name(self) -> &'static str {
		match self {
			Projection::Q => "q_proj",
			Projection::K => "k_proj",
			Projection::V => "v_proj",
			Projection::O => "o_proj",
			Projection::Gate => "gate_proj",
			Projection::Up => "up_proj",
			Projection::Down => "down_proj",
		}
	}

	/// The module's path inside a block (`self_attn.q_proj`, `mlp.up_proj`, ...).
	pub fn hf_path(self) -> &'static str {
		match self {
			Projection::Q => "self_attn.q_proj",
			Projection::K => "self_attn.k_proj",
			Projection::V => "self_attn.v_proj",
			Projection::O => "self_attn.o_proj",
			Projection::Gate => "mlp.gate_proj",
			Projection::Up => "mlp.up_proj",
			Projection::Down => "mlp.down_proj",
		}
	}

	fn from_hf_path(path: &str) -> Option<Self> {
		Self::ALL.into_iter().find(|p| p.hf_path() == path)
	}
}

/// The fields of `adapter_config.json` that change the computation.
#[derive(Debug, Clone, Deserialize)]
pub struct PeftConfig {
	/// `"LORA"`.
	#[serde(default)]
	pub peft_type: Option<String>,
	/// The default rank.
	pub r: usize,
	/// The default alpha.
	pub lora_alpha: f64,
	/// Per-module ranks, keyed by a module name or a suffix of its path.
	#[serde(default)]
	pub rank_pattern: HashMap<String, usize>,
	/// Per-module alphas, keyed like `rank_pattern`.
	#[serde(default)]
	pub alpha_pattern: HashMap<String, f64>,
	/// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
	#[serde(default)]
	pub use_rslora: bool,
	/// DoRA adapters are not supported.
	#[serde(default)]
	pub use_dora: bool,
	/// Weights stored transposed (GPT-2 `Conv1D` style); not used by Llama models.
	#[serde(default)]
	pub fan_in_fan_out: bool,
	/// Trained biases (`"none"` is the only supported value).
	#[serde(default)]
	pub bias: Option<String>,
}

impl PeftConfig {
	/// The value of `pattern` that applies to module `path` (PEFT matches a key against the
	/// whole path or a dotted suffix of it; the longest matching key wins).
	fn lookup<V: Copy>(pattern: &HashMap<String, V>, path: &str) -> Option<V> {
		pattern
			.iter()
			.filter(|(key, _)| path == key.as_str() || path.ends_with(&format!(".{key}")))
			.max_by_key(|(key, _)| key.len())
			.map(|(_, v)| *v)
	}

	/// The scale of module `path` with rank `rank`.
	fn scale(&self, path: &str, rank: usize) -> f64 {
		let alpha = Self::lookup(&self.alpha_pattern, path).unwrap_or(self.lora_alpha);
		if self.use_rslora {
			alpha / (rank as f64).sqrt()
		} else {
			alpha / rank as f64
		}
	}
}

/// One projection's low-rank pair, ready to apply: `x A^T` then `(…) (s B)^T`, in the layout
/// the multi-LoRA kernels read (`openledger_kernels::lora`).
#[derive(Debug, Clone)]
pub struct LoraWeights {
	/// `A`, `[r, in]`, contiguous.
	pub a: Tensor,
	/// `s · B^T`, `[r, out]`, contiguous.
	pub b_t: Tensor,
	/// The rank.
	pub rank: usize,
}

impl LoraWeights {
	/// Inputs of the adapted projection (columns of `A`).
	pub fn in_dim(&self) -> usize {
		self.a.dims().last().copied().unwrap_or(0)
	}

	/// Outputs of the adapted projection (columns of `s · B^T`).
	pub fn out_dim(&self) -> usize {
		self.b_t.dims().last().copied().unwrap_or(0)
	}

	/// The adapter's contribution for `x` (`[tokens, in]`): `[tokens, out]`, with tensor
	/// operations (the CPU path uses the kernels instead).
	pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
		let x = x.to_dtype(self.a.dtype())?;
		Ok(x.matmul(&self.a.t()?)?.matmul(&self.b_t)?)
	}
}

/// An adapter's files as read from its PEFT folder: what the host tier of the adapter cache
/// keeps, so that an adapter evicted from the device comes back without touching the disk.
/// They cannot be changed once read, so their content hash is worked out once, when first
/// asked for.
#[derive(Debug, Clone)]
pub struct AdapterFiles {
	/// `adapter_config.json`.
	config: String,
	/// `adapter_model.safetensors`.
	weights: Vec<u8>,
	/// Their content hash, once worked out.
	hash: OnceLock<ContentHash>,
}

impl AdapterFiles {
	/// Reads the PEFT folder `dir` of the adapter `name`.
	pub fn read(dir: &Path, name: &str) -> Result<Self> {
		Self::from_bytes(read_adapter_files(dir).map_err(|e| adapter_error(name, e))?, name)
	}

	/// The files of the adapter `name` from their bytes ([`read_adapter_files`]'s).
	pub fn from_bytes([config, weights]: [Vec<u8>; 2], name: &str) -> Result<Self> {
		let config = String::from_utf8(config)
			.map_err(|_| adapter_error(name, "adapter_config.json is not UTF-8"))?;
		Ok(Self { config, weights, hash: OnceLock::new() })
	}

	/// These files, whose content hash is already known to be `hash`.
	fn with_hash(self, hash: ContentHash) -> Self {
		Self { hash: OnceLock::from(hash), ..self }
	}

	/// Their content hash ([`adapter_content_hash`]), as the chain names an adapter's files
	/// (hashed on the first call only).
	pub fn content_hash(&self) -> ContentHash {
		*self.hash.get_or_init(|| adapter_content_hash(self.config.as_bytes(), &self.weights))
	}

	/// Whether their content hash has been worked out already.
	#[cfg(test)]
	pub(crate) fn hashed_yet(&self) -> bool {
		self.hash.get().is_some()
	}

	/// Bytes they take.
	pub fn size_bytes(&self) -> usize {
		self.config.len() + self.weights.len()
	}

	/// What the weights say of the adapter `name` before it is built: the ranks of its modules
	/// (the rows of each `lora_A`) and the projections they adapt (in some layer), each in
	/// order.
	pub fn outline(&self, name: &str) -> Result<(Vec<usize>, Vec<Projection>)> {
		let tensors = safetensors::SafeTensors::deserialize(&self.weights)
			.map_err(|e| adapter_error(name, format!("bad adapter_model.safetensors: {e}")))?;
		let (mut ranks, mut adapted) = (BTreeSet::new(), BTreeSet::new());
		for (key, view) in tensors.tensors() {
			let (_, projection, is_a) = parse_key(&key)
				.ok_or_else(|| adapter_error(name, format!("unexpected tensor {key}")))?;
			adapted.insert(projection);
			if is_a {
				ranks.insert(view.shape().first().copied().unwrap_or(0));
			}
		}
		Ok((ranks.into_iter().collect(), adapted.into_iter().collect()))
	}
}

/// A loaded adapter.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
	/// Its name (the folder's name unless given).
	pub name: String,
	layers: Vec<HashMap<Projection, LoraWeights>>,
	/// Bytes its weights take in memory.
	pub size_bytes: usize,
	/// Unique to this load of the adapter (a reload gets a new one): keys and values cached
	/// for prefix sharing are tagged with it.
	pub uid: u64,
}

/// The next [`LoraAdapter::uid`]; 0 stands for the base model.
static NEXT_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Reads an adapter's files in the PEFT folder `dir` ([`ADAPTER_FILES`], in that order), or
/// says which cannot be read.
pub fn read_adapter_files(dir: &Path) -> std::result::Result<[Vec<u8>; 2], String> {
	let read = |file: &str| {
		let path = dir.join(file);
		std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
	};
	Ok([read(ADAPTER_FILES[0])?, read(ADAPTER_FILES[1])?])
}

/// An adapter's files in a folder as their metadata says they are now: for each of
/// [`ADAPTER_FILES`], its size, modification time and, on unix, inode and change time. Files
/// whose stamp is unchanged are taken to be unchanged. On unix a copy that keeps the size and
/// the modification time (a retrained adapter of the same shapes, copied with `cp -p` or
/// `rsync -a`) still changes the stamp: the system sets the change time on any write (no user
/// sets it), and a file put in place by renaming has another inode. So does a `chmod`, `chown`
/// or a new hard link (a reload, harmless); elsewhere the stamp is size and modification time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilesStamp([(u64, Option<SystemTime>, u64, i64); 2]);

impl FilesStamp {
	/// The stamp of the adapter's files in `dir`; an error names the file that cannot be read.
	pub fn of(dir: &Path) -> std::io::Result<Self> {
		let one = |file: &str| {
			let meta = std::fs::metadata(dir.join(file))
				.map_err(|e| std::io::Error::new(e.kind(), format!("{file}: {e}")))?;
			#[cfg(unix)]
			let (inode, changed) = {
				use std::os::unix::fs::MetadataExt;
				let nanos = meta.ctime().saturating_mul(1_000_000_000);
				(meta.ino(), nanos.saturating_add(meta.ctime_nsec()))
			};
			#[cfg(not(unix))]
			let (inode, changed) = (0, 0);
			Ok::<_, std::io::Error>((meta.len(), meta.modified().ok(), inode, changed))
		};
		Ok(Self([one(ADAPTER_FILES[0])?, one(ADAPTER_FILES[1])?]))
	}
}

/// Where the engine reads an adapter's files: its PEFT folder and, for an adapter registered
/// on chain, the content hash its files must have. Whenever the adapter is loaded its files are
/// read from disk and checked again ([`Self::read`]), or taken from host memory and checked
/// ([`Self::verify`]: files read under this hash were hashed when read, others are hashed once),
/// so an adapter with a hash is built only from bytes that hash to it, whatever changes in the
/// folder after it was checked. A source without a hash never hashes anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSource {
	/// The PEFT folder.
	pub dir: PathBuf,
	/// The content hash the files must have ([`AdapterFiles::content_hash`]), if any.
	pub content_hash: Option<ContentHash>,
}

impl AdapterSource {
	/// The adapter in `dir` whose files must hash to `content_hash`.
	pub fn hashed(dir: impl Into<PathBuf>, content_hash: ContentHash) -> Self {
		Self { dir: dir.into(), content_hash: Some(content_hash) }
	}

	/// Whether `files`, read for the adapter `name`, are the ones this source names
	/// ([`Error::AdapterChanged`] if not).
	pub fn verify(&self, name: &str, files: &AdapterFiles) -> Result<()> {
		match self.content_hash {
			Some(_) => self.check_hash(name, files.content_hash()),
			None => Ok(()),
		}
	}

	/// The files of the adapter `name` read from disk, if they are the ones this source names:
	/// for a source with a hash, the bytes read are hashed before anything else is made of
	/// them, and files that are gone, cannot be read or hash to something else are
	/// [`Error::AdapterChanged`] (they were there, and right, when they were checked).
	pub fn read(&self, name: &str) -> Result<AdapterFiles> {
		let Some(expected) = self.content_hash else {
			return AdapterFiles::read(&self.dir, name);
		};
		let bytes = read_adapter_files(&self.dir).map_err(|e| self.changed(name, e))?;
		self.check_hash(name, adapter_content_hash(&bytes[0], &bytes[1]))?;
		Ok(AdapterFiles::from_bytes(bytes, name)?.with_hash(expected))
	}

	/// The error for files of the adapter `name` that cannot be read (`reason`): for a source
	/// with a hash, whose files were there when checked, [`Error::AdapterChanged`].
	pub(crate) fn unreadable(&self, name: &str, reason: impl ToString) -> Error {
		match self.content_hash {
			Some(_) => self.changed(name, reason.to_string()),
			None => adapter_error(name, reason),
		}
	}

	/// Whether files of the adapter `name` that hash to `hash` are the ones this source names.
	fn check_hash(&self, name: &str, hash: ContentHash) -> Result<()> {
		match self.content_hash {
			Some(expected) if hash != expected => Err(self.changed(
				name,
				format!(
					"the files in {} no longer hash to 0x{}, the content hash it is served under",
					self.dir.display(),
					hex::encode(expected)
				),
			)),
			_ => Ok(()),
		}
	}

	/// [`Error::AdapterChanged`]: the files of `name` are not as checked (`what`).
	fn changed(&self, name: &str, what: impl std::fmt::Display) -> Error {
		let reason = format!("{what} (changed since they were checked)");
		Error::AdapterChanged { name: name.to_string(), reason }
	}
}

impl From<PathBuf> for AdapterSource {
	fn from(dir: PathBuf) -> Self {
		Self { dir, content_hash: None }
	}
}

impl From<&Path> for AdapterSource {
	fn from(dir: &Path) -> Self {
		dir.to_path_buf().into()
	}
}

impl From<&PathBuf> for AdapterSource {
	fn from(dir: &PathBuf) -> Self {
		dir.clone().into()
	}
}

fn adapter_error(name: &str, reason: impl ToString) -> Error {
	Error::Adapter { name: name.to_string(), reason: reason.to_string() }
}

/// llama.cpp stores a Llama's Q and K rows permuted so that RoPE can rotate interleaved pairs;
/// an adapter trained on the Hugging Face weights needs its `B` rows permuted the same way.
fn permute_rows_for_interleaved_rope(b: &Tensor, heads: usize) -> Result<Tensor> {
	let (out, r) = b.dims2()?;
	let head_dim = out / heads;
	Ok(b.reshape((heads, 2, head_dim / 2, r))?.transpose(1, 2)?.contiguous()?.reshape((out, r))?)
}

impl LoraAdapter {
	/// Loads a PEFT adapter folder for a base model with `config`, checking every tensor's shape
	/// against the base model (`in_out(layer, projection)` gives a projection's widths).
	pub fn load(
		dir: &Path,
		name: Option<&str>,
		config: &LlamaConfig,
		in_out: impl Fn(usize, Projection) -> Option<(usize, usize)>,
		device: &Device,
	) -> Result<Self> {
		let name = name
			.map(str::to_string)
			.or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
			.unwrap_or_else(|| dir.display().to_string());
		let files = AdapterFiles::read(dir, &name)?;
		Self::from_files(&files, &name, config, in_out, device)
	}

	/// Builds the adapter `name` from its files (already in host memory), checking every
	/// tensor's shape against the base model, with its weights on `device`.
	pub fn from_files(
		files: &AdapterFiles,
		name: &str,
		config: &LlamaConfig,
		in_out: impl Fn(usize, Projection) -> Option<(usize, usize)>,
		device: &Device,
	) -> Result<Self> {
		let name = name.to_string();
		let text = &files.config;
		let peft: PeftConfig = serde_json::from_str(text)
			.map_err(|e| adapter_error(&name, format!("bad adapter_config.json: {e}")))?;
		if let Some(kind) = peft.peft_type.as_deref().filter(|k| *k != "LORA") {
			return Err(adapter_error(&name, format!("peft_type {kind} is not LORA")));
		}
		if peft.use_dora {
			return Err(adapter_error(&name, "DoRA adapters are not supported"));
		}
		if peft.fan_in_fan_out {
			return Err(adapter_error(&name, "fan_in_fan_out adapters are not supported"));
		}
		if peft.bias.as_deref().is_some_and(|b| b != "none") {
			return Err(adapter_error(&name, "adapters with trained biases are not supported"));
		}
		let tensors = safetensors::SafeTensors::deserialize(&files.weights)
			.map_err(|e| adapter_error(&name, format!("bad adapter_model.safetensors: {e}")))?;

		// Pair the A and B matrices of each module.
		let mut pairs: HashMap<(usize, Projection), (Option<Tensor>, Option<Tensor>)> =
			HashMap::new();
		for (key, view) in tensors.tensors() {
			let (layer, projection, is_a) = parse_key(&key)
				.ok_or_else(|| adapter_error(&name, format!("unexpected tensor {key}")))?;
			if layer >= config.num_layers {
				return Err(adapter_error(
					&name,
					format!("{key}: the base model has {} layers", config.num_layers),
				));
			}
			let tensor = to_tensor(&view, device)
				.map_err(|e| adapter_error(&name, format!("{key}: {e}")))?;
			let entry = pairs.entry((layer, projection)).or_default();
			if is_a {
				entry.0 = Some(tensor);
			} else {
				entry.1 = Some(tensor);
			}
		}
		if pairs.is_empty() {
			return Err(adapter_error(&name, "no LoRA weights"));
		}

		let mut layers = vec![HashMap::new(); config.num_layers];
		let mut size_bytes = 0;
		for ((layer, projection), pair) in pairs {
			let path = format!("model.layers.{layer}.{}", projection.hf_path());
			let (Some(a), Some(b)) = pair else {
				return Err(adapter_error(&name, format!("{path}: lora_A or lora_B is missing")));
			};
			let (in_features, out_features) = in_out(layer, projection)
				.ok_or_else(|| adapter_error(&name, format!("{path}: no such projection")))?;
			let (rank, a_in) = a.dims2()?;
			let (b_out, b_rank) = b.dims2()?;
			if rank == 0 || a_in != in_features || b_out != out_features || b_rank != rank {
				return Err(adapter_error(
					&name,
					format!(
						"{path}: lora_A is {rank}x{a_in} and lora_B {b_out}x{b_rank}, the base \
						 projection is {out_features}x{in_features}"
					),
				));
			}
			let declared = PeftConfig::lookup(&peft.rank_pattern, &path).unwrap_or(peft.r);
			if declared != rank {
				return Err(adapter_error(
					&name,
					format!("{path}: the config says rank {declared}, the weights have {rank}"),
				));
			}
			let b = match (config.rope_layout, projection) {
				(RopeLayout::Interleaved, Projection::Q) => {
					permute_rows_for_interleaved_rope(&b, config.num_heads)?
				}
				(RopeLayout::Interleaved, Projection::K) => {
					permute_rows_for_interleaved_rope(&b, config.num_kv_heads)?
				}
				_ => b,
			};
			let scale = peft.scale(&path, rank);
			let weights =
				LoraWeights { a: a.contiguous()?, b_t: (b.t()?.contiguous()? * scale)?, rank };
			size_bytes += (a_in + b_out) * rank * DType::F32.size_in_bytes();
			layers[layer].insert(projection, weights);
		}
		tracing::debug!(adapter = %name, size_bytes, "adapter loaded");
		let uid = NEXT_UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
		Ok(Self { name, layers, size_bytes, uid })
	}

	/// The weights of `projection` in `layer`, if the adapter targets it.
	pub fn weights(&self, layer: usize, projection: Projection) -> Option<&LoraWeights> {
		self.layers.get(layer)?.get(&projection)
	}

	/// Modules the adapter targets.
	pub fn module_count(&self) -> usize {
		self.layers.iter().map(HashMap::len).sum()
	}

	/// The weights of every module the adapter targets.
	pub fn modules(&self) -> impl Iterator<Item = &LoraWeights> {
		self.layers.iter().flat_map(HashMap::values)
	}
}

/// `base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.weight` → `(i, proj,
/// is_a)`.
fn parse_key(key: &str) -> Option<(usize, Projection, bool)> {
	let rest = key.strip_prefix("base_model.model.")?;
	let rest = rest.strip_prefix("model.").unwrap_or(rest);
	let rest = rest.strip_prefix("layers.")?;
	let (layer, rest) = rest.split_once('.')?;
	let layer = layer.parse().ok()?;
	let (module, suffix) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
		(m, true)
	} else {
		(rest.strip_suffix(".lora_B.weight")?, false)
	};
	Some((layer, Projection::from_hf_path(module)?, suffix))
}

fn to_tensor(view: &safetensors::tensor::TensorView<'_>, device: &Device) -> Result<Tensor> {
	let dtype = match view.dtype() {
		safetensors::Dtype::F32 => DType::F32,
		safetensors::Dtype::F16 => DType::F16,
		safetensors::Dtype::BF16 => DType::BF16,
		other => return Err(Error::Format(format!("tensor type {other:?}"))),
	};
	let tensor = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device)?;
	Ok(tensor.to_dtype(DType::F32)?)
}

/// Synthetic PEFT adapters with deterministic weights, for tests and benchmarks (no adapters
/// ship with any model): the same formula as `scripts/reference/hf_reference.py`, so
/// Hugging Face PEFT computes reference outputs for exactly these weights.
pub mod synthetic {
	use std::{collections::BTreeMap, path::Path};

	use super::Projection;
	use crate::{config::LlamaConfig, error::Result};

	/// What to build.
	#[derive(Clone, Debug)]
	pub struct SyntheticAdapter {
		/// Varies the weights between adapters.
		pub seed: u64,
		/// The default rank.
		pub rank: usize,
		/// The default alpha.
		pub alpha: f64,
		/// The projections it targets.
		pub targets: Vec<Projection>,
		/// Per-projection ranks (PEFT `rank_pattern`, keyed by module name).
		pub rank_pattern: BTreeMap<Projection, usize>,
		/// Per-projection alphas (PEFT `alpha_pattern`).
		pub alpha_pattern: BTreeMap<Projection, f64>,
	}

	/// Entry `(i, j)` of the `rows x cols` matrix A (`is_b` false) or B of `projection` in
	/// `layer`.
	pub fn value(
		seed: u64,
		layer: usize,
		projection: Projection,
		is_b: bool,
		(i, j): (usize, usize),
		cols: usize,
	) -> f32 {
		let p = Projection::ALL.iter().position(|q| *q == projection).unwrap_or(0) as f64;
		let m = if is_b { 1.0 } else { 0.0 };
		let amplitude = if is_b { 0.1 } else { 1.0 } / (cols as f64).sqrt();
		let phase = seed as f64 * 0.618 + layer as f64 * 1.3 + p * 2.1 + m * 0.7;
		let (i, j) = (i as f64, j as f64);
		(amplitude * (phase + i * 0.37 + j * 0.11 + i * j * 0.013).sin()) as f32
	}

	/// The `(in, out)` widths of a projection of a Llama with `config`.
	pub fn widths(config: &LlamaConfig, projection: Projection) -> (usize, usize) {
		let q = config.num_heads * config.head_dim;
		let kv = config.num_kv_heads * config.head_dim;
		let (h, f) = (config.hidden_size, config.intermediate_size);
		match projection {
			Projection::Q => (h, q),
			Projection::K | Projection::V => (h, kv),
			Projection::O => (q, h),
			Projection::Gate | Projection::Up => (h, f),
			Projection::Down => (f, h),
		}
	}

	/// Writes the adapter as a PEFT folder (`adapter_config.json` +
	/// `adapter_model.safetensors`, float32) into `dir`.
	pub fn write(adapter: &SyntheticAdapter, config: &LlamaConfig, dir: &Path) -> Result<()> {
		std::fs::create_dir_all(dir)?;
		let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
		for layer in 0..config.num_layers {
			for &projection in &adapter.targets {
				let rank = adapter.rank_pattern.get(&projection).copied().unwrap_or(adapter.rank);
				let (input, output) = widths(config, projection);
				let prefix =
					format!("base_model.model.model.layers.{layer}.{}", projection.hf_path());
				for (is_b, rows, cols) in [(false, rank, input), (true, output, rank)] {
					let mut bytes = Vec::with_capacity(rows * cols * 4);
					for i in 0..rows {
						for j in 0..cols {
							let v = value(adapter.seed, layer, projection, is_b, (i, j), cols);
							bytes.extend_from_slice(&v.to_le_bytes());
						}
					}
					let which = if is_b { "lora_B" } else { "lora_A" };
					tensors.push((format!("{prefix}.{which}.weight"), vec![rows, cols], bytes));
				}
			}
		}
		let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
			.iter()
			.map(|(name, shape, bytes)| {
				safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
					.map(|view| (name.clone(), view))
					.map_err(|e| crate::error::Error::Format(e.to_string()))
			})
			.collect::<Result<_>>()?;
		safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors"))
			.map_err(|e| crate::error::Error::Format(e.to_string()))?;
		let name = |p: &Projection| p.hf_name().to_string();
		let config_json = serde_json::json!({
			"peft_type": "LORA",
			"task_type": "CAUSAL_LM",
			"r": adapter.rank,
			"lora_alpha": adapter.alpha,
			"lora_dropout": 0.0,
			"bias": "none",
			"target_modules": adapter.targets.iter().map(name).collect::<Vec<_>>(),
			"rank_pattern": adapter.rank_pattern.iter().map(|(p, r)| (name(p), *r)).collect::<BTreeMap<_, _>>(),
			"alpha_pattern": adapter.alpha_pattern.iter().map(|(p, a)| (name(p), *a)).collect::<BTreeMap<_, _>>(),
			"use_rslora": false,
			"use_dora": false,
			"fan_in_fan_out": false,
		});
		std::fs::write(
			dir.join("adapter_config.json"),
			serde_json::to_vec_pretty(&config_json)
				.map_err(|e| crate::error::Error::Format(e.to_string()))?,
		)?;
		Ok(())
	}
}

#[cfg(test)]
mod tests {
	use std::collections::BTreeMap;

	use super::{synthetic::SyntheticAdapter, *};

	fn config() -> LlamaConfig {
		LlamaConfig::tiny(RopeLayout::Halves)
	}

	fn spec() -> SyntheticAdapter {
		SyntheticAdapter {
			seed: 3,
			rank: 4,
			alpha: 8.0,
			targets: vec![Projection::Q, Projection::V, Projection::Down],
			rank_pattern: BTreeMap::from([(Projection::V, 2)]),
			alpha_pattern: BTreeMap::from([(Projection::Down, 2.0)]),
		}
	}

	fn load(dir: &Path) -> Result<LoraAdapter> {
		let config = config();
		LoraAdapter::load(
			dir,
			None,
			&config,
			|l, p| (l < config.num_layers).then(|| synthetic::widths(&config, p)),
			&Device::Cpu,
		)
	}

	/// A source with a hash reads only files of that hash, and whatever is wrong with them is
	/// their having changed; files' hash is worked out once and then taken as known.
	#[test]
	fn a_source_with_a_hash_reads_only_files_of_that_hash() {
		let dir = tempfile::tempdir().unwrap();
		let dir = dir.path();
		synthetic::write(&spec(), &config(), dir).unwrap();
		let plain = AdapterSource::from(dir);
		let files = plain.read("a").unwrap();
		let hash = adapter_content_hash(files.config.as_bytes(), &files.weights);
		assert!(!files.hashed_yet(), "a folder alone is not hashed");
		assert_eq!(files.content_hash(), hash);
		// Known, it is what is checked (a stand-in shows it is not worked out again).
		let seeded = files.clone().with_hash([9; 32]);
		assert!(AdapterSource::hashed(dir, [9; 32]).verify("a", &seeded).is_ok());
		let hashed = AdapterSource::hashed(dir, hash);
		assert!(hashed.verify("a", &seeded).is_err());
		let read = hashed.read("a").unwrap();
		assert_eq!((&read.config, &read.weights), (&files.config, &files.weights));
		assert_eq!(read.hash.get(), Some(&hash), "read by hash, the hash is known");
		let changed = |e: Error, says: &str| match e {
			Error::AdapterChanged { name, reason } => {
				assert_eq!(name, "a");
				assert!(reason.contains(says), "{reason}");
			}
			other => panic!("{other:?}"),
		};
		// Another hash; a config that is no longer UTF-8; a file gone.
		changed(
			AdapterSource::hashed(dir, [9; 32]).read("a").unwrap_err(),
			"no longer hash to 0x09",
		);
		let config = dir.join(ADAPTER_FILES[0]);
		std::fs::write(&config, [0xff, 0xfe]).unwrap();
		changed(hashed.read("a").unwrap_err(), "no longer hash to");
		assert!(matches!(plain.read("a"), Err(Error::Adapter { .. })));
		std::fs::remove_file(&config).unwrap();
		changed(hashed.read("a").unwrap_err(), "cannot read");
		assert!(matches!(plain.read("a"), Err(Error::Adapter { .. })));
		changed(hashed.unreadable("a", "gone"), "gone");
		assert!(matches!(plain.unreadable("a", "gone"), Error::Adapter { .. }));
	}

	#[test]
	fn loads_ranks_and_scales_from_the_patterns() {
		let dir = tempfile::tempdir().unwrap();
		synthetic::write(&spec(), &config(), dir.path()).unwrap();
		let adapter = load(dir.path()).unwrap();
		assert_eq!(adapter.module_count(), 6);
		assert_eq!(adapter.weights(0, Projection::Q).unwrap().rank, 4);
		assert_eq!(adapter.weights(1, Projection::V).unwrap().rank, 2);
		assert!(adapter.weights(0, Projection::K).is_none());
		// Down: alpha 2 over rank 4 → scale 0.5; its contribution is 0.5 · B A x.
		let x = Tensor::ones((1, 24), DType::F32, &Device::Cpu).unwrap();
		let got: Vec<f32> = adapter
			.weights(0, Projection::Down)
			.unwrap()
			.forward(&x)
			.unwrap()
			.flatten_all()
			.unwrap()
			.to_vec1()
			.unwrap();
		let a = |i, j| synthetic::value(3, 0, Projection::Down, false, (i, j), 24);
		let b = |i, j| synthetic::value(3, 0, Projection::Down, true, (i, j), 4);
		for (o, g) in got.iter().enumerate() {
			let want: f32 =
				(0..4).map(|r| b(o, r) * (0..24).map(|j| a(r, j)).sum::<f32>()).sum::<f32>() * 0.5;
			assert!((g - want).abs() < 1e-5, "row {o}: {g} vs {want}");
		}
	}

	#[test]
	fn corrupt_or_mismatched_adapters_are_rejected_with_the_reason() {
		let dir = tempfile::tempdir().unwrap();
		let err = load(dir.path()).unwrap_err().to_string();
		assert!(err.contains("adapter_config.json"), "{err}");

		synthetic::write(&spec(), &config(), dir.path()).unwrap();
		let weights = dir.path().join("adapter_model.safetensors");
		let bytes = std::fs::read(&weights).unwrap();
		std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
		let err = load(dir.path()).unwrap_err().to_string();
		assert!(err.contains("bad adapter_model.safetensors"), "{err}");

		// An adapter for a wider model does not fit.
		let mut wide = config();
		wide.hidden_size = 32;
		synthetic::write(&spec(), &wide, dir.path()).unwrap();
		let err = load(dir.path()).unwrap_err().to_string();
		assert!(err.contains("the base projection is"), "{err}");

		// The config's rank disagrees with the weights.
		synthetic::write(&spec(), &config(), dir.path()).unwrap();
		let path = dir.path().join("adapter_config.json");
		let text = std::fs::read_to_string(&path).unwrap().replace("\"r\": 4", "\"r\": 8");
		std::fs::write(&path, text).unwrap();
		let err = load(dir.path()).unwrap_err().to_string();
		assert!(err.contains("the config says rank 8"), "{err}");

		std::fs::write(&path, "{ not json").unwrap();
		let err = load(dir.path()).unwrap_err().to_string();
		assert!(err.contains("bad adapter_config.json"), "{err}");

		std::fs::write(&path, r#"{"r": 4, "lora_alpha": 8, "use_dora": true}"#).unwrap();
		let err = load(dir.path()).unwrap_err().to_string();
		assert!(err.contains("DoRA"), "{err}");
	}

	#[test]
	fn interleaved_rope_permutes_the_rows_of_b() {
		// Two heads of width 4: rows [h0: 0 1 2 3, h1: 4 5 6 7] → [0 2 1 3, 4 6 5 7].
		let b = Tensor::arange(0f32, 8., &Device::Cpu).unwrap().reshape((8, 1)).unwrap();
		let p: Vec<f32> = permute_rows_for_interleaved_rope(&b, 2)
			.unwrap()
			.flatten_all()
			.unwrap()
			.to_vec1()
			.unwrap();
		assert_eq!(p, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
	}

	#[test]
	fn keys_name_layers_and_projections() {
		assert_eq!(
			parse_key("base_model.model.model.layers.12.mlp.down_proj.lora_B.weight"),
			Some((12, Projection::Down, false))
		);
		assert_eq!(
			parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
			Some((0, Projection::Q, true))
		);
		assert_eq!(parse_key("base_model.model.lm_head.lora_A.weight"), None);
		assert_eq!(
			parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"),
			None
		);
	}
}
