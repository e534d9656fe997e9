//! OpenLedger's compute kernels for the inference worker.
//!
//! Each kernel has a CPU implementation here, written to be the reference its GPU counterpart
//! is checked against: plain loops in a fixed order over slices, so that a row's result never
//! depends on what else is in the batch. The CPU versions follow the GPU algorithm (the same
//! tiling, partitions and reductions) where that changes the arithmetic, and are themselves
//! tested against the textbook formula.
//!
//! - [`attention`]: paged decode attention over block tables with grouped-query heads and
//!   partitions reduced at the end; flash-style tiled prefill with an online softmax.
//! - [`quant`]: the weight formats the worker loads (GGUF Q4_0, Q4_1, Q8_0, Q4_K, Q6_K; int8 and
//!   int4 with per-row scales; bf16) and their matrix-vector / matrix-matrix products.
//! - [`lora`]: multi-LoRA shrink and expand over a batch whose rows use different adapters of
//!   different ranks (SGMV for prefill segments, BGMV for one row per sequence at decode).
//! - [`adapter_pool`]: the same over a paged pool that holds thousands of resident adapters
//!   without one allocation each (S-LoRA's unified paging), cut into the GPU's row tiles.
//! - [`fused`]: RMSNorm, rotary embeddings, SiLU-and-multiply and residual add.
//! - [`sampling`]: min-p / top-k / top-p sampling from logits with a caller-given uniform draw.
//! - [`sparse`]: the activation-sparse FFN down projection.
//! - [`cpu_matmul`]: the quantized matrix product of the CPU serving path (not a reference:
//!   each weight row dequantized once per batch, batch-invariant to the bit).
//! - [`backend`]: one interface over both implementations, so a model written once runs on
//!   the CPU references or on the GPU.
//! - [`gpu`]: the CUDA versions, compiled at run time by NVRTC and launched through cudarc,
//!   with the CUDA libraries loaded dynamically (nothing CUDA is needed to build or to run on
//!   CPU).

pub mod adapter_pool;
pub mod attention;
pub mod backend;
pub mod cpu_matmul;
pub mod fused;
pub mod gpu;
pub mod lora;
pub mod quant;
pub mod sampling;
pub mod sparse;

/// What is wrong with the shapes a CPU kernel was called with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("kernel shapes: {0}")]
pub struct ShapeError(pub String);
