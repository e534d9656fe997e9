//! A Llama-family decoder (Llama 2/3, SmolLM2, Mistral, Qwen2): grouped-query attention, RoPE,
//! RMSNorm, SwiGLU, tied or separate output embeddings, with quantized (GGUF) or dense weights.
//!
//! LoRA adapters are never merged into the base weights: each projection adds its adapter's
//! low-rank product on top of the base product, so one set of base weights serves every adapter.

use std::{fs::File, io::BufReader, ops::Range, path::Path, sync::Arc};

use candle_core::{
	quantized::{gguf_file, GgmlDType, QMatMul, QTensor},
	DType, Device, Module, Tensor,
};

use openledger_kernels::{backend::KernelError, cpu_matmul::QuantMatrix, quant::Format};

use crate::{
	config::{LlamaConfig, RopeLayout},
	error::{Error, Result},
	kernel_model::format_of,
	kv_cache::{BlockTable, KvCacheConfig, PagedKvCache},
	lora::{AdapterFiles, LoraAdapter, LoraWeights, Projection},
	tokenizer::Tokenizer,
};

/// How to hold the weights in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
	/// As stored in the file (quantized GGUF blocks stay quantized).
	#[default]
	AsStored,
	/// Dequantized to f32 at load time (for checking the quantized path against a dense one).
	F32,
	/// Quantized at load time to 8 bits (GGUF Q8_0 blocks: 32 weights and one scale).
	Int8,
	/// Quantized at load time to 4 bits (GGUF Q4_1 blocks: 32 weights, a scale and a minimum);
	/// the output projection to 8.
	Int4,
}

impl WeightFormat {
	/// The format of the output projection: 8 bits when the rest is quantized to 4 (as
	/// llama.cpp keeps `output.weight` at higher precision; at 4 bits the logits of a small
	/// model drift by several units).
	fn for_output(self) -> Self {
		match self {
			Self::Int4 => Self::Int8,
			other => other,
		}
	}

	/// The block format weights are quantized to at load time, if any.
	fn quantize_to(self) -> Option<GgmlDType> {
		match self {
			Self::Int8 => Some(GgmlDType::Q8_0),
			Self::Int4 => Some(GgmlDType::Q4_1),
			Self::AsStored | Self::F32 => None,
		}
	}
}

/// A linear layer `y = x W^T (+ b)` over quantized or dense weights.
#[derive(Debug, Clone)]
pub struct Linear {
	weight: Weight,
	bias: Option<Tensor>,
	/// Input width.
	pub in_features: usize,
	/// Output width.
	pub out_features: usize,
}

impl Linear {
	/// From a GGUF tensor, kept as stored or converted to `format`.
	fn new(weight: QTensor, bias: Option<Tensor>, format: WeightFormat) -> Result<Self> {
		match format {
			WeightFormat::AsStored => {
				let (out_features, in_features) = weight.shape().dims2()?;
				let weight = Weight::quantized(weight)?;
				Ok(Self { weight, bias, in_features, out_features })
			}
			_ => Self::from_dense(weight.dequantize(&weight.device())?, bias, format),
		}
	}

	/// From a dense `[out, in]` tensor, kept in f32 or quantized at load time.
	fn from_dense(weight: Tensor, bias: Option<Tensor>, format: WeightFormat) -> Result<Self> {
		let (out_features, in_features) = weight.dims2()?;
		let weight = weight.to_dtype(DType::F32)?;
		let weight = match format.quantize_to() {
			Some(dtype) => {
				if in_features % dtype.block_size() != 0 {
					return Err(Error::Unsupported(format!(
						"quantizing a {out_features}x{in_features} weight: rows must be a \
						 multiple of {} values",
						dtype.block_size()
					)));
				}
				Weight::quantized(QTensor::quantize(&weight, dtype)?)?
			}
			None => Weight::Candle(QMatMul::Tensor(weight)),
		};
		Ok(Self { weight, bias, in_features, out_features })
	}

	/// `x` is `[tokens, in_features]`; returns `[tokens, out_features]`.
	pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
		self.add_bias(self.weight.forward(x)?)
	}

	fn add_bias(&self, y: Tensor) -> Result<Tensor> {
		Ok(match &self.bias {
			Some(bias) => y.broadcast_add(bias)?,
			None => y,
		})
	}

	/// Puts the block weights of `parts` (projections of the same input, such as a layer's
	/// query, key and value) one after the other in one matrix that they share, so that
	/// [`Linear::forward_all`] multiplies by all of them in one product: one pass of the
	/// thread pool instead of one each, which at decode is much of a small product's cost.
	/// Every value stays what each part's own product gives, to the bit. Parts of different
	/// formats or widths, or not held as blocks, are left as they are.
	fn stack(parts: &mut [&mut Linear]) {
		let mut matrices = Vec::with_capacity(parts.len());
		for part in parts.iter() {
			match &part.weight {
				Weight::Blocks { matrix, rows } if rows.len() == matrix.rows() => {
					matrices.push(&**matrix)
				}
				_ => return,
			}
		}
		let Ok(stacked) = QuantMatrix::stack(&matrices) else { return };
		let stacked = Arc::new(stacked);
		let mut at = 0;
		for part in parts.iter_mut() {
			let rows = at..at + part.out_features;
			at = rows.end;
			part.weight = Weight::Blocks { matrix: stacked.clone(), rows };
		}
	}

	/// Each of `parts` applied to `x`: in one product where they share a matrix in order
	/// ([`Linear::stack`]), else one by one. Either way, the same values to the bit.
	fn forward_all<const N: usize>(parts: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
		// The rows the parts take of one matrix, if they take consecutive rows of the same one.
		let shared = parts
			.iter()
			.try_fold(None, |whole: Option<(&Arc<QuantMatrix>, Range<usize>)>, part| {
				let Weight::Blocks { matrix, rows } = &part.weight else { return None };
				match whole {
					None => Some(Some((matrix, rows.clone()))),
					Some((m, r)) if Arc::ptr_eq(m, matrix) && rows.start == r.end => {
						Some(Some((m, r.start..rows.end)))
					}
					Some(_) => None,
				}
			})
			.flatten()
			.filter(|_| N > 1);
		let Some((matrix, rows)) = shared else {
			return try_map(parts, |_, part| part.forward(x));
		};
		let y = Weight::blocks_forward(matrix, rows, x)?;
		let last = y.rank().saturating_sub(1);
		let mut at = 0;
		try_map(parts, |_, part| {
			let own = y.narrow(last, at, part.out_features)?.contiguous()?;
			at += part.out_features;
			part.add_bias(own)
		})
	}
}

