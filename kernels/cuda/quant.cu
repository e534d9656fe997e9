// Quantized matrix-vector (decode GEMV) and small matrix-matrix products: the CUDA side of
// kernels/src/quant.rs, whose module documentation gives the byte layouts and the order of the
// arithmetic that these kernels follow operation for operation (results agree to the bit).
//
// y[i, r] = sum_c W[r, c] * x[i, c] for input rows i of x ([n, cols]) and weight rows r of W
// (rows x row_bytes bytes), into y ([n, rows]).
//
// One warp per weight row; GEMV_WARPS warps per block, so the grid is ceil(rows / GEMV_WARPS)
// blocks of 32 * GEMV_WARPS threads. The row is cut into units (a 32-value block for Q4_0, Q4_1,
// Q8_0 and Int4; a 64-value quarter of a super-block for Q4_K and Q6_K; 16 Int8 values; 8 bf16
// values); lane l takes units l, l + 32, ... so that the warp's loads of one step cover one
// contiguous stretch of the row (16-byte vector loads where the layout is 16-byte aligned:
// Q4_K, Int8, Bf16; 4-byte loads for Q4_1; 2-byte loads for the 18-, 34- and 210-byte blocks).
// The weights of a unit are loaded once into registers and dequantized there, then used for each
// of the NC input rows of the pass (NC running sums per lane); x is read through the read-only
// cache in float4s. The 32 sums of a row are reduced by an xor butterfly.
//
// Batches: each kernel is instantiated for NC = 1..8 input rows (gemv_<format>_n<NC>) and does
// input rows c0 .. c0 + NC - 1; the launcher covers n input rows with passes of 8 and one pass of
// the remainder, so the weights are read once per 8 input rows.
//
// All arithmetic is explicit (__fmaf_rn, __fmul_rn, __fadd_rn) so that nothing is contracted
// differently from the CPU reference.

#define GEMV_WARPS 4

#define FMT_Q4_0 0
#define FMT_Q4_1 1
#define FMT_Q8_0 2
#define FMT_Q4_K 3
#define FMT_Q6_K 4
#define FMT_INT8 5
#define FMT_INT4 6
#define FMT_BF16 7

__device__ __forceinline__ float f16_to_f32(unsigned int h)
{
	unsigned short s = (unsigned short)h;
#ifdef CUDA_EMULATOR
	return emu_half_to_float(s);
#else
	float f;
	asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s));
	return f;
#endif
}

__device__ __forceinline__ float bf16_to_f32(unsigned int h)
{
	return __uint_as_float((h & 0xFFFFu) << 16);
}

__device__ __forceinline__ unsigned int ld_u16(const unsigned char* p)
{
	return (unsigned int)__ldg((const unsigned short*)p);
}

__device__ __forceinline__ unsigned int ld_u32(const unsigned char* p)
{
	return __ldg((const unsigned int*)p);
}

__device__ __forceinline__ uint4 ld_u128(const unsigned char* p)
{
	return __ldg((const uint4*)p);
}

// Loads 4 * WORDS bytes at a 2-byte aligned p into words (little-endian).
template <int WORDS>
__device__ __forceinline__ void ld_words_u16(const unsigned char* p, unsigned int (&w)[WORDS])
{
#pragma unroll
	for (int i = 0; i < WORDS; ++i) {
		w[i] = ld_u16(p + 4 * i) | (ld_u16(p + 4 * i + 2) << 16);
	}
}

// Four consecutive x values at p (16-byte aligned) as an array.
__device__ __forceinline__ void ld_x4(const float* p, float (&v)[4])
{
	const float4 f = __ldg((const float4*)p);
	v[0] = f.x;
	v[1] = f.y;
	v[2] = f.z;
	v[3] = f.w;
}

__device__ __forceinline__ unsigned int byte_of(const unsigned int* w, int j)
{
	return (w[j >> 2] >> (8 * (j & 3))) & 0xFFu;
}

// A two's-complement 4-bit integer from the low nibble of v.
__device__ __forceinline__ int signed_nibble(unsigned int v)
{
	return (int)((v & 15u) ^ 8u) - 8;
}

template <int FMT>
struct Format;

