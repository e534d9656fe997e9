//! Latency histograms for `/metrics`, in Prometheus' text format: cumulative buckets, a sum and
//! a count, with vLLM's bucket bounds so that dashboards built for vLLM read them alike.

use std::{fmt::Write, time::Duration};

/// The most buckets a [`Histogram`] has (besides `+Inf`).
const MAX_BUCKETS: usize = 24;

/// vLLM's buckets for the time to the first token, in seconds.
pub const TTFT_BOUNDS: &[f64] = &[
	0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
	20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's buckets for the time between output tokens, in seconds.
pub const INTER_TOKEN_BOUNDS: &[f64] = &[
	0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
	40.0, 80.0,
];
/// vLLM's buckets for a request's whole time, in seconds.
pub const REQUEST_BOUNDS: &[f64] =
	&[0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0];

/// A histogram of durations over fixed bucket bounds (seconds, increasing).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Histogram {
	bounds: &'static [f64],
	/// Observations at or below each bound (not cumulative); the last slot used is `+Inf`.
	counts: [u64; MAX_BUCKETS + 1],
	sum: f64,
	count: u64,
}

impl Histogram {
	/// An empty histogram over `bounds` (at most 24, increasing).
	pub fn new(bounds: &'static [f64]) -> Self {
		debug_assert!(bounds.len() <= MAX_BUCKETS && bounds.windows(2).all(|w| w[0] < w[1]));
		let bounds = &bounds[..bounds.len().min(MAX_BUCKETS)];
		Self { bounds, counts: [0; MAX_BUCKETS + 1], sum: 0.0, count: 0 }
	}

	/// Records one observation of `value`.
	pub fn observe(&mut self, value: Duration) {
		let seconds = value.as_secs_f64();
		let bucket = self.bounds.partition_point(|&bound| bound < seconds);
		self.counts[bucket] += 1;
		self.sum += seconds;
		self.count += 1;
	}

	/// Observations so far.
	pub fn count(&self) -> u64 {
		self.count
	}

	/// Their sum, in seconds.
	pub fn sum(&self) -> f64 {
		self.sum
	}

	/// Appends the histogram as the Prometheus metric `name` (with its help line) to `out`.
	pub fn render(&self, name: &str, help: &str, out: &mut String) {
		let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
		let mut cumulative = 0;
		for (bound, count) in self.bounds.iter().zip(&self.counts) {
			cumulative += count;
			let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
		}
		let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
		let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn observations_land_in_cumulative_buckets_with_a_sum_and_a_count() {
		// Binary fractions of a second, so that the sum is exact; a bound takes what equals it.
		let mut h = Histogram::new(&[0.125, 1.0, 10.0]);
		for us in [62_500, 125_000, 250_000, 500_000, 4_000_000, 64_000_000] {
			h.observe(Duration::from_micros(us));
		}
		assert_eq!(h.count(), 6);
		assert_eq!(h.sum(), 68.9375);
		let mut text = String::new();
		h.render("x_seconds", "Some time.", &mut text);
		assert_eq!(
			text,
			"# HELP x_seconds Some time.\n# TYPE x_seconds histogram\n\
			 x_seconds_bucket{le=\"0.125\"} 2\nx_seconds_bucket{le=\"1\"} 4\n\
			 x_seconds_bucket{le=\"10\"} 5\nx_seconds_bucket{le=\"+Inf\"} 6\n\
			 x_seconds_sum 68.9375\nx_seconds_count 6\n"
		);
	}

	#[test]
	fn vllm_bounds_fit() {
		for bounds in [TTFT_BOUNDS, INTER_TOKEN_BOUNDS, REQUEST_BOUNDS] {
			assert!(bounds.len() <= MAX_BUCKETS);
			assert!(bounds.windows(2).all(|w| w[0] < w[1]));
			assert_eq!(Histogram::new(bounds).bounds.len(), bounds.len());
		}
	}
}