/// `f` of each of `items` and its index, in order, stopping at the first error.
fn try_map<T, U, const N: usize>(
	items: [T; N],
	mut f: impl FnMut(usize, T) -> Result<U>,
) -> Result<[U; N]> {
	let out =
		items.into_iter().enumerate().map(|(i, item)| f(i, item)).collect::<Result<Vec<U>>>()?;
	// As many as went in: the conversion cannot fail.
	out.try_into().map_err(|_| Error::Format("a mapped array changed its length".into()))
}

/// Whether candle is asked to hold every quantized matrix dequantized (`CANDLE_DEQUANTIZE_ALL`
/// or `CANDLE_DEQUANTIZE_ALL_F16` set to anything but "" or "0", as candle reads them): then
/// candle's product serves every format, as it does in candle alone, instead of the block
/// product taking some formats out of its hands.
fn candle_dequantizes_all() -> bool {
	["CANDLE_DEQUANTIZE_ALL", "CANDLE_DEQUANTIZE_ALL_F16"]
		.iter()
		.any(|name| std::env::var(name).is_ok_and(|value| !value.is_empty() && value != "0"))
}

/// A linear layer's weight matrix and the product that multiplies by it.
#[derive(Debug, Clone)]
enum Weight {
	/// Q4_0, Q4_1 or Q8_0 blocks on the CPU, multiplied by [`QuantMatrix`]: each block
	/// dequantized once per batch and used for every row in f32 (candle's CPU product redoes an
	/// 8-bit dot product for every row of the batch, and has no vector code for Q4_1). The
	/// weight is `rows` of the matrix, which several projections may share (see
	/// [`Linear::stack`]).
	Blocks { matrix: Arc<QuantMatrix>, rows: Range<usize> },
	/// Dense weights, the K-quants (candle's integer dot products are faster for them at every
	/// batch size measured: `kernels/benches/cpu_matmul.rs`), and other devices: candle's.
	Candle(QMatMul),
}

impl Weight {
	/// Quantized weights, by the block product where it serves the format better on this
	/// device.
	fn quantized(weight: QTensor) -> Result<Self> {
		let format = format_of(weight.dtype())
			.filter(|f| matches!(f, Format::Q4_0 | Format::Q4_1 | Format::Q8_0));
		match format {
			Some(format) if weight.device().is_cpu() && !candle_dequantizes_all() => {
				let (rows, cols) = weight.shape().dims2()?;
				let bytes = weight.data()?.into_owned();
				let matrix =
					QuantMatrix::new(format, rows, cols, bytes).map_err(KernelError::from)?;
				Ok(Self::Blocks { matrix: Arc::new(matrix), rows: 0..rows })
			}
			_ => Ok(Self::Candle(QMatMul::from_qtensor(weight)?)),
		}
	}

	/// `x W^T` over the last dimension of `x`.
	fn forward(&self, x: &Tensor) -> Result<Tensor> {
		match self {
			Self::Candle(weight) => Ok(weight.forward(x)?),
			Self::Blocks { matrix, rows } => Self::blocks_forward(matrix, rows.clone(), x),
		}
	}

	/// `x W[rows]^T` over the last dimension of `x`, by the block product.
	fn blocks_forward(matrix: &QuantMatrix, rows: Range<usize>, x: &Tensor) -> Result<Tensor> {
		if x.dims().last() != Some(&matrix.cols()) {
			return Err(Error::Tensor(candle_core::Error::Msg(format!(
				"a {}x{} weight multiplies rows of {} values, not {:?}",
				rows.len(),
				matrix.cols(),
				matrix.cols(),
				x.dims()
			))));
		}
		if !x.device().is_cpu() {
			return Err(Error::Unsupported(format!(
				"a {}x{} weight held for the CPU multiplies CPU tensors, not {:?} ones",
				rows.len(),
				matrix.cols(),
				x.device()
			)));
		}
		let dtype = x.dtype();
		let x = x.to_dtype(DType::F32)?.contiguous()?;
		let mut dims = x.dims().to_vec();
		let n = x.elem_count() / matrix.cols();
		let mut y = vec![0f32; n * rows.len()];
		{
			let (guard, layout) = x.storage_and_layout();
			let values = cpu_values(&guard, layout)?;
			if let Some(last) = dims.last_mut() {
				*last = rows.len();
			}
			matrix.matmul_rows(rows, values, &mut y).map_err(KernelError::from)?;
		}
		Ok(Tensor::from_vec(y, dims, x.device())?.to_dtype(dtype)?)
	}
}

/// One transformer block.
#[derive(Debug, Clone)]
struct Block {
	attn_norm: Tensor,
	q: Linear,
	k: Linear,
	v: Linear,
	o: Linear,
	ffn_norm: Tensor,
	gate: Linear,
	up: Linear,
	down: Linear,
}

/// Precomputed RoPE tables, `[positions, rotary_dim / 2]`.
#[derive(Debug, Clone)]
struct Rope {
	cos: Tensor,
	sin: Tensor,
	layout: RopeLayout,
}

impl Rope {
	fn new(config: &LlamaConfig, device: &Device) -> Result<Self> {
		let half = config.head_dim / 2;
		let inv_freq: Vec<f32> = (0..half)
			.map(|i| 1.0 / config.rope_theta.powf(2.0 * i as f32 / config.head_dim as f32))
			.collect();
		let positions = config.context_length;
		let mut angles = Vec::with_capacity(positions * half);
		for p in 0..positions {
			let p = p as f32 / config.rope_scale;
			angles.extend(inv_freq.iter().map(|f| p * f));
		}
		let angles = Tensor::from_vec(angles, (positions, half), device)?;
		Ok(Self { cos: angles.cos()?, sin: angles.sin()?, layout: config.rope_layout })
	}

