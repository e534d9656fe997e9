//! OpenLedger's compute kernels for the inference worker.
//!
//! Each kernel has a CPU implementation here, written to be the reference its GPU counterpart
//! is checked against: plain loops in a fixed order over slices, so that a row's result never
//! depends on what else is in the batch.
//!
//! - [`lora`]: multi-LoRA shrink and expand over a batch whose rows use different adapters of
//!   different ranks (SGMV for prefill segments, BGMV for one row per sequence at decode).

pub mod lora;
