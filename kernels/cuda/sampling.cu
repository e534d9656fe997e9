// On-device sampling: one block of LANES threads per row of logits picks a token (greedy, or
// temperature + min-p + top-k + top-p with a caller-given uniform draw) and its raw
// log-probability.
//
// kernels/src/sampling.rs is the reference and documents the algorithm; this follows it step
// by step: thread t owns the indices t, t + LANES, ..., sums its share sequentially, and the
// shares are combined by the warp-butterfly block reduction (or, for the inverse CDF, by one
// thread's sequential prefix over the LANES shares).

#define LANES 1024
#define WARPS (LANES / 32)

// The order-preserving unsigned key of a float.
__device__ __forceinline__ unsigned key_of(float x)
{
	const unsigned bits = __float_as_uint(x);
	return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// (key, index) a better than b: a larger key, or the same key at a lower index.
__device__ __forceinline__ bool better(unsigned ka, int ia, unsigned kb, int ib)
{
	return ka > kb || (ka == kb && ia < ib);
}

// A token's weight exp(l / t - z_max) (its unnormalised probability), as the reference computes
// it.
__device__ __forceinline__ float weight_of(float l, float t, float z_max)
{
	return expf(__fsub_rn(__fdiv_rn(l, t), z_max));
}

// Mass of the tokens with key >= tau, as the reference sums it.
__device__ float mass_at(const float* row, int vocab, float t, float z_max, unsigned tau, float* red)
{
	float acc = 0.0f;
	for (int i = threadIdx.x; i < vocab; i += LANES) {
		const float l = row[i];
		if (key_of(l) >= tau) {
			acc += weight_of(l, t, z_max);
		}
	}
	return block_sum_butterfly(acc, red);
}

// The block is LANES threads; one block per row (gridDim.x = rows). temperature, top_k, top_p,
// min_p and uniform hold one value per row, already checked by the launcher (T finite >= 0,
// 0 <= top_p <= 1, 0 <= min_p <= 1, 0 <= u < 1).
extern "C" __global__ void __launch_bounds__(LANES)
	sample_rows(const float* __restrict__ logits, int vocab,
		    const float* __restrict__ temperature, const unsigned* __restrict__ top_k,
		    const float* __restrict__ top_p, const float* __restrict__ min_p,
		    const float* __restrict__ uniform, unsigned* __restrict__ tokens,
		    float* __restrict__ logprobs)
{
	__shared__ float red_f[33];
	__shared__ unsigned red_u[33];
	__shared__ unsigned red_k[WARPS];
	__shared__ int red_i[WARPS];
	__shared__ float part[LANES];
	__shared__ float prefix[LANES + 1];
	__shared__ int chosen;

	const int row_index = blockIdx.x;
	const float* row = logits + (size_t)row_index * vocab;
	const int tid = threadIdx.x;
	const int lane = tid & 31;
	const int warp = tid >> 5;

	// 1. Greedy: the largest key, the lowest index on ties.
	unsigned best_k = 0;
	int best_i = vocab;
	for (int i = tid; i < vocab; i += LANES) {
		const unsigned k = key_of(row[i]);
		if (better(k, i, best_k, best_i)) {
			best_k = k;
			best_i = i;
		}
	}
	for (int offset = 16; offset > 0; offset >>= 1) {
		const unsigned ok = __shfl_xor_sync(FULL_MASK, best_k, offset);
		const int oi = __shfl_xor_sync(FULL_MASK, best_i, offset);
		if (better(ok, oi, best_k, best_i)) {
			best_k = ok;
			best_i = oi;
		}
	}
	if (lane == 0) {
		red_k[warp] = best_k;
		red_i[warp] = best_i;
	}
	__syncthreads();
	if (warp == 0) {
		best_k = red_k[lane];
		best_i = red_i[lane];
		for (int offset = 16; offset > 0; offset >>= 1) {
			const unsigned ok = __shfl_xor_sync(FULL_MASK, best_k, offset);
			const int oi = __shfl_xor_sync(FULL_MASK, best_i, offset);
			if (better(ok, oi, best_k, best_i)) {
				best_k = ok;
				best_i = oi;
			}
		}
		if (lane == 0) {
			red_k[0] = best_k;
			red_i[0] = best_i < vocab ? best_i : 0;
		}
	}
	__syncthreads();
	const unsigned max_key = red_k[0];
	const int greedy = red_i[0];
	const float max = row[greedy];

	// 2. The raw log-softmax denominator, for the log-probability.
	float acc = 0.0f;
	for (int i = tid; i < vocab; i += LANES) {
		acc += expf(__fsub_rn(row[i], max));
	}
	const float log_denominator = logf(block_sum_butterfly(acc, red_f));

	int token = greedy;
	const float t = temperature[row_index];
	if (t > 0.0f) {
		const float z_max = __fdiv_rn(max, t);
		unsigned k = top_k[row_index];
		const float p = top_p[row_index];
		const float m = min_p[row_index];
		const unsigned long long hi_end = (unsigned long long)max_key + 1ull;

		// 3. Min-p: at most the n_m tokens whose weight reaches m (the greedy token's is 1).
		if (m > 0.0f) {
			unsigned count = 0;
			for (int i = tid; i < vocab; i += LANES) {
				count += weight_of(row[i], t, z_max) >= m ? 1u : 0u;
			}
			unsigned n_m = block_sum_butterfly(count, red_u);
			n_m = n_m > 0u ? n_m : 1u;
			k = (k == 0u || n_m < k) ? n_m : k;
		}

		// 4. Top-k threshold: the largest tau with count(key >= tau) >= k.
		unsigned tau_k = 0;
		if (k > 0u && k < (unsigned)vocab) {
			unsigned long long lo = 0ull, hi = hi_end;
			while (hi - lo > 1ull) {
				const unsigned long long mid = lo + (hi - lo) / 2ull;
				const unsigned tau = (unsigned)mid;
				unsigned count = 0;
				for (int i = tid; i < vocab; i += LANES) {
					count += key_of(row[i]) >= tau ? 1u : 0u;
				}
				if (block_sum_butterfly(count, red_u) >= k) {
					lo = mid;
				} else {
					hi = mid;
				}
			}
			tau_k = (unsigned)lo;
		}

		// 5. Top-p threshold: the largest tau >= tau_k whose mass reaches p of tau_k's.
		unsigned tau = tau_k;
		if (p < 1.0f) {
			const float target = __fmul_rn(p, mass_at(row, vocab, t, z_max, tau_k, red_f));
			unsigned long long lo = tau_k, hi = hi_end;
			while (hi - lo > 1ull) {
				const unsigned long long mid = lo + (hi - lo) / 2ull;
				if (mass_at(row, vocab, t, z_max, (unsigned)mid, red_f) >= target) {
					lo = mid;
				} else {
					hi = mid;
				}
			}
			tau = (unsigned)lo;
		}

		// 6. Inverse CDF over the kept tokens in lane order.
		float share = 0.0f;
		for (int i = tid; i < vocab; i += LANES) {
			const float l = row[i];
			if (key_of(l) >= tau) {
				share += weight_of(l, t, z_max);
			}
		}
		part[tid] = share;
		__syncthreads();
		if (tid == 0) {
			float run = 0.0f;
			prefix[0] = run;
			for (int l = 0; l < LANES; ++l) {
				run = __fadd_rn(run, part[l]);
				prefix[l + 1] = run;
			}
			chosen = greedy;
		}
		__syncthreads();
		const float total = prefix[LANES];
		const float target = __fmul_rn(uniform[row_index], total);
		if (target < total && prefix[tid] <= target && target < prefix[tid + 1]) {
			const float start = prefix[tid];
			float local = 0.0f;
			for (int i = tid; i < vocab; i += LANES) {
				const float l = row[i];
				if (key_of(l) >= tau) {
					local += weight_of(l, t, z_max);
					if (__fadd_rn(start, local) > target) {
						chosen = i;
						break;
					}
				}
			}
		}
		__syncthreads();
		token = chosen;
	}

	if (tid == 0) {
		tokens[row_index] = (unsigned)token;
		logprobs[row_index] = __fsub_rn(__fsub_rn(row[token], max), log_denominator);
	}
}