	/// Rotates `x` (`[1, heads, tokens, head_dim]`) for positions `start..start + tokens`.
	fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
		let tokens = x.dim(2)?;
		let cos = self.cos.narrow(0, start, tokens)?;
		let sin = self.sin.narrow(0, start, tokens)?;
		let x = x.contiguous()?;
		Ok(match self.layout {
			RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?,
			RopeLayout::Halves => candle_nn::rotary_emb::rope(&x, &cos, &sin)?,
		})
	}
}

/// One sequence's cache with a pool of its own, for serving a single request (a server shares
/// one [`PagedKvCache`] among all its sequences instead).
#[derive(Debug)]
pub struct KvCache {
	pool: PagedKvCache,
	table: BlockTable,
}

impl KvCache {
	/// A cache for up to `tokens` tokens of one sequence of `model`.
	pub fn new(model: &Llama, tokens: usize) -> Result<Self> {
		let config = KvCacheConfig::for_tokens(tokens, KvCacheConfig::DEFAULT_BLOCK_SIZE);
		Ok(Self {
			pool: PagedKvCache::new(&model.config, config, &model.device)?,
			table: BlockTable::new(0),
		})
	}

	/// Tokens cached.
	pub fn len(&self) -> usize {
		self.table.len()
	}

	/// Whether nothing is cached.
	pub fn is_empty(&self) -> bool {
		self.table.is_empty()
	}
}

/// One sequence's part of a batch step (see [`Llama::forward_batch`]).
pub struct SequenceInput<'a> {
	/// The sequence's new tokens: its whole prompt (or what of it is not cached) at prefill,
	/// one token at decode.
	pub tokens: &'a [u32],
	/// The blocks of its keys and values so far; extended by the step.
	pub table: &'a mut BlockTable,
	/// The adapter it is served with, if any.
	pub adapter: Option<&'a LoraAdapter>,
	/// Whether to return the logits of every new position, or only of the last.
	pub all_logits: bool,
}

/// The sequences of a batch as row segments, each with its adapter.
///
/// Each sequence's adapter product is added to its rows only (SGMV for prefill segments, BGMV
/// for one row per sequence at decode). On the CPU one call of the multi-LoRA kernel
/// (`openledger_kernels::lora::sgmv`) does every segment of a projection, each row alone in a
/// fixed order; elsewhere, tensor operations per segment with the shapes the sequence has when
/// served alone. Either way every request's output is bit-identical whatever else shares its
/// batch (batch invariance), which re-execution checks of a worker's claims rely on: a matrix
/// product over the rows of several sequences at once sums in a different order, and the 8-bit
/// quantization of activations downstream amplifies such last-bit differences into visible ones.
struct Segments<'a> {
	/// `(adapter, first row, rows)` of each sequence, in batch order.
	segments: Vec<(Option<&'a LoraAdapter>, usize, usize)>,
}

impl<'a> Segments<'a> {
	fn new(batch: &[SequenceInput<'a>], spans: &[(usize, usize, usize)]) -> Self {
		let segments =
			batch.iter().zip(spans).map(|(seq, &(row, t, _))| (seq.adapter, row, t)).collect();
		Self { segments }
	}

	/// The base projection of every row, plus each sequence's adapter product on its rows.
	fn project(
		&self,
		base: &Linear,
		x: &Tensor,
		layer: usize,
		which: Projection,
	) -> Result<Tensor> {
		self.adapt(base.forward(x)?, x, layer, which)
	}

	/// [`Segments::project`] for several projections of the same input (`which` naming
	/// `bases`), whose base products are one product where they share a matrix.
	fn project_all<const N: usize>(
		&self,
		bases: [&Linear; N],
		x: &Tensor,
		layer: usize,
		which: [Projection; N],
	) -> Result<[Tensor; N]> {
		let ys = Linear::forward_all(bases, x)?;
		try_map(ys, |i, y| self.adapt(y, x, layer, which[i]))
	}

	/// `y` (the base projection `which` of `x`) plus each sequence's adapter product on its
	/// rows.
	fn adapt(&self, y: Tensor, x: &Tensor, layer: usize, which: Projection) -> Result<Tensor> {
		let pairs: Vec<(Range<usize>, &LoraWeights)> = self
			.segments
			.iter()
			.filter_map(|&(adapter, row, t)| Some((row..row + t, adapter?.weights(layer, which)?)))
			.collect();
		if pairs.is_empty() {
			return Ok(y);
		}
		if x.device().is_cpu() {
			return cpu_sgmv(x, y, &pairs);
		}
		// Elsewhere, with tensor operations per segment (the GPU kernels replace this).
		let mut pieces = Vec::with_capacity(self.segments.len());
		let mut at = 0;
		for (rows, weights) in &pairs {
			if rows.start > at {
				pieces.push(y.narrow(0, at, rows.start - at)?);
			}
			let base_rows = y.narrow(0, rows.start, rows.len())?;
			pieces.push((base_rows + weights.forward(&x.narrow(0, rows.start, rows.len())?)?)?);
			at = rows.end;
		}
		if at < y.dim(0)? {
			pieces.push(y.narrow(0, at, y.dim(0)? - at)?);
		}
		Ok(Tensor::cat(&pieces, 0)?)
	}
}

/// Reads a contiguous f32 CPU tensor's values in place.
fn cpu_values<'g>(
	guard: &'g candle_core::Storage,
	layout: &candle_core::Layout,
) -> Result<&'g [f32]> {
	match guard {
		candle_core::Storage::Cpu(storage) => {
			let values = storage.as_slice::<f32>()?;
			let start = layout.start_offset();
			let len = layout.shape().elem_count();
			values
				.get(start..start + len)
				.ok_or_else(|| Error::Format("tensor out of bounds".into()))
		}
		_ => Err(Error::Unsupported("the CPU multi-LoRA kernel needs CPU tensors".into())),
	}
}

/// Adds each segment's adapter product to its rows of `y`, in place, by the CPU multi-LoRA
/// kernel (no copy of `y` out of its tensor and back).
struct AddLora<'a> {
	pairs: &'a [(Range<usize>, &'a LoraWeights)],
}

