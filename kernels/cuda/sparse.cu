// The activation-sparse FFN down projection, y[r] = sum over active i of h[r, i] * w_t[i],
// with w_t = W_down transposed, [inter, hidden].
//
// 1. sparse_compact: one block per row lists the active activations (|h| > threshold) in
//    ascending index order, by a block-wide prefix sum over each chunk of the row.
// 2. sparse_down: each thread owns one output column and accumulates, from zero, one fused
//    multiply-add per active activation in list order (reads of a row of w_t are coalesced).
// dense_down does the same over every activation, for the side-by-side measurement. The CPU
// references in kernels/src/sparse.rs do the same operations in the same order.

#define COMPACT_THREADS 256
#define DOWN_THREADS 256
#define FULL_MASK 0xffffffffu

// idx and val are [rows, inter]; only the first counts[r] entries of row r are written.
extern "C" __global__ void __launch_bounds__(COMPACT_THREADS)
	sparse_compact(const float* __restrict__ h, int rows, int inter, float threshold,
		       unsigned* __restrict__ idx, float* __restrict__ val,
		       unsigned* __restrict__ counts)
{
	__shared__ unsigned warp_total[COMPACT_THREADS / 32];
	const int row = blockIdx.x;
	if (row >= rows) {
		return;
	}
	const int tid = threadIdx.x;
	const int lane = tid & 31;
	const int warp = tid >> 5;
	const float* hr = h + (size_t)row * inter;
	unsigned* ir = idx + (size_t)row * inter;
	float* vr = val + (size_t)row * inter;
	unsigned base = 0;
	for (int start = 0; start < inter; start += COMPACT_THREADS) {
		const int i = start + tid;
		float v = 0.0f;
		bool active = false;
		if (i < inter) {
			v = hr[i];
			active = fabsf(v) > threshold;
		}
		// Inclusive scan of the flags within the warp.
		unsigned incl = active ? 1u : 0u;
		for (int offset = 1; offset < 32; offset <<= 1) {
			const unsigned up = __shfl_up_sync(FULL_MASK, incl, offset);
			if (lane >= offset) {
				incl += up;
			}
		}
		if (lane == 31) {
			warp_total[warp] = incl;
		}
		__syncthreads();
		unsigned before = 0;
		unsigned chunk = 0;
		for (int w = 0; w < COMPACT_THREADS / 32; ++w) {
			const unsigned t = warp_total[w];
			before += w < warp ? t : 0u;
			chunk += t;
		}
		if (active) {
			const unsigned at = base + before + incl - 1u;
			ir[at] = (unsigned)i;
			vr[at] = v;
		}
		base += chunk;
		// Everyone has read warp_total before the next chunk overwrites it.
		__syncthreads();
	}
	if (tid == 0) {
		counts[row] = base;
	}
}

// Grid (ceil(hidden / DOWN_THREADS), rows); thread column c of row blockIdx.y.
extern "C" __global__ void __launch_bounds__(DOWN_THREADS)
	sparse_down(const unsigned* __restrict__ idx, const float* __restrict__ val,
		    const unsigned* __restrict__ counts, const float* __restrict__ w_t, int rows,
		    int inter, int hidden, float* __restrict__ y)
{
	__shared__ unsigned s_idx[DOWN_THREADS];
	__shared__ float s_val[DOWN_THREADS];
	const int row = blockIdx.y;
	if (row >= rows) {
		return;
	}
	const int tid = threadIdx.x;
	const int c = blockIdx.x * DOWN_THREADS + tid;
	unsigned n = counts[row];
	if (n > (unsigned)inter) {
		n = (unsigned)inter;
	}
	const unsigned* ir = idx + (size_t)row * inter;
	const float* vr = val + (size_t)row * inter;
	float acc = 0.0f;
	for (unsigned start = 0; start < n; start += DOWN_THREADS) {
		const unsigned j = start + (unsigned)tid;
		if (j < n) {
			const unsigned i = ir[j];
			// An index out of range (never written by sparse_compact) contributes nothing.
			s_idx[tid] = i < (unsigned)inter ? i : 0u;
			s_val[tid] = i < (unsigned)inter ? vr[j] : 0.0f;
		}
		__syncthreads();
		const unsigned m = n - start < DOWN_THREADS ? n - start : DOWN_THREADS;
		if (c < hidden) {
			for (unsigned k = 0; k < m; ++k) {
				acc = __fmaf_rn(s_val[k], w_t[(size_t)s_idx[k] * hidden + c], acc);
			}
		}
		__syncthreads();
	}
	if (c < hidden) {
		y[(size_t)row * hidden + c] = acc;
	}
}

// The dense product in the same style: every activation, ascending.
extern "C" __global__ void __launch_bounds__(DOWN_THREADS)
	dense_down(const float* __restrict__ h, const float* __restrict__ w_t, int rows, int inter,
		   int hidden, float* __restrict__ y)
{
	__shared__ float s_h[DOWN_THREADS];
	const int row = blockIdx.y;
	if (row >= rows) {
		return;
	}
	const int tid = threadIdx.x;
	const int c = blockIdx.x * DOWN_THREADS + tid;
	const float* hr = h + (size_t)row * inter;
	float acc = 0.0f;
	for (int start = 0; start < inter; start += DOWN_THREADS) {
		if (start + tid < inter) {
			s_h[tid] = hr[start + tid];
		}
		__syncthreads();
		const int m = inter - start < DOWN_THREADS ? inter - start : DOWN_THREADS;
		if (c < hidden) {
			for (int k = 0; k < m; ++k) {
				acc = __fmaf_rn(s_h[k], w_t[(size_t)(start + k) * hidden + c], acc);
			}
		}
		__syncthreads();
	}
	if (c < hidden) {
		y[(size_t)row * hidden + c] = acc;
	}
}