// GGML block_q4_0: f16 d, 16 bytes; byte j = value j (low nibble), value 16 + j (high).
template <>
struct Format<FMT_Q4_0> {
	static constexpr int UNIT = 32;
	// The unit's first column of x; its columns lie in one aligned stretch of SLOT.
	static constexpr int SLOT = 32;
	__device__ static int x_col(int u) { return 32 * u; }
	__device__ static size_t row_bytes(int cols) { return (size_t)(cols / 32) * 18; }
	template <int NC>
	__device__ static void unit(const unsigned char* row, int u, const float* x, size_t x_stride, float (&acc)[NC])
	{
		const unsigned char* b = row + (size_t)u * 18;
		const float d = f16_to_f32(ld_u16(b));
		unsigned int q[4];
		ld_words_u16<4>(b + 2, q);
#pragma unroll
		for (int c = 0; c < NC; ++c) {
			const float* xb = x + (size_t)c * x_stride;
			float s = 0.0f;
#pragma unroll
			for (int i = 0; i < 4; ++i) {
				float lo[4], hi[4];
				ld_x4(xb + 4 * i, lo);
				ld_x4(xb + 16 + 4 * i, hi);
#pragma unroll
				for (int k = 0; k < 4; ++k) {
					const unsigned int v = byte_of(q, 4 * i + k);
					s = __fmaf_rn((float)((int)(v & 15u) - 8), lo[k], s);
					s = __fmaf_rn((float)((int)(v >> 4) - 8), hi[k], s);
				}
			}
			acc[c] = __fmaf_rn(d, s, acc[c]);
		}
	}
	__device__ static float finish(const unsigned char*, float sum) { return sum; }
};

// GGML block_q4_1: f16 d, f16 m, 16 bytes of nibbles as Q4_0; value = q * d + m.
template <>
struct Format<FMT_Q4_1> {
	static constexpr int UNIT = 32;
	// The unit's first column of x; its columns lie in one aligned stretch of SLOT.
	static constexpr int SLOT = 32;
	__device__ static int x_col(int u) { return 32 * u; }
	__device__ static size_t row_bytes(int cols) { return (size_t)(cols / 32) * 20; }
	template <int NC>
	__device__ static void unit(const unsigned char* row, int u, const float* x, size_t x_stride, float (&acc)[NC])
	{
		const unsigned char* b = row + (size_t)u * 20;
		const unsigned int dm = ld_u32(b);
		const float d = f16_to_f32(dm & 0xFFFFu);
		const float m = f16_to_f32(dm >> 16);
		unsigned int q[4];
#pragma unroll
		for (int i = 0; i < 4; ++i) {
			q[i] = ld_u32(b + 4 + 4 * i);
		}
#pragma unroll
		for (int c = 0; c < NC; ++c) {
			const float* xb = x + (size_t)c * x_stride;
			float s = 0.0f;
			float sx = 0.0f;
#pragma unroll
			for (int i = 0; i < 4; ++i) {
				float lo[4], hi[4];
				ld_x4(xb + 4 * i, lo);
				ld_x4(xb + 16 + 4 * i, hi);
#pragma unroll
				for (int k = 0; k < 4; ++k) {
					const unsigned int v = byte_of(q, 4 * i + k);
					s = __fmaf_rn((float)(v & 15u), lo[k], s);
					sx = __fadd_rn(sx, lo[k]);
					s = __fmaf_rn((float)(v >> 4), hi[k], s);
					sx = __fadd_rn(sx, hi[k]);
				}
			}
			acc[c] = __fmaf_rn(m, sx, __fmaf_rn(d, s, acc[c]));
		}
	}
	__device__ static float finish(const unsigned char*, float sum) { return sum; }
};

// GGML block_q8_0: f16 d, 32 i8.
template <>
struct Format<FMT_Q8_0> {
	static constexpr int UNIT = 32;
	// The unit's first column of x; its columns lie in one aligned stretch of SLOT.
	static constexpr int SLOT = 32;
	__device__ static int x_col(int u) { return 32 * u; }
	__device__ static size_t row_bytes(int cols) { return (size_t)(cols / 32) * 34; }
	template <int NC>
	__device__ static void unit(const unsigned char* row, int u, const float* x, size_t x_stride, float (&acc)[NC])
	{
		const unsigned char* b = row + (size_t)u * 34;
		const float d = f16_to_f32(ld_u16(b));
		unsigned int q[8];
		ld_words_u16<8>(b + 2, q);
#pragma unroll
		for (int c = 0; c < NC; ++c) {
			const float* xb = x + (size_t)c * x_stride;
			float s = 0.0f;
#pragma unroll
			for (int i = 0; i < 8; ++i) {
				float xv[4];
				ld_x4(xb + 4 * i, xv);
#pragma unroll
				for (int k = 0; k < 4; ++k) {
					const int v = (int)(signed char)byte_of(q, 4 * i + k);
					s = __fmaf_rn((float)v, xv[k], s);
				}
			}
			acc[c] = __fmaf_rn(d, s, acc[c]);
		}
	}
	__device__ static float finish(const unsigned char*, float sum) { return sum; }
};