impl candle_core::InplaceOp2 for AddLora<'_> {
	fn name(&self) -> &'static str {
		"multi-lora-sgmv"
	}

	fn cpu_fwd(
		&self,
		y: &mut candle_core::CpuStorage,
		y_layout: &candle_core::Layout,
		x: &candle_core::CpuStorage,
		x_layout: &candle_core::Layout,
	) -> candle_core::Result<()> {
		let (Some((y_start, y_end)), Some((x_start, x_end))) =
			(y_layout.contiguous_offsets(), x_layout.contiguous_offsets())
		else {
			candle_core::bail!("the multi-LoRA kernel needs contiguous tensors");
		};
		let (_, in_dim) = x_layout.shape().dims2()?;
		let (_, out_dim) = y_layout.shape().dims2()?;
		let x = &x.as_slice::<f32>()?[x_start..x_end];
		let y = match y {
			candle_core::CpuStorage::F32(values) => &mut values[y_start..y_end],
			_ => candle_core::bail!("the multi-LoRA kernel needs f32 outputs"),
		};
		let guards: Vec<_> = self
			.pairs
			.iter()
			.map(|(_, w)| (w.a.storage_and_layout(), w.b_t.storage_and_layout()))
			.collect();
		let mut segments = Vec::with_capacity(self.pairs.len());
		for ((rows, weights), ((a, a_layout), (b, b_layout))) in self.pairs.iter().zip(&guards) {
			let pair = openledger_kernels::lora::LoraPair {
				a: cpu_values(a, a_layout).map_err(|e| candle_core::Error::Msg(e.to_string()))?,
				b_t: cpu_values(b, b_layout).map_err(|e| candle_core::Error::Msg(e.to_string()))?,
				rank: weights.rank,
			};
			segments.push(openledger_kernels::lora::Segment { rows: rows.clone(), pair });
		}
		openledger_kernels::lora::sgmv(x, in_dim, y, out_dim, &segments)
			.map_err(|e| candle_core::Error::Msg(e.to_string()))
	}
}

/// `y` plus each segment's adapter product on its rows, by the CPU multi-LoRA kernel.
fn cpu_sgmv(x: &Tensor, y: Tensor, pairs: &[(Range<usize>, &LoraWeights)]) -> Result<Tensor> {
	let x = x.to_dtype(DType::F32)?.contiguous()?;
	// `y` is the base product just computed: a fresh tensor no one else holds.
	let y = y.to_dtype(DType::F32)?.contiguous()?;
	y.inplace_op2(&x, &AddLora { pairs })?;
	Ok(y)
}

/// A loaded model.
#[derive(Debug, Clone)]
pub struct Llama {
	/// Its hyper-parameters.
	pub config: LlamaConfig,
	/// How its weights are held.
	pub format: WeightFormat,
	embeddings: Tensor,
	blocks: Vec<Block>,
	norm: Tensor,
	lm_head: Linear,
	rope: Rope,
	device: Device,
}

/// Where a model's tensors come from, by role: a GGUF file or a Hugging Face folder.
trait WeightSource {
	/// The token embeddings (dense), and the output projection: its own, or tied to them.
	fn embeddings_and_output(&mut self, format: WeightFormat) -> Result<(Tensor, Linear)>;
	/// The final norm.
	fn final_norm(&mut self) -> Result<Tensor>;
	/// Block `layer`'s norm before attention (`ffn` false) or before the MLP.
	fn norm(&mut self, layer: usize, ffn: bool) -> Result<Tensor>;
	/// Block `layer`'s projection `which`, with its bias if it has one.
	fn linear(&mut self, layer: usize, which: Projection, format: WeightFormat) -> Result<Linear>;
}

/// Reads the tensors of a GGUF file.
pub(crate) struct GgufReader {
	pub(crate) content: gguf_file::Content,
	reader: BufReader<File>,
	device: Device,
}

impl GgufReader {
	/// Opens the GGUF file at `path`, its tensors to be read onto `device`, with the model
	/// configuration and the tokenizer in its metadata.
	pub(crate) fn open(path: &Path, device: &Device) -> Result<(Self, LlamaConfig, Tokenizer)> {
		let file = File::open(path)
			.map_err(|e| Error::Format(format!("cannot open {}: {e}", path.display())))?;
		let mut reader = BufReader::new(file);
		let content = gguf_file::Content::read(&mut reader)
			.map_err(|e| Error::Format(format!("{} is not a GGUF file: {e}", path.display())))?;
		let config = LlamaConfig::from_gguf(&content.metadata)?;
		let tokenizer = Tokenizer::from_gguf(&content.metadata)?;
		Ok((Self { content, reader, device: device.clone() }, config, tokenizer))
	}

	pub(crate) fn tensor(&mut self, name: &str) -> Result<QTensor> {
		self.content
			.tensor(&mut self.reader, name, &self.device)
			.map_err(|e| Error::Format(format!("tensor {name}: {e}")))
	}

	fn optional(&mut self, name: &str) -> Result<Option<QTensor>> {
		if self.content.tensor_infos.contains_key(name) {
			self.tensor(name).map(Some)
		} else {
			Ok(None)
		}
	}

	pub(crate) fn dense(&mut self, name: &str) -> Result<Tensor> {
		Ok(self.tensor(name)?.dequantize(&self.device)?)
	}
}

impl WeightSource for GgufReader {
	fn embeddings_and_output(&mut self, format: WeightFormat) -> Result<(Tensor, Linear)> {
		let format = format.for_output();
		let token_embd = self.tensor("token_embd.weight")?;
		let embeddings = token_embd.dequantize(&self.device)?;
		let output = match self.optional("output.weight")? {
			Some(output) => Linear::new(output, None, format)?,
			None => Linear::new(token_embd, None, format)?,
		};
		Ok((embeddings, output))
	}

	fn final_norm(&mut self) -> Result<Tensor> {
		self.dense("output_norm.weight")
	}

	fn norm(&mut self, layer: usize, ffn: bool) -> Result<Tensor> {
		self.dense(&format!("blk.{layer}.{}_norm.weight", if ffn { "ffn" } else { "attn" }))
	}

