// Prepended to every kernel source before NVRTC compiles it (kernels/src/gpu/mod.rs): what more
// than one source needs. No #include: NVRTC has no CUDA headers here.

#define FULL_MASK 0xffffffffu

// The sum over a warp by the xor butterfly: lane l adds lane l ^ 16, then l ^ 8, ... l ^ 1, so
// every lane ends with the same sum. The CPU references replay this order.
template <typename T>
__device__ __forceinline__ T warp_sum(T v)
{
#pragma unroll
	for (int offset = 16; offset > 0; offset >>= 1) {
		v += __shfl_xor_sync(FULL_MASK, v, offset);
	}
	return v;
}

// The sum over the block (blockDim.x a multiple of 32, at most 1024): the butterfly within each
// warp, then warp 0 does the same over the warp totals (padded with zeros to 32). Every thread
// of the block must call it; `red` holds 33 values, and the two barriers make back-to-back
// calls with the same `red` safe.
template <typename T>
__device__ __forceinline__ T block_sum_butterfly(T v, T* red)
{
	v = warp_sum(v);
	const int lane = threadIdx.x & 31;
	const int warp = threadIdx.x >> 5;
	if (lane == 0) {
		red[warp] = v;
	}
	__syncthreads();
	if (warp == 0) {
		T t = lane < (int)(blockDim.x >> 5) ? red[lane] : (T)0;
		t = warp_sum(t);
		if (lane == 0) {
			red[32] = t;
		}
	}
	__syncthreads();
	return red[32];
}