// GGML block_q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles.
// Unit u = quarter u % 4 (64 values: sub-blocks 2 * quarter from the low nibbles of its 32 bytes
// and 2 * quarter + 1 from the high nibbles) of super-block u / 4.
template <>
struct Format<FMT_Q4_K> {
	static constexpr int UNIT = 64;
	// The unit's first column of x; its columns lie in one aligned stretch of SLOT.
	static constexpr int SLOT = 64;
	__device__ static int x_col(int u) { return 64 * u; }
	__device__ static size_t row_bytes(int cols) { return (size_t)(cols / 256) * 144; }
	// Byte k (0..11) of the packed scales, held in words s1..s3 (bytes 4..15 of the block).
	__device__ static unsigned int scale_byte(unsigned int s1, unsigned int s2, unsigned int s3, int k)
	{
		const unsigned int w = k < 4 ? s1 : (k < 8 ? s2 : s3);
		return (w >> (8 * (k & 3))) & 0xFFu;
	}
	// GGML's get_scale_min_k4.
	__device__ static void scale_min(unsigned int s1, unsigned int s2, unsigned int s3, int j, unsigned int& sc, unsigned int& mn)
	{
		if (j < 4) {
			sc = scale_byte(s1, s2, s3, j) & 63u;
			mn = scale_byte(s1, s2, s3, j + 4) & 63u;
		} else {
			sc = (scale_byte(s1, s2, s3, j + 4) & 0xFu) | ((scale_byte(s1, s2, s3, j - 4) >> 6) << 4);
			mn = (scale_byte(s1, s2, s3, j + 4) >> 4) | ((scale_byte(s1, s2, s3, j) >> 6) << 4);
		}
	}
	template <int NC>
	__device__ static void unit(const unsigned char* row, int u, const float* x, size_t x_stride, float (&acc)[NC])
	{
		const int block = u >> 2;
		const int quarter = u & 3;
		const unsigned char* b = row + (size_t)block * 144;
		const uint4 h = ld_u128(b);
		const float d = f16_to_f32(h.x & 0xFFFFu);
		const float dmin = f16_to_f32(h.x >> 16);
		unsigned int sc1, m1, sc2, m2;
		scale_min(h.y, h.z, h.w, 2 * quarter, sc1, m1);
		scale_min(h.y, h.z, h.w, 2 * quarter + 1, sc2, m2);
		const float d1 = __fmul_rn(d, (float)sc1);
		const float nm1 = -__fmul_rn(dmin, (float)m1);
		const float d2 = __fmul_rn(d, (float)sc2);
		const float nm2 = -__fmul_rn(dmin, (float)m2);
		const uint4 qa = ld_u128(b + 16 + 32 * quarter);
		const uint4 qb = ld_u128(b + 32 + 32 * quarter);
		const unsigned int q[8] = {qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w};
#pragma unroll
		for (int c = 0; c < NC; ++c) {
			const float* xb = x + (size_t)c * x_stride;
			float s1 = 0.0f, x1 = 0.0f, s2 = 0.0f, x2 = 0.0f;
#pragma unroll
			for (int i = 0; i < 8; ++i) {
				float lo[4], hi[4];
				ld_x4(xb + 4 * i, lo);
				ld_x4(xb + 32 + 4 * i, hi);
#pragma unroll
				for (int k = 0; k < 4; ++k) {
					const unsigned int v = byte_of(q, 4 * i + k);
					s1 = __fmaf_rn((float)(v & 15u), lo[k], s1);
					x1 = __fadd_rn(x1, lo[k]);
					s2 = __fmaf_rn((float)(v >> 4), hi[k], s2);
					x2 = __fadd_rn(x2, hi[k]);
				}
			}
			float a = __fmaf_rn(d1, s1, acc[c]);
			a = __fmaf_rn(nm1, x1, a);
			a = __fmaf_rn(d2, s2, a);
			acc[c] = __fmaf_rn(nm2, x2, a);
		}
	}
	__device__ static float finish(const unsigned char*, float sum) { return sum; }
};