	fn linear(&mut self, layer: usize, which: Projection, format: WeightFormat) -> Result<Linear> {
		let name = match which {
			Projection::Q => "attn_q",
			Projection::K => "attn_k",
			Projection::V => "attn_v",
			Projection::O => "attn_output",
			Projection::Gate => "ffn_gate",
			Projection::Up => "ffn_up",
			Projection::Down => "ffn_down",
		};
		let name = format!("blk.{layer}.{name}");
		let weight = self.tensor(&format!("{name}.weight"))?;
		let bias = match self.optional(&format!("{name}.bias"))? {
			Some(bias) => Some(bias.dequantize(&self.device)?),
			None => None,
		};
		Linear::new(weight, bias, format)
	}
}

/// Reads the tensors of a Hugging Face folder (`model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`), converting them to f32 on the device.
struct SafetensorsReader {
	tensors: std::collections::HashMap<String, Tensor>,
	device: Device,
}

impl SafetensorsReader {
	fn open(dir: &Path, device: &Device) -> Result<Self> {
		let index = dir.join("model.safetensors.index.json");
		let files: Vec<std::path::PathBuf> = if index.exists() {
			let text = std::fs::read_to_string(&index)?;
			let parsed: serde_json::Value = serde_json::from_str(&text)
				.map_err(|e| Error::Format(format!("{}: {e}", index.display())))?;
			let map = parsed
				.get("weight_map")
				.and_then(|m| m.as_object())
				.ok_or_else(|| Error::Format(format!("{} has no weight_map", index.display())))?;
			let shards: std::collections::BTreeSet<&str> =
				map.values().filter_map(|v| v.as_str()).collect();
			shards.into_iter().map(|f| dir.join(f)).collect()
		} else {
			vec![dir.join("model.safetensors")]
		};
		let mut tensors = std::collections::HashMap::new();
		for file in files {
			let loaded = candle_core::safetensors::load(&file, &Device::Cpu)
				.map_err(|e| Error::Format(format!("{}: {e}", file.display())))?;
			tensors.extend(loaded);
		}
		Ok(Self { tensors, device: device.clone() })
	}

	fn take(&mut self, name: &str) -> Result<Tensor> {
		let tensor = self
			.tensors
			.remove(name)
			.ok_or_else(|| Error::Format(format!("the checkpoint has no tensor {name}")))?;
		Ok(tensor.to_dtype(DType::F32)?.to_device(&self.device)?)
	}
}

impl WeightSource for SafetensorsReader {
	fn embeddings_and_output(&mut self, format: WeightFormat) -> Result<(Tensor, Linear)> {
		let embeddings = self.take("model.embed_tokens.weight")?;
		let output = if self.tensors.contains_key("lm_head.weight") {
			self.take("lm_head.weight")?
		} else {
			embeddings.clone()
		};
		Ok((embeddings, Linear::from_dense(output, None, format.for_output())?))
	}

	fn final_norm(&mut self) -> Result<Tensor> {
		self.take("model.norm.weight")
	}

	fn norm(&mut self, layer: usize, ffn: bool) -> Result<Tensor> {
		let which = if ffn { "post_attention_layernorm" } else { "input_layernorm" };
		self.take(&format!("model.layers.{layer}.{which}.weight"))
	}

	fn linear(&mut self, layer: usize, which: Projection, format: WeightFormat) -> Result<Linear> {
		let name = format!("model.layers.{layer}.{}", which.hf_path());
		let weight = self.take(&format!("{name}.weight"))?;
		let bias_name = format!("{name}.bias");
		let bias =
			if self.tensors.contains_key(&bias_name) { Some(self.take(&bias_name)?) } else { None };
		Linear::from_dense(weight, bias, format)
	}
}

impl Llama {
	/// Loads a model: a GGUF file (with the tokenizer in its metadata), or a Hugging Face
	/// folder (`config.json`, safetensors, `tokenizer.json`).
	pub fn load(path: &Path, device: &Device, format: WeightFormat) -> Result<(Self, Tokenizer)> {
		if path.is_dir() {
			Self::from_folder(path, device, format)
		} else {
			Self::from_gguf(path, device, format)
		}
	}

	/// Loads a GGUF model and the tokenizer in its metadata, showing progress on stderr.
	pub fn from_gguf(
		path: &Path,
		device: &Device,
		format: WeightFormat,
	) -> Result<(Self, Tokenizer)> {
		let (mut gguf, config, tokenizer) = GgufReader::open(path, device)?;
		let model = Self::build(config, &mut gguf, format, path, device)?;
		Ok((model, tokenizer))
	}

	/// Loads a Hugging Face folder: `config.json`, `model.safetensors` (or shards with
	/// `model.safetensors.index.json`), `tokenizer.json` (and `tokenizer_config.json`).
	pub fn from_folder(
		dir: &Path,
		device: &Device,
		format: WeightFormat,
	) -> Result<(Self, Tokenizer)> {
		let config_path = dir.join("config.json");
		let text = std::fs::read_to_string(&config_path)
			.map_err(|e| Error::Format(format!("cannot read {}: {e}", config_path.display())))?;
		let config = LlamaConfig::from_hf_json(&text)?;
		let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
		let mut source = SafetensorsReader::open(dir, device)?;
		let model = Self::build(config, &mut source, format, dir, device)?;
		Ok((model, tokenizer))
	}

