// Multi-LoRA over a paged adapter pool: the CUDA side of kernels/src/adapter_pool.rs.
//
// The pool is [num_pages, page_len] floats; an adapter of rank r for one projection owns its r
// rows of A ([r, in]), each on a_row_pages = ceil(in / page_len) pages, then its r rows of
// s*B^T ([r, out]), each on b_row_pages = ceil(out / page_len) pages; a row's values run from
// the start of its first page on (its last page may be part full). A batch comes as tiles of
// up to TILE_ROWS rows of one segment (rows sharing an adapter): tile t covers rows
// tile_row_start[t] .. + tile_rows[t], has rank tile_rank[t], and its r * (a_row_pages +
// b_row_pages) page numbers start at pages[tile_pages[t]]. Every adapter of one launch adapts
// the same projection, so the row page counts are the launch's.
//
// One tile of one row is BGMV (a decode batch where every row has its own adapter); tiles of
// up to 16 rows are SGMV (a prefill segment): a warp reads each adapter row once for the whole
// tile. The arithmetic is the CPU reference's, in the same order, so results agree to the bit:
// fused multiply-adds in explicit __fmaf_rn, lane l of a warp summing c = l, l+32, ... (however
// the row is cut into pages), then an xor butterfly.

#define TILE_ROWS 16
#define SHRINK_WARPS 8
#define EXPAND_THREADS 128
#define MAX_RANK 128

// shrunk[r, j] = x[r] . A_j for the tile's rows and every rank row j of its adapter.
// Grid: (ceil(max_rank / SHRINK_WARPS), num_tiles); block: 32 * SHRINK_WARPS threads; warp w of
// block (bx, t) does rank row j = bx * SHRINK_WARPS + w of tile t.
extern "C" __global__ void lora_shrink(
	const float* __restrict__ pool,
	int page_len,
	const unsigned int* __restrict__ tile_row_start,
	const unsigned int* __restrict__ tile_rows,
	const unsigned int* __restrict__ tile_rank,
	const unsigned int* __restrict__ tile_pages,
	const unsigned int* __restrict__ pages,
	int a_row_pages,
	int b_row_pages,
	const float* __restrict__ x,
	int in_dim,
	float* __restrict__ shrunk,
	int max_rank)
{
	const int t = blockIdx.y;
	const int lane = threadIdx.x & 31;
	const int j = blockIdx.x * SHRINK_WARPS + (threadIdx.x >> 5);
	const int rank = (int)tile_rank[t];
	if (j >= rank) {
		return;
	}
	const int start = (int)tile_row_start[t];
	const int rows = (int)tile_rows[t];
	const unsigned int* a_pages = pages + tile_pages[t] + (size_t)j * (size_t)a_row_pages;
	float acc[TILE_ROWS];
#pragma unroll
	for (int r = 0; r < TILE_ROWS; ++r) {
		acc[r] = 0.0f;
	}
	// Input c is value `off` of the row's page q.
	for (int c = lane, q = 0, off = lane; c < in_dim; c += 32, off += 32) {
		while (off >= page_len) {
			off -= page_len;
			++q;
		}
		const float av = __ldg(pool + (size_t)__ldg(a_pages + q) * (size_t)page_len + off);
#pragma unroll
		for (int r = 0; r < TILE_ROWS; ++r) {
			if (r < rows) {
				acc[r] = __fmaf_rn(x[(size_t)(start + r) * in_dim + c], av, acc[r]);
			}
		}
	}
#pragma unroll
	for (int r = 0; r < TILE_ROWS; ++r) {
		float v = acc[r];
#pragma unroll
		for (int offset = 16; offset > 0; offset >>= 1) {
			v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, offset));
		}
		if (lane == 0 && r < rows) {
			shrunk[(size_t)(start + r) * max_rank + j] = v;
		}
	}
}