// GGML block_q6_K: ql[128], qh[64], i8 scales[16], f16 d. Unit u = quarter u % 4 of super-block
// u / 4: half = quarter / 2, positions l = 16 * (quarter % 2) .. + 15 of that half, each giving
// four values (l, l + 32, l + 64, l + 96 of the half) from ql[l], ql[l + 32] and qh[l].
template <>
struct Format<FMT_Q6_K> {
	static constexpr int UNIT = 64;
	// The unit's first column of x; its columns lie in one aligned stretch of SLOT.
	static constexpr int SLOT = 128;
	__device__ static int x_col(int u) { return 256 * (u >> 2) + 128 * ((u & 3) >> 1) + 16 * (u & 1); }
	__device__ static size_t row_bytes(int cols) { return (size_t)(cols / 256) * 210; }
	template <int NC>
	__device__ static void unit(const unsigned char* row, int u, const float* x, size_t x_stride, float (&acc)[NC])
	{
		const int block = u >> 2;
		const int half = (u & 3) >> 1;
		const int l0 = 16 * (u & 1);
		const unsigned char* b = row + (size_t)block * 210;
		unsigned int qa[4], qb[4], qh[4];
		ld_words_u16<4>(b + 64 * half + l0, qa);
		ld_words_u16<4>(b + 64 * half + 32 + l0, qb);
		ld_words_u16<4>(b + 128 + 32 * half + l0, qh);
		const float d = f16_to_f32(ld_u16(b + 208));
		const unsigned char* sc = b + 192 + 8 * half + (u & 1);
		float ds[4];
#pragma unroll
		for (int g = 0; g < 4; ++g) {
			ds[g] = __fmul_rn(d, (float)(int)(signed char)__ldg(sc + 2 * g));
		}
#pragma unroll
		for (int c = 0; c < NC; ++c) {
			const float* xb = x + (size_t)c * x_stride;
			float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
			for (int i = 0; i < 4; ++i) {
				float x0[4], x1[4], x2[4], x3[4];
				ld_x4(xb + 4 * i, x0);
				ld_x4(xb + 32 + 4 * i, x1);
				ld_x4(xb + 64 + 4 * i, x2);
				ld_x4(xb + 96 + 4 * i, x3);
#pragma unroll
				for (int k = 0; k < 4; ++k) {
					const unsigned int a = byte_of(qa, 4 * i + k);
					const unsigned int bq = byte_of(qb, 4 * i + k);
					const unsigned int hh = byte_of(qh, 4 * i + k);
					const int q1 = (int)((a & 15u) | ((hh & 3u) << 4)) - 32;
					const int q2 = (int)((bq & 15u) | (((hh >> 2) & 3u) << 4)) - 32;
					const int q3 = (int)((a >> 4) | (((hh >> 4) & 3u) << 4)) - 32;
					const int q4 = (int)((bq >> 4) | (((hh >> 6) & 3u) << 4)) - 32;
					s[0] = __fmaf_rn((float)q1, x0[k], s[0]);
					s[1] = __fmaf_rn((float)q2, x1[k], s[1]);
					s[2] = __fmaf_rn((float)q3, x2[k], s[2]);
					s[3] = __fmaf_rn((float)q4, x3[k], s[3]);
				}
			}
			float a = acc[c];
#pragma unroll
			for (int g = 0; g < 4; ++g) {
				a = __fmaf_rn(ds[g], s[g], a);
			}
			acc[c] = a;
		}
	}
	__device__ static float finish(const unsigned char*, float sum) { return sum; }
};