	/// Assembles the model from `source`, checking shapes, showing progress on stderr.
	fn build(
		config: LlamaConfig,
		source: &mut impl WeightSource,
		format: WeightFormat,
		path: &Path,
		device: &Device,
	) -> Result<Self> {
		let progress = indicatif::ProgressBar::new(config.num_layers as u64 + 2)
			.with_style(
				indicatif::ProgressStyle::with_template(
					"loading {msg} {bar:30} {pos}/{len} layers",
				)
				.unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
			)
			.with_message(
				path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
			);
		let (embeddings, lm_head) = source.embeddings_and_output(format)?;
		let (vocab, hidden) = embeddings.dims2()?;
		if hidden != config.hidden_size || vocab != config.vocab_size {
			return Err(Error::Format(format!(
				"the token embeddings are {vocab}x{hidden}, the configuration says {}x{}",
				config.vocab_size, config.hidden_size
			)));
		}
		let norm = source.final_norm()?;
		progress.inc(1);
		let mut blocks = Vec::with_capacity(config.num_layers);
		for i in 0..config.num_layers {
			let mut block = Block {
				attn_norm: source.norm(i, false)?,
				q: source.linear(i, Projection::Q, format)?,
				k: source.linear(i, Projection::K, format)?,
				v: source.linear(i, Projection::V, format)?,
				o: source.linear(i, Projection::O, format)?,
				ffn_norm: source.norm(i, true)?,
				gate: source.linear(i, Projection::Gate, format)?,
				up: source.linear(i, Projection::Up, format)?,
				down: source.linear(i, Projection::Down, format)?,
			};
			let q_width = config.num_heads * config.head_dim;
			let kv_width = config.num_kv_heads * config.head_dim;
			if block.q.out_features != q_width || block.k.out_features != kv_width {
				return Err(Error::Format(format!(
					"layer {i}: attention projections do not match {} heads of {}",
					config.num_heads, config.head_dim
				)));
			}
			Linear::stack(&mut [&mut block.q, &mut block.k, &mut block.v]);
			Linear::stack(&mut [&mut block.gate, &mut block.up]);
			blocks.push(block);
			progress.inc(1);
		}
		let rope = Rope::new(&config, device)?;
		progress.inc(1);
		progress.finish_and_clear();
		tracing::info!(
			model = %path.display(),
			layers = config.num_layers,
			hidden = config.hidden_size,
			heads = config.num_heads,
			kv_heads = config.num_kv_heads,
			?format,
			"model loaded"
		);
		Ok(Self { config, format, embeddings, blocks, norm, lm_head, rope, device: device.clone() })
	}

	/// The device the weights live on.
	pub fn device(&self) -> &Device {
		&self.device
	}

	/// The base projection `which` of block `layer` (for adapters to check their shapes).
	pub fn projection(&self, layer: usize, which: Projection) -> Option<&Linear> {
		let block = self.blocks.get(layer)?;
		Some(match which {
			Projection::Q => &block.q,
			Projection::K => &block.k,
			Projection::V => &block.v,
			Projection::O => &block.o,
			Projection::Gate => &block.gate,
			Projection::Up => &block.up,
			Projection::Down => &block.down,
		})
	}

	/// The input and output widths of projection `which` of block `layer`, which an adapter's
	/// tensors are checked against.
	fn projection_widths(&self, layer: usize, which: Projection) -> Option<(usize, usize)> {
		self.projection(layer, which).map(|l| (l.in_features, l.out_features))
	}

	/// Loads the PEFT adapter folder `dir` for this model (named `name`, or after its folder),
	/// checking every tensor against the base projections, with its weights on the model's
	/// device.
	pub fn load_adapter(&self, dir: &Path, name: Option<&str>) -> Result<LoraAdapter> {
		LoraAdapter::load(
			dir,
			name,
			&self.config,
			|layer, p| self.projection_widths(layer, p),
			&self.device,
		)
	}

	/// Builds the adapter `name` for this model from its files (already in host memory).
	pub fn adapter_from_files(&self, name: &str, files: &AdapterFiles) -> Result<LoraAdapter> {
		LoraAdapter::from_files(
			files,
			name,
			&self.config,
			|layer, p| self.projection_widths(layer, p),
			&self.device,
		)
	}

	/// Runs `tokens` (the next tokens of one sequence) through the model, appending their keys
	/// and values to `cache`, with `adapter` applied on top of the base weights. Returns the
	/// logits `[tokens, vocab]` of every position when `all_logits`, else of the last one
	/// (`[1, vocab]`).
	pub fn forward(
		&self,
		tokens: &[u32],
		cache: &mut KvCache,
		adapter: Option<&LoraAdapter>,
		all_logits: bool,
	) -> Result<Tensor> {
		let mut batch = [SequenceInput { tokens, table: &mut cache.table, adapter, all_logits }];
		let mut out = self.forward_batch(&mut cache.pool, &mut batch)?;
		out.pop().ok_or_else(|| Error::Request("empty batch".into()))
	}

