// Kernels that show the CUDA emulator (driver.cpp) behaves as a GPU would where it matters to
// the checks that run on it: shuffles and barriers give the right values, and code that is
// wrong on a GPU fails on the emulator too instead of passing by luck. Compiled into the
// emulator beside kernels/cuda/*.cu, and by NVRTC for its PTX; launched by
// kernels/tests/gpu/emulator.rs, only on the emulator.

// out[t] = the sum over t's warp of (lane + 1), and the inclusive prefix sum of the same up to
// t's lane: xor butterfly and shuffle-up scan.
extern "C" __global__ void selftest_shuffles(float* sums, unsigned* scans)
{
	const int t = threadIdx.x;
	const int lane = t & 31;
	float v = (float)(lane + 1);
	for (int offset = 16; offset > 0; offset >>= 1) {
		v += __shfl_xor_sync(FULL_MASK, v, offset);
	}
	unsigned s = (unsigned)(lane + 1);
	for (int offset = 1; offset < 32; offset <<= 1) {
		const unsigned up = __shfl_up_sync(FULL_MASK, s, offset);
		if (lane >= offset) {
			s += up;
		}
	}
	sums[blockIdx.x * blockDim.x + t] = v;
	scans[blockIdx.x * blockDim.x + t] = s;
}

// Thread t writes t to shared memory and reads thread (n - 1 - t)'s value, with the barrier
// between the two when `sync` is set. Without it the read races the write: on the emulator the
// first threads read the launch's poisoned (NaN) shared memory.
extern "C" __global__ void selftest_exchange(float* out, int sync)
{
	extern __shared__ float cells[];
	const int t = threadIdx.x;
	const int n = blockDim.x;
	cells[t] = (float)t;
	if (sync) {
		__syncthreads();
	}
	out[t] = cells[n - 1 - t];
}

// Half the warp leaves before a full-warp shuffle: undefined on a GPU, a failed launch here.
extern "C" __global__ void selftest_shuffle_after_exit(float* out)
{
	const int lane = threadIdx.x & 31;
	if (lane >= 16) {
		return;
	}
	out[lane] = __shfl_xor_sync(FULL_MASK, (float)lane, 1);
}

// A 16-byte load through the read-only cache from `x + offset` floats.
extern "C" __global__ void selftest_load4(const float* x, int offset, float* out)
{
	const float4 v = __ldg((const float4*)(x + offset));
	out[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// At most 64 threads per block.
extern "C" __global__ void __launch_bounds__(64) selftest_bounded(float* out)
{
	out[threadIdx.x] = 1.0f;
}

// Reads a static shared cell no thread of the block wrote, then writes it: each block must read
// poison (NaN), not what an earlier block left.
extern "C" __global__ void selftest_static_shared(float* out)
{
	__shared__ float cells[64];
	out[blockIdx.x] = cells[5];
	cells[5] = 1.0f;
}

// Thread 0 reads (`write` 0) or writes (`write` 1) x[index]; a read is copied to out[0].
extern "C" __global__ void selftest_touch(float* x, long long index, int write, float* out)
{
	if (threadIdx.x != 0) {
		return;
	}
	if (write) {
		x[index] = 1.0f;
	} else {
		out[0] = x[index];
	}
}