// Int8: a 16-byte row header (f32 scale, 12 zero bytes), then cols i8. Unit u = values
// 16u .. 16u + 15.
template <>
struct Format<FMT_INT8> {
	static constexpr int UNIT = 16;
	// The unit's first column of x; its columns lie in one aligned stretch of SLOT.
	static constexpr int SLOT = 16;
	__device__ static int x_col(int u) { return 16 * u; }
	__device__ static size_t row_bytes(int cols) { return 16 + (size_t)cols; }
	template <int NC>
	__device__ static void unit(const unsigned char* row, int u, const float* x, size_t x_stride, float (&acc)[NC])
	{
		const uint4 v = ld_u128(row + 16 + (size_t)u * 16);
		const unsigned int q[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
		for (int c = 0; c < NC; ++c) {
			const float* xb = x + (size_t)c * x_stride;
			float a = acc[c];
#pragma unroll
			for (int i = 0; i < 4; ++i) {
				float xv[4];
				ld_x4(xb + 4 * i, xv);
#pragma unroll
				for (int k = 0; k < 4; ++k) {
					a = __fmaf_rn((float)(int)(signed char)byte_of(q, 4 * i + k), xv[k], a);
				}
			}
			acc[c] = a;
		}
	}
	__device__ static float finish(const unsigned char* row, float sum)
	{
		return __fmul_rn(__uint_as_float(ld_u32(row)), sum);
	}
};

// Int4: f16 d, 16 bytes; byte j = value 2j (low nibble), value 2j + 1 (high), two's complement.
template <>
struct Format<FMT_INT4> {
	static constexpr int UNIT = 32;
	// The unit's first column of x; its columns lie in one aligned stretch of SLOT.
	static constexpr int SLOT = 32;
	__device__ static int x_col(int u) { return 32 * u; }
	__device__ static size_t row_bytes(int cols) { return (size_t)(cols / 32) * 18; }
	template <int NC>
	__device__ static void unit(const unsigned char* row, int u, const float* x, size_t x_stride, float (&acc)[NC])
	{
		const unsigned char* b = row + (size_t)u * 18;
		const float d = f16_to_f32(ld_u16(b));
		unsigned int q[4];
		ld_words_u16<4>(b + 2, q);
#pragma unroll
		for (int c = 0; c < NC; ++c) {
			const float* xb = x + (size_t)c * x_stride;
			float s = 0.0f;
#pragma unroll
			for (int i = 0; i < 8; ++i) {
				float xv[4];
				ld_x4(xb + 4 * i, xv);
#pragma unroll
				for (int k = 0; k < 2; ++k) {
					const unsigned int v = byte_of(q, 2 * i + k);
					s = __fmaf_rn((float)signed_nibble(v), xv[2 * k], s);
					s = __fmaf_rn((float)signed_nibble(v >> 4), xv[2 * k + 1], s);
				}
			}
			acc[c] = __fmaf_rn(d, s, acc[c]);
		}
	}
	__device__ static float finish(const unsigned char*, float sum) { return sum; }
};

// Bf16: 2 bytes per value. Unit u = values 8u .. 8u + 7 (one 16-byte load).
template <>
struct Format<FMT_BF16> {
	static constexpr int UNIT = 8;
	// The unit's first column of x; its columns lie in one aligned stretch of SLOT.
	static constexpr int SLOT = 8;
	__device__ static int x_col(int u) { return 8 * u; }
	__device__ static size_t row_bytes(int cols) { return (size_t)cols * 2; }
	template <int NC>
	__device__ static void unit(const unsigned char* row, int u, const float* x, size_t x_stride, float (&acc)[NC])
	{
		const uint4 v = ld_u128(row + (size_t)u * 16);
		const unsigned int q[4] = {v.x, v.y, v.z, v.w};
		float w[8];
#pragma unroll
		for (int i = 0; i < 4; ++i) {
			w[2 * i] = bf16_to_f32(q[i]);
			w[2 * i + 1] = bf16_to_f32(q[i] >> 16);
		}
#pragma unroll
		for (int c = 0; c < NC; ++c) {
			const float* xb = x + (size_t)c * x_stride;
			float xa[4], xc[4];
			ld_x4(xb, xa);
			ld_x4(xb + 4, xc);
			float a = acc[c];
#pragma unroll
			for (int k = 0; k < 4; ++k) {
				a = __fmaf_rn(w[k], xa[k], a);
			}
#pragma unroll
			for (int k = 0; k < 4; ++k) {
				a = __fmaf_rn(w[4 + k], xc[k], a);
			}
			acc[c] = a;
		}
	}
	__device__ static float finish(const unsigned char*, float sum) { return sum; }
};

// The 32 lanes' sums of weight row `row` (at wr) reduced by an xor butterfly; lane 0 writes
// them to y for input rows c0 .. c0 + NC - 1. The whole warp calls it.
template <int FMT, int NC>
__device__ __forceinline__ void gemv_store(
	const unsigned char* wr, float (&acc)[NC], int lane, int row, int rows, int c0, float* __restrict__ y)
{
#pragma unroll
	for (int c = 0; c < NC; ++c) {
#pragma unroll
		for (int off = 16; off > 0; off >>= 1) {
			acc[c] = __fadd_rn(acc[c], __shfl_xor_sync(0xFFFFFFFFu, acc[c], off));
		}
	}
	if (lane == 0) {
#pragma unroll
		for (int c = 0; c < NC; ++c) {
			y[(size_t)(c0 + c) * rows + row] = Format<FMT>::finish(wr, acc[c]);
		}
	}
}

// y[(c0 + c) * rows + r] = W[r] . x[c0 + c] for c < NC. cols must be a positive multiple of the
// format's block size (the launcher checks), so every unit is whole.
template <int FMT, int NC>
__device__ __forceinline__ void gemv_body(
	const unsigned char* __restrict__ w,
	int rows,
	int cols,
	const float* __restrict__ x,
	int c0,
	float* __restrict__ y)
{
	typedef Format<FMT> F;
	const int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
	const int lane = threadIdx.x & 31;
	// The whole warp leaves together, so the shuffles below always have all 32 lanes.
	if (row >= rows) {
		return;
	}
	const unsigned char* wr = w + (size_t)row * F::row_bytes(cols);
	const float* xc = x + (size_t)c0 * cols;
	float acc[NC];
#pragma unroll
	for (int c = 0; c < NC; ++c) {
		acc[c] = 0.0f;
	}
	const int units = cols / F::UNIT;
	for (int u = lane; u < units; u += 32) {
		F::template unit<NC>(wr, u, xc + F::x_col(u), (size_t)cols, acc);
	}
	gemv_store<FMT, NC>(wr, acc, lane, row, rows, c0, y);
}

// Kernel PREFIX_NAME_nNC running BODY<FMT, NC>.
#define GEMV_KERNEL_OF(PREFIX, BODY, NAME, FMT, NC)                                      \
	extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) PREFIX##_##NAME##_n##NC( \
		const unsigned char* __restrict__ w,                                                \
		int rows,                                                                           \
		int cols,                                                                           \
		const float* __restrict__ x,                                                        \
		int c0,                                                                             \
		float* __restrict__ y)                                                              \
	{                                                                                       \
		BODY<FMT, NC>(w, rows, cols, x, c0, y);                                             \
	}