	/// Runs one step of a batch of sequences, each with its own new tokens (a whole prompt, or
	/// one decoded token), its own cache and its own adapter or none. The base weights are
	/// applied to every row of the batch at once; each adapter's low-rank product is computed
	/// on the rows of the sequences that use it (see [`Segments`]); attention is per sequence.
	/// Keys and values go to `cache`, in blocks reserved here for the sequences that still need
	/// them (a scheduler reserves them beforehand; [`Error::CacheFull`] otherwise).
	/// Returns each sequence's logits as [`Llama::forward`] does.
	pub fn forward_batch(
		&self,
		cache: &mut PagedKvCache,
		batch: &mut [SequenceInput<'_>],
	) -> Result<Vec<Tensor>> {
		if self.device.is_cpu() {
			// On a thread of rayon's pool, the calling thread waiting: the step's products
			// (about 120 a token on SmolLM2) are then split among the pool's threads from
			// inside it, instead of each putting the calling thread to sleep on a futex and
			// waking it when done while the pool's idle threads spin beside it on the same
			// cores. 1.24x decode and 1.27x prefill tokens/s on 2 cores, a third of the system
			// time (`scripts/ab-generate.sh`, docs/BENCHMARKS.md).
			rayon::scope(|_| self.forward_batch_here(cache, batch))
		} else {
			self.forward_batch_here(cache, batch)
		}
	}

	/// [`Llama::forward_batch`] on the calling thread.
	fn forward_batch_here(
		&self,
		cache: &mut PagedKvCache,
		batch: &mut [SequenceInput<'_>],
	) -> Result<Vec<Tensor>> {
		let cfg = &self.config;
		let mut spans = Vec::with_capacity(batch.len());
		let mut ids = Vec::new();
		for seq in batch.iter_mut() {
			let t = seq.tokens.len();
			if t == 0 {
				return Err(Error::Request("a sequence has no tokens to run".into()));
			}
			let start = seq.table.len();
			if start + t > cfg.context_length {
				return Err(Error::Request(format!(
					"{} tokens exceed the model's context of {}",
					start + t,
					cfg.context_length
				)));
			}
			if let Some(&bad) = seq.tokens.iter().find(|&&id| id as usize >= cfg.vocab_size) {
				return Err(Error::Request(format!("token id {bad} is outside the vocabulary")));
			}
			spans.push((ids.len(), t, start));
			ids.extend_from_slice(seq.tokens);
		}
		if batch.is_empty() {
			return Ok(Vec::new());
		}
		// Every sequence's blocks, and the pool slots of all its tokens (cached and new).
		let mut slots = Vec::with_capacity(batch.len());
		for (seq, &(_, t, start)) in batch.iter_mut().zip(&spans) {
			cache.reserve(seq.table, t)?;
			slots.push(Tensor::new(cache.slots(seq.table, 0, start + t).as_slice(), &self.device)?);
		}
		let segments = Segments::new(batch, &spans);
		let ids = Tensor::new(ids.as_slice(), &self.device)?;
		let mut x = self.embeddings.index_select(&ids, 0)?;
		let eps = cfg.rms_norm_eps as f32;
		for (l, block) in self.blocks.iter().enumerate() {
			let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, eps)?;
			let [q, k, v] = segments.project_all(
				[&block.q, &block.k, &block.v],
				&h,
				l,
				[Projection::Q, Projection::K, Projection::V],
			)?;
			let mut outputs = Vec::with_capacity(batch.len());
			for ((seq, &(row, t, start)), slots) in batch.iter().zip(&spans).zip(&slots) {
				let (q, k, v) = (q.narrow(0, row, t)?, k.narrow(0, row, t)?, v.narrow(0, row, t)?);
				let at = Attend { layer: l, start, table: &*seq.table, slots };
				outputs.push(self.attention(&q, &k, &v, cache, at)?);
			}
			let attn =
				if outputs.len() == 1 { outputs.remove(0) } else { Tensor::cat(&outputs, 0)? };
			let attn = segments.project(&block.o, &attn, l, Projection::O)?;
			x = (x + attn)?;
			let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, eps)?;
			let [gate, up] = segments.project_all(
				[&block.gate, &block.up],
				&h,
				l,
				[Projection::Gate, Projection::Up],
			)?;
			let mlp = (candle_nn::ops::silu(&gate)? * up)?;
			let down = segments.project(&block.down, &mlp, l, Projection::Down)?;
			x = (x + down)?;
		}
		// The rows whose logits are wanted, run through the head together.
		let mut rows = Vec::new();
		let mut counts = Vec::with_capacity(batch.len());
		for (seq, &(row, t, _)) in batch.iter_mut().zip(&spans) {
			cache.commit(seq.table, seq.tokens);
			let wanted = if seq.all_logits { row..row + t } else { row + t - 1..row + t };
			counts.push(wanted.len());
			rows.extend(wanted.map(|r| r as u32));
		}
		let rows = Tensor::new(rows.as_slice(), &self.device)?;
		let x = candle_nn::ops::rms_norm(&x.index_select(&rows, 0)?, &self.norm, eps)?;
		let logits = self.lm_head.forward(&x)?.to_dtype(DType::F32)?;
		let mut out = Vec::with_capacity(counts.len());
		let mut at = 0;
		for n in counts {
			out.push(logits.narrow(0, at, n)?);
			at += n;
		}
		Ok(out)
	}

	/// Causal grouped-query attention of one sequence's new rows (`q`, `k`, `v`: `[t, width]`)
	/// over its cached keys and values: the new keys and values are written to their blocks,
	/// then all of the sequence's are gathered back. Returns `[t, heads * head_dim]`.
	fn attention(
		&self,
		q: &Tensor,
		k: &Tensor,
		v: &Tensor,
		cache: &PagedKvCache,
		at: Attend<'_>,
	) -> Result<Tensor> {
		let cfg = &self.config;
		let start = at.start;
		let t = q.dim(0)?;
		let heads = |x: &Tensor, n: usize| -> Result<Tensor> {
			Ok(x.reshape((1, t, n, cfg.head_dim))?.transpose(1, 2)?.contiguous()?)
		};
		let q = self.rope.apply(&heads(q, cfg.num_heads)?, start)?;
		let k = self.rope.apply(&heads(k, cfg.num_kv_heads)?, start)?;
		let v = heads(v, cfg.num_kv_heads)?;
		let kv_width = cfg.num_kv_heads * cfg.head_dim;
		let rows = |x: &Tensor| -> Result<Tensor> {
			Ok(x.squeeze(0)?.transpose(0, 1)?.reshape((t, kv_width))?)
		};
		cache.write(at.layer, at.table, start, &rows(&k)?, &rows(&v)?)?;
		let (k, v) = cache.gather(at.layer, at.slots)?;
		let total = start + t;
		let heads_of = |x: Tensor| -> Result<Tensor> {
			Ok(x.reshape((total, cfg.num_kv_heads, cfg.head_dim))?.transpose(0, 1)?.contiguous()?)
		};
		let (k, v) = (heads_of(k)?, heads_of(v)?); // [kv_heads, total, head_dim]
											 // Grouped-query attention: each key/value head serves `group` query heads.
		let group = cfg.group_size();
		let scale = 1.0 / (cfg.head_dim as f64).sqrt();
		let q = q.squeeze(0)?.transpose(0, 1)?.contiguous()?.reshape((
			t,
			cfg.num_kv_heads,
			group,
			cfg.head_dim,
		))?;
		// Row by row, each over exactly the keys it sees (causality, and the sliding window if
		// the model has one, without a mask): a token's attention then has the same shapes —
		// and the same float results — whether it is computed in a whole prompt, in a chunk of
		// one, or alone at decode.
		let mut rows = Vec::with_capacity(t);
		for i in 0..t {
			let end = start + i + 1;
			let first = cfg.sliding_window.map_or(0, |w| end.saturating_sub(w));
			let (k, v) = (k.narrow(1, first, end - first)?, v.narrow(1, first, end - first)?);
			let scores = (q.get(i)?.matmul(&k.t()?)? * scale)?; // [kv_heads, group, keys]
			let probs = candle_nn::ops::softmax_last_dim(&scores)?;
			rows.push(probs.matmul(&v)?.reshape((1, cfg.num_heads * cfg.head_dim))?);
		}
		Ok(if rows.len() == 1 { rows.remove(0) } else { Tensor::cat(&rows, 0)? })
	}
}