// y[r] += sum_j shrunk[r, j] * (s*B^T)_j for the tile's rows.
// Grid: (ceil(out_dim / EXPAND_THREADS), num_tiles); block: EXPAND_THREADS threads, one output
// column each; the tile's shrunk values are staged in shared memory.
extern "C" __global__ void lora_expand(
	const float* __restrict__ pool,
	int page_len,
	const unsigned int* __restrict__ tile_row_start,
	const unsigned int* __restrict__ tile_rows,
	const unsigned int* __restrict__ tile_rank,
	const unsigned int* __restrict__ tile_pages,
	const unsigned int* __restrict__ pages,
	int a_row_pages,
	int b_row_pages,
	const float* __restrict__ shrunk,
	int max_rank,
	float* __restrict__ y,
	int out_dim)
{
	__shared__ float s[TILE_ROWS][MAX_RANK];
	const int t = blockIdx.y;
	const int start = (int)tile_row_start[t];
	const int rows = (int)tile_rows[t];
	const int rank = (int)tile_rank[t];
	for (int i = threadIdx.x; i < rows * rank; i += blockDim.x) {
		const int r = i / rank;
		const int j = i - r * rank;
		s[r][j] = shrunk[(size_t)(start + r) * max_rank + j];
	}
	__syncthreads();
	const int o = blockIdx.x * EXPAND_THREADS + threadIdx.x;
	if (o >= out_dim) {
		return;
	}
	// Output o is value `off` of page q of each row of s*B^T.
	const int q = o / page_len;
	const int off = o - q * page_len;
	const unsigned int* b_pages =
		pages + tile_pages[t] + (size_t)rank * (size_t)a_row_pages + (size_t)q;
	float acc[TILE_ROWS];
#pragma unroll
	for (int r = 0; r < TILE_ROWS; ++r) {
		acc[r] = 0.0f;
	}
	for (int j = 0; j < rank; ++j) {
		const unsigned int page = __ldg(b_pages + (size_t)j * (size_t)b_row_pages);
		const float b = __ldg(pool + (size_t)page * (size_t)page_len + off);
#pragma unroll
		for (int r = 0; r < TILE_ROWS; ++r) {
			if (r < rows) {
				acc[r] = __fmaf_rn(s[r][j], b, acc[r]);
			}
		}
	}
#pragma unroll
	for (int r = 0; r < TILE_ROWS; ++r) {
		if (r < rows) {
			float* out = y + (size_t)(start + r) * out_dim + o;
			*out = __fadd_rn(*out, acc[r]);
		}
	}
}

// Writes an uploaded adapter's rows into its pages: staged holds A ([rank, in_dim]) then s*B^T
// ([rank, out_dim]) contiguously, as they came over PCIe. Grid: (the adapter's page count);
// block: any width; block p fills the adapter's page p.
extern "C" __global__ void lora_scatter_rows(
	const float* __restrict__ staged,
	int rank,
	int in_dim,
	int out_dim,
	const unsigned int* __restrict__ adapter_pages,
	float* __restrict__ pool,
	int page_len)
{
	const int a_row_pages = (in_dim + page_len - 1) / page_len;
	const int b_row_pages = (out_dim + page_len - 1) / page_len;
	const int p = blockIdx.x;
	const int a_pages = rank * a_row_pages;
	int row, q, width;
	const float* rows;
	if (p < a_pages) {
		row = p / a_row_pages;
		q = p - row * a_row_pages;
		width = in_dim;
		rows = staged;
	} else if (p < a_pages + rank * b_row_pages) {
		row = (p - a_pages) / b_row_pages;
		q = p - a_pages - row * b_row_pages;
		width = out_dim;
		rows = staged + (size_t)rank * (size_t)in_dim;
	} else {
		return;
	}
	const int len = min(page_len, width - q * page_len);
	const float* src = rows + (size_t)row * (size_t)width + (size_t)q * (size_t)page_len;
	float* dst = pool + (size_t)adapter_pages[p] * (size_t)page_len;
	for (int c = threadIdx.x; c < len; c += blockDim.x) {
		dst[c] = src[c];
	}
}