#define GEMV_KERNEL(NAME, FMT, NC) GEMV_KERNEL_OF(gemv, gemv_body, NAME, FMT, NC)

#define GEMV_KERNELS(NAME, FMT) \
	GEMV_KERNEL(NAME, FMT, 1)   \
	GEMV_KERNEL(NAME, FMT, 2)   \
	GEMV_KERNEL(NAME, FMT, 3)   \
	GEMV_KERNEL(NAME, FMT, 4)   \
	GEMV_KERNEL(NAME, FMT, 5)   \
	GEMV_KERNEL(NAME, FMT, 6)   \
	GEMV_KERNEL(NAME, FMT, 7)   \
	GEMV_KERNEL(NAME, FMT, 8)

GEMV_KERNELS(q4_0, FMT_Q4_0)
GEMV_KERNELS(q4_1, FMT_Q4_1)
GEMV_KERNELS(q8_0, FMT_Q8_0)
GEMV_KERNELS(q4_k, FMT_Q4_K)
GEMV_KERNELS(q6_k, FMT_Q6_K)
GEMV_KERNELS(int8, FMT_INT8)
GEMV_KERNELS(int4, FMT_INT4)
GEMV_KERNELS(bf16, FMT_BF16)

// The same products with x staged in shared memory (gemv_staged_<format>_n<NC>): the block
// goes through the row 32 units at a time (lane l still takes units l, l + 32, ..., the same
// arithmetic in the same order, so the same bits as gemv_<format>_n<NC>). For each stretch its
// 128 threads first copy the stretch's x (for the NC input rows) from global memory with
// coalesced float4 loads into shared memory, SLOT columns to a slot and STAGE_PAD floats
// between slots; then each lane reads its unit's values from there. Read directly, a warp's
// float4 loads of x touch 32 lines at once (lane l's unit lies 32 · UNIT floats from lane
// l + 1's) and every warp of every block reads all of x; staged, a block reads x once per 4
// weight rows, in whole lines, and the padding puts the 8 lanes of each quarter-warp of a
// shared float4 load on 8 different bank quads (no conflicts). Dynamic shared memory: NC ·
// ROW floats (the launcher's staged_floats); instantiated for the NC whose stretch fits
// 48 KiB (every NC up to 8, up to 5 for Q4_K and Q6_K).
#define STAGE_PAD 4