/// Where one sequence's attention reads and writes the paged cache.
struct Attend<'a> {
	layer: usize,
	/// Tokens cached before this step.
	start: usize,
	table: &'a BlockTable,
	/// Pool slots of the sequence's tokens, cached and new.
	slots: &'a Tensor,
}

#[cfg(test)]
mod tests {
	use super::*;

	/// Relative error of a load-time quantized projection against the f32 one.
	fn relative_error(format: WeightFormat) -> f32 {
		let device = Device::Cpu;
		let w = Tensor::randn(0f32, 0.05, (96, 256), &device).unwrap();
		let x = Tensor::randn(0f32, 1.0, (5, 256), &device).unwrap();
		let dense = Linear::from_dense(w.clone(), None, WeightFormat::F32).unwrap();
		let quantized = Linear::from_dense(w, None, format).unwrap();
		let want = dense.forward(&x).unwrap();
		let got = quantized.forward(&x).unwrap();
		let err = (got - &want).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>();
		let norm = want.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>();
		(err.unwrap() / norm.unwrap()).sqrt()
	}

	/// Projections stacked into one matrix give each its own values to the bit, in one product
	/// or alone, with or without biases; parts that cannot share a matrix are left apart.
	#[test]
	fn stacked_projections_give_each_its_own_bits() {
		let device = Device::Cpu;
		let x = Tensor::randn(0f32, 1.0, (3, 64), &device).unwrap();
		let make = |rows: usize, bias: bool, format: WeightFormat| {
			let w = Tensor::randn(0f32, 0.05, (rows, 64), &device).unwrap();
			let b = bias.then(|| Tensor::randn(0f32, 1.0, rows, &device).unwrap());
			Linear::from_dense(w, b, format).unwrap()
		};
		let values = |t: &Tensor| t.to_vec2::<f32>().unwrap();
		let apart = [
			make(40, true, WeightFormat::Int4),
			make(8, false, WeightFormat::Int4),
			make(8, true, WeightFormat::Int4),
		];
		let want: Vec<_> = apart.iter().map(|l| values(&l.forward(&x).unwrap())).collect();
		let mut stacked = apart.clone();
		let [q, k, v] = &mut stacked;
		Linear::stack(&mut [q, k, v]);
		assert!(matches!(&stacked[1].weight, Weight::Blocks { rows, .. } if *rows == (40..48)));
		let [q, k, v] = &stacked;
		let together = Linear::forward_all([q, k, v], &x).unwrap();
		for (i, (got, want)) in together.iter().zip(&want).enumerate() {
			assert_eq!(&values(got), want, "part {i} in one product");
			assert_eq!(&values(&stacked[i].forward(&x).unwrap()), want, "part {i} alone");
		}
		// Out of order: one by one, the same values.
		let [second, first] = Linear::forward_all([v, q], &x).unwrap();
		assert_eq!((values(&second), values(&first)), (want[2].clone(), want[0].clone()));
		// A dense part is left apart, and so are the others.
		let mut mixed = [make(40, false, WeightFormat::Int4), make(8, false, WeightFormat::F32)];
		let want: Vec<_> = mixed.iter().map(|l| values(&l.forward(&x).unwrap())).collect();
		let [a, b] = &mut mixed;
		Linear::stack(&mut [a, b]);
		assert!(
			matches!(&mixed[0].weight, Weight::Blocks { matrix, rows } if matrix.rows() == rows.len())
		);
		let got = Linear::forward_all([&mixed[0], &mixed[1]], &x).unwrap();
		assert_eq!(got.iter().map(values).collect::<Vec<_>>(), want);
	}

	#[test]
	fn the_block_product_takes_rows_of_any_leading_shape() {
		let device = Device::Cpu;
		let w = Tensor::randn(0f32, 0.05, (40, 64), &device).unwrap();
		let linear = Linear::from_dense(w, None, WeightFormat::Int8).unwrap();
		assert!(
			matches!(linear.weight, Weight::Blocks { .. }),
			"Q8_0 on the CPU: the block product"
		);
		let x = Tensor::randn(0f32, 1.0, (2, 3, 64), &device).unwrap();
		let flat = linear.forward(&x.reshape((6, 64)).unwrap()).unwrap();
		let batched = linear.forward(&x).unwrap();
		assert_eq!(batched.dims(), [2, 3, 40]);
		let (a, b) = (flat.flatten_all().unwrap(), batched.flatten_all().unwrap());
		assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
		// A transposed (non-contiguous) input, one row, and a half-precision input.
		let t = Tensor::randn(0f32, 1.0, (64, 5), &device).unwrap().t().unwrap();
		let want = linear.forward(&t.contiguous().unwrap()).unwrap();
		assert_eq!(
			linear.forward(&t).unwrap().to_vec2::<f32>().unwrap(),
			want.to_vec2::<f32>().unwrap()
		);
		assert_eq!(linear.forward(&x.get(0).unwrap().get(0).unwrap()).unwrap().dims(), [40]);
		let half = linear.forward(&x.to_dtype(DType::F16).unwrap()).unwrap();
		assert_eq!(half.dtype(), DType::F16, "the input's dtype comes back");
		let wrong = linear.forward(&Tensor::zeros((2, 63), DType::F32, &device).unwrap());
		assert!(wrong.unwrap_err().to_string().contains("rows of 64 values"));
	}

	#[test]
	fn load_time_quantization_stays_close_to_f32() {
		let int8 = relative_error(WeightFormat::Int8);
		let int4 = relative_error(WeightFormat::Int4);
		assert!(int8 < 0.02, "int8: {int8}");
		assert!(int4 < 0.15, "int4: {int4}");
		assert!(int8 < int4);
		let odd = Linear::from_dense(
			Tensor::zeros((4, 48), DType::F32, &Device::Cpu).unwrap(),
			None,
			WeightFormat::Int8,
		);
		assert!(matches!(odd, Err(Error::Unsupported(_))), "rows of 48 are not whole blocks");
	}
}
