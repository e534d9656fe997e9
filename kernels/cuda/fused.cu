// Fused RMSNorm (alone or after a residual add), rotary embeddings, SiLU-and-multiply and an
// in-place add, on f32 activations.
//
// The CPU references in kernels/src/fused.rs mirror these exactly: NORM_THREADS lanes per row,
// each summing its strided elements with fused multiply-adds, combined by the warp butterfly
// (block_sum_butterfly in common.cuh); every other operation is written with explicit rounding (__fmul_rn) or has no
// multiply-add to contract.

#define NORM_THREADS 256

// One block of NORM_THREADS per row: out = x / sqrt(mean(x^2) + eps) * weight.
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
	rms_norm(const float* __restrict__ x, const float* __restrict__ weight,
		 float* __restrict__ out, int rows, int dim, float eps)
{
	__shared__ float red[33];
	const int row = blockIdx.x;
	if (row >= rows) {
		return;
	}
	const float* xr = x + (size_t)row * dim;
	float* orow = out + (size_t)row * dim;
	float acc = 0.0f;
	for (int i = threadIdx.x; i < dim; i += NORM_THREADS) {
		const float v = xr[i];
		acc = __fmaf_rn(v, v, acc);
	}
	const float sum = block_sum_butterfly(acc, red);
	const float inv = 1.0f / sqrtf(sum / (float)dim + eps);
	for (int i = threadIdx.x; i < dim; i += NORM_THREADS) {
		orow[i] = __fmul_rn(__fmul_rn(xr[i], inv), weight[i]);
	}
}

// residual += x, then out = rms_norm(residual). Each thread reads back only the residual
// elements it wrote itself.
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
	add_rms_norm(float* __restrict__ residual, const float* __restrict__ x,
		     const float* __restrict__ weight, float* __restrict__ out, int rows, int dim,
		     float eps)
{
	__shared__ float red[33];
	const int row = blockIdx.x;
	if (row >= rows) {
		return;
	}
	float* rrow = residual + (size_t)row * dim;
	const float* xr = x + (size_t)row * dim;
	float* orow = out + (size_t)row * dim;
	float acc = 0.0f;
	for (int i = threadIdx.x; i < dim; i += NORM_THREADS) {
		const float v = __fadd_rn(rrow[i], xr[i]);
		rrow[i] = v;
		acc = __fmaf_rn(v, v, acc);
	}
	const float sum = block_sum_butterfly(acc, red);
	const float inv = 1.0f / sqrtf(sum / (float)dim + eps);
	for (int i = threadIdx.x; i < dim; i += NORM_THREADS) {
		orow[i] = __fmul_rn(__fmul_rn(rrow[i], inv), weight[i]);
	}
}

// One thread per rotated pair: `pairs` = tokens * heads * (head_dim / 2). style 0 = NeoX
// (i, i + half), 1 = GPT-J (2i, 2i + 1). Positions at or past max_pos leave the pair as it is
// (the launcher's caller guarantees they are in range; the CPU reference refuses them).
extern "C" __global__ void rope(float* __restrict__ x, const unsigned* __restrict__ positions,
				const float* __restrict__ cos_t, const float* __restrict__ sin_t,
				int pairs, int heads, int head_dim, int max_pos, int style)
{
	// In 64 bits: the last block's threads past `pairs` would wrap a 32-bit index near 2^31.
	const size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (p >= (size_t)pairs) {
		return;
	}
	const int half = head_dim >> 1;
	const int i = (int)(p % half);
	const size_t token_head = p / half;
	const size_t token = token_head / heads;
	const unsigned pos = positions[token];
	if (pos >= (unsigned)max_pos) {
		return;
	}
	float* head = x + (size_t)token_head * head_dim;
	const int a = style == 0 ? i : 2 * i;
	const int b = style == 0 ? i + half : 2 * i + 1;
	const float c = cos_t[(size_t)pos * half + i];
	const float s = sin_t[(size_t)pos * half + i];
	const float x1 = head[a];
	const float x2 = head[b];
	head[a] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
	head[b] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
}

__device__ __forceinline__ float silu(float g)
{
	return __fdiv_rn(g, __fadd_rn(1.0f, expf(-g)));
}

// gate_up is [rows, 2 * inter] (gate then up in each row); out is [rows, inter]; n = rows * inter.
extern "C" __global__ void silu_mul(const float* __restrict__ gate_up, float* __restrict__ out,
				    int n, int inter)
{
	const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (k >= (size_t)n) {
		return;
	}
	const size_t row = k / inter;
	const size_t i = k - row * inter;
	const float* g = gate_up + row * 2 * inter;
	out[k] = __fmul_rn(silu(g[i]), g[inter + i]);
}

// out = silu(gate) * up elementwise over n values.
extern "C" __global__ void silu_mul_split(const float* __restrict__ gate,
					  const float* __restrict__ up, float* __restrict__ out,
					  int n)
{
	const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (k < (size_t)n) {
		out[k] = __fmul_rn(silu(gate[k]), up[k]);
	}
}

// a += b over n values.
extern "C" __global__ void add_assign(float* __restrict__ a, const float* __restrict__ b, int n)
{
	const size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (k < (size_t)n) {
		a[k] = __fadd_rn(a[k], b[k]);
	}
}