template <int FMT, int NC>
__device__ __forceinline__ void gemv_staged_body(
	const unsigned char* __restrict__ w,
	int rows,
	int cols,
	const float* __restrict__ x,
	int c0,
	float* __restrict__ y)
{
	typedef Format<FMT> F;
	constexpr int SLOT_STRIDE = F::SLOT + STAGE_PAD;
	// Floats per input row: the stretch's slots, padded.
	constexpr int ROW = (32 * F::UNIT / F::SLOT) * SLOT_STRIDE;
	extern __shared__ float4 gemv_smem4[];
	float* xs = (float*)gemv_smem4;
	const int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
	const int lane = threadIdx.x & 31;
	// Warps past the last row stage x and meet the barriers like the others, and compute
	// nothing.
	const bool active = row < rows;
	const unsigned char* wr = w + (size_t)(active ? row : 0) * F::row_bytes(cols);
	const float* xc = x + (size_t)c0 * cols;
	float acc[NC];
#pragma unroll
	for (int c = 0; c < NC; ++c) {
		acc[c] = 0.0f;
	}
	const int units = cols / F::UNIT;
	for (int u0 = 0; u0 < units; u0 += 32) {
		const int here = min(32, units - u0);
		const int quads = here * (F::UNIT / 4);
		const int first = u0 * F::UNIT;
		// The previous stretch's reads are done.
		__syncthreads();
#pragma unroll
		for (int c = 0; c < NC; ++c) {
			const float4* src = (const float4*)(xc + (size_t)c * cols + first);
			for (int f = threadIdx.x; f < quads; f += blockDim.x) {
				const int at = 4 * f;
				*(float4*)(xs + c * ROW + (at / F::SLOT) * SLOT_STRIDE + at % F::SLOT) =
					__ldg(src + f);
			}
		}
		__syncthreads();
		if (active && lane < here) {
			const int u = u0 + lane;
			const int at = F::x_col(u) - first;
			F::template unit<NC>(
				wr, u, xs + (at / F::SLOT) * SLOT_STRIDE + at % F::SLOT, (size_t)ROW, acc);
		}
	}
	if (!active) {
		return;
	}
	gemv_store<FMT, NC>(wr, acc, lane, row, rows, c0, y);
}

#define GEMV_STAGED_KERNEL(NAME, FMT, NC) GEMV_KERNEL_OF(gemv_staged, gemv_staged_body, NAME, FMT, NC)

#define GEMV_STAGED_KERNELS_5(NAME, FMT) \
	GEMV_STAGED_KERNEL(NAME, FMT, 1)     \
	GEMV_STAGED_KERNEL(NAME, FMT, 2)     \
	GEMV_STAGED_KERNEL(NAME, FMT, 3)     \
	GEMV_STAGED_KERNEL(NAME, FMT, 4)     \
	GEMV_STAGED_KERNEL(NAME, FMT, 5)

#define GEMV_STAGED_KERNELS(NAME, FMT) \
	GEMV_STAGED_KERNELS_5(NAME, FMT)   \
	GEMV_STAGED_KERNEL(NAME, FMT, 6)   \
	GEMV_STAGED_KERNEL(NAME, FMT, 7)   \
	GEMV_STAGED_KERNEL(NAME, FMT, 8)

GEMV_STAGED_KERNELS(q4_0, FMT_Q4_0)
GEMV_STAGED_KERNELS(q4_1, FMT_Q4_1)
GEMV_STAGED_KERNELS(q8_0, FMT_Q8_0)
GEMV_STAGED_KERNELS_5(q4_k, FMT_Q4_K)
GEMV_STAGED_KERNELS_5(q6_k, FMT_Q6_K)
GEMV_STAGED_KERNELS(int8, FMT_INT8)
GEMV_STAGED_KERNELS(int4, FMT_INT4)
GEMV_STAGED_KERNELS(bf16, FMT_BF16)
