// Attention over a paged KV cache: the CUDA side of kernels/src/attention.rs, which documents
// the layout and the algorithms. In short:
//
// - k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim] f32; a sequence's
//   position p is in block table[p / block_size], slot p % block_size.
// - q: [tokens, num_heads, head_dim]; query head h reads kv head h / (num_heads / num_kv_heads).
// - window > 0: a query at position p sees keys in (p - window, p]; window = 0: causal.
//
// Every index read from device memory is checked: a block table entry that is not a block of
// the cache (>= num_blocks), or a position past a table's width, masks that key (it is never
// read); a context length past the table's capacity is cut to the capacity. The host-side
// launchers check every shape they can.

#define NEG_INF __int_as_float(0xff800000)
#define MAX_HEAD_DIM 256

#define DECODE_THREADS 128
#define DECODE_WARPS (DECODE_THREADS / 32)
// Keys whose K rows a warp of paged_attention_decode loads at once.
#define DECODE_KEYS 4
// Keys whose V values a thread of paged_attention_decode loads at once.
#define DECODE_VALUES 8

#define PREFILL_BR 16
#define PREFILL_THREADS 128
#define PREFILL_WARPS (PREFILL_THREADS / 32)
#define PREFILL_ROWS_PER_WARP (PREFILL_BR / PREFILL_WARPS)
#define PREFILL_DIM_SLOTS (MAX_HEAD_DIM / 32)
#define PREFILL_MAX_BC 32

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
	for (int offset = 16; offset > 0; offset >>= 1) {
		v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
	}
	return v;
}

// The max over the block of every thread's v. Every thread of the block must call it; red holds
// one float per warp and may be reused as soon as it returns.
__device__ float block_max(float v, float* red)
{
	const int lane = threadIdx.x & 31;
	const int warp = threadIdx.x >> 5;
	v = warp_max(v);
	if (lane == 0) {
		red[warp] = v;
	}
	__syncthreads();
	float r = red[0];
	for (int i = 1; i < (int)(blockDim.x >> 5); ++i) {
		r = fmaxf(r, red[i]);
	}
	__syncthreads();
	return r;
}

// The sum over the block of every thread's v, warp by warp then the warps in order. Same
// contract as block_max.
__device__ float block_sum(float v, float* red)
{
	const int lane = threadIdx.x & 31;
	const int warp = threadIdx.x >> 5;
	v = warp_sum(v);
	if (lane == 0) {
		red[warp] = v;
	}
	__syncthreads();
	float r = red[0];
	for (int i = 1; i < (int)(blockDim.x >> 5); ++i) {
		r += red[i];
	}
	__syncthreads();
	return r;
}

// The float offset of position pos's row for kv head kv_head through a table of table_len
// entries, or -1 when the table has no entry there or the entry is not a block of the cache.
__device__ __forceinline__ long long kv_row(
	const unsigned int* __restrict__ table,
	int table_len,
	int pos,
	int num_blocks,
	int block_size,
	int num_kv_heads,
	int head_dim,
	int kv_head)
{
	const int index = pos / block_size;
	if (pos < 0 || index >= table_len) {
		return -1;
	}
	const unsigned int block = table[index];
	if (block >= (unsigned int)num_blocks) {
		return -1;
	}
	return (((long long)block * block_size + pos % block_size) * num_kv_heads + kv_head)
		* (long long)head_dim;
}

// A sequence's context length, cut to what its table can hold (the launcher checks that
// capacity fits an int).
__device__ __forceinline__ int context_len(
	const unsigned int* __restrict__ context_lens,
	int seq,
	int max_blocks_per_seq,
	int block_size)
{
	const unsigned int capacity = (unsigned int)max_blocks_per_seq * (unsigned int)block_size;
	const unsigned int len = context_lens[seq];
	return (int)(len < capacity ? len : capacity);
}

// The first key the decode query at position len - 1 sees.
__device__ __forceinline__ int decode_first_key(int len, int window)
{
	return (window > 0 && len > window) ? len - window : 0;
}

// The cache write (vLLM's reshape_and_cache): token t's K and V rows ([num_kv_heads * head_dim]
// each) go to slot slot_mapping[t] = block * block_size + offset; a negative slot, or one past
// the cache, is skipped. Grid: (num_tokens); block: any multiple of 32 threads.
extern "C" __global__ void write_kv(
	const float* __restrict__ k,
	const float* __restrict__ v,
	const long long* __restrict__ slot_mapping,
	float* __restrict__ k_cache,
	float* __restrict__ v_cache,
	int num_slots,
	int row_len)
{
	const int t = blockIdx.x;
	const long long slot = slot_mapping[t];
	if (slot < 0 || slot >= (long long)num_slots) {
		return;
	}
	const float* ks = k + (size_t)t * row_len;
	const float* vs = v + (size_t)t * row_len;
	float* kd = k_cache + (size_t)slot * row_len;
	float* vd = v_cache + (size_t)slot * row_len;
	for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
		kd[i] = ks[i];
		vd[i] = vs[i];
	}
}

// Paged decode attention, one partition: block (head, seq, part) of DECODE_THREADS threads
// takes the keys first + part * partition_size .. + partition_size (cut to the context) of
// sequence seq, and writes their max logit, their exp-sum and the unnormalized sum of the
// values weighted by exp(logit - max) at [seq, head, part] of max_logits, exp_sums and
// partial_out ([num_seqs, num_heads, max_partitions(, head_dim)]). Partitions past the context
// write nothing (the reduce does not read them).
//
// Dynamic shared memory: the partition's key rows (partition_size long longs, rounded up to an
// even count), q (head_dim rounded up to 4 floats), DECODE_WARPS floats for the reductions,
// partition_size floats for the logits.
//
// Logits: warp w takes DECODE_KEYS keys at a time (keys DECODE_KEYS * w .., then DECODE_KEYS *
// DECODE_WARPS further), all their loads issued before any sum; its lanes split each key's
// head_dim (float4 loads when head_dim % 4 == 0), then an xor butterfly per key. Each key's
// cache row is computed once there (block table lookup) and kept in shared memory. The weighted
// values: thread d takes dimensions d, d + DECODE_THREADS, ... and walks the partition's keys in
// order, DECODE_VALUES loads in flight before their multiply-adds. Masked keys load row 0 (no
// branch holds the loads back) and are dropped: their logit is -inf, their weight 0.
extern "C" __global__ void paged_attention_decode(
	const float* __restrict__ q,
	const float* __restrict__ k_cache,
	const float* __restrict__ v_cache,
	int num_blocks,
	int block_size,
	int num_kv_heads,
	int head_dim,
	const unsigned int* __restrict__ block_tables,
	int max_blocks_per_seq,
	const unsigned int* __restrict__ context_lens,
	int num_heads,
	float scale,
	int window,
	int partition_size,
	int max_partitions,
	float* __restrict__ exp_sums,
	float* __restrict__ max_logits,
	float* __restrict__ partial_out)
{
	extern __shared__ float4 decode_smem4[];
	float* smem = (float*)decode_smem4;
	const int head = blockIdx.x;
	const int seq = blockIdx.y;
	const int part = blockIdx.z;
	const int tid = threadIdx.x;
	const int lane = tid & 31;
	const int warp = tid >> 5;
	const int len = context_len(context_lens, seq, max_blocks_per_seq, block_size);
	const int part_start = decode_first_key(len, window) + part * partition_size;
	if (part_start >= len || part >= max_partitions || head_dim > MAX_HEAD_DIM) {
		return;
	}
	const int n = min(partition_size, len - part_start);
	const int kv_head = head / (num_heads / num_kv_heads);
	const int q_stride = (head_dim + 3) & ~3;
	long long* rows = (long long*)decode_smem4;
	float* qs = smem + 2 * ((partition_size + 1) & ~1);
	float* red = qs + q_stride;
	float* logits = red + DECODE_WARPS;
	const unsigned int* table = block_tables + (size_t)seq * max_blocks_per_seq;
	// Loads of masked keys go to row 0, there whenever the cache has a block; with none, every
	// key is masked and nothing is loaded.
	const bool loads = num_blocks > 0;

	const float* q_row = q + ((size_t)seq * num_heads + head) * head_dim;
	for (int d = tid; d < head_dim; d += blockDim.x) {
		qs[d] = q_row[d];
	}
	__syncthreads();

	const bool vec4 = (head_dim & 3) == 0;
	for (int i0 = warp * DECODE_KEYS; i0 < n; i0 += DECODE_WARPS * DECODE_KEYS) {
		long long row[DECODE_KEYS];
		const float* k_row[DECODE_KEYS];
		float s[DECODE_KEYS];
#pragma unroll
		for (int j = 0; j < DECODE_KEYS; ++j) {
			row[j] = i0 + j < n ? kv_row(table, max_blocks_per_seq, part_start + i0 + j,
						     num_blocks, block_size, num_kv_heads, head_dim,
						     kv_head)
					    : -1;
			k_row[j] = k_cache + (row[j] >= 0 ? row[j] : 0);
			s[j] = 0.0f;
		}
		if (loads && vec4) {
			const float4* q4 = (const float4*)qs;
			for (int c = lane; c < (head_dim >> 2); c += 32) {
				const float4 a = q4[c];
				float4 b[DECODE_KEYS];
#pragma unroll
				for (int j = 0; j < DECODE_KEYS; ++j) {
					b[j] = __ldg((const float4*)k_row[j] + c);
				}
#pragma unroll
				for (int j = 0; j < DECODE_KEYS; ++j) {
					s[j] += a.x * b[j].x + a.y * b[j].y + a.z * b[j].z + a.w * b[j].w;
				}
			}
		} else if (loads) {
			for (int c = lane; c < head_dim; c += 32) {
				const float a = qs[c];
				float b[DECODE_KEYS];
#pragma unroll
				for (int j = 0; j < DECODE_KEYS; ++j) {
					b[j] = __ldg(k_row[j] + c);
				}
#pragma unroll
				for (int j = 0; j < DECODE_KEYS; ++j) {
					s[j] += a * b[j];
				}
			}
		}
#pragma unroll
		for (int j = 0; j < DECODE_KEYS; ++j) {
			s[j] = warp_sum(s[j]);
		}
		if (lane == 0) {
#pragma unroll
			for (int j = 0; j < DECODE_KEYS; ++j) {
				if (i0 + j < n) {
					logits[i0 + j] = row[j] >= 0 ? s[j] * scale : NEG_INF;
					rows[i0 + j] = row[j];
				}
			}
		}
	}
	// Publishes the logits and the rows.
	__syncthreads();

	float m = NEG_INF;
	for (int i = tid; i < n; i += blockDim.x) {
		m = fmaxf(m, logits[i]);
	}
	m = block_max(m, red);
	float sum = 0.0f;
	for (int i = tid; i < n; i += blockDim.x) {
		const float l = logits[i];
		const float e = l == NEG_INF ? 0.0f : expf(l - m);
		logits[i] = e;
		sum += e;
	}
	// Its barriers also publish the exponentials written above.
	sum = block_sum(sum, red);

	const size_t at = ((size_t)seq * num_heads + head) * max_partitions + part;
	float* out = partial_out + at * head_dim;
	for (int d = tid; d < head_dim && loads; d += blockDim.x) {
		float acc = 0.0f;
		int i = 0;
		for (; i + DECODE_VALUES <= n; i += DECODE_VALUES) {
			float v[DECODE_VALUES];
#pragma unroll
			for (int j = 0; j < DECODE_VALUES; ++j) {
				const long long row = rows[i + j];
				v[j] = __ldg(v_cache + (row >= 0 ? row : 0) + d);
			}
#pragma unroll
			for (int j = 0; j < DECODE_VALUES; ++j) {
				const float e = logits[i + j];
				if (e != 0.0f) {
					acc += e * v[j];
				}
			}
		}
		for (; i < n; ++i) {
			const float e = logits[i];
			if (e != 0.0f) {
				acc += e * __ldg(v_cache + rows[i] + d);
			}
		}
		out[d] = acc;
	}
	for (int d = tid; d < head_dim && !loads; d += blockDim.x) {
		out[d] = 0.0f;
	}
	if (tid == 0) {
		exp_sums[at] = sum;
		max_logits[at] = m;
	}
}

// The reduce of paged decode attention: block (head, seq) combines the partitions of
// paged_attention_decode into out[seq, head] ([num_seqs, num_heads, head_dim]): with
// m = max m_i and w_i = exp(m_i - m), out = sum_i w_i o_i / sum_i w_i s_i. A partition whose
// exp-sum is 0 (all its keys masked) has weight 0; a sequence with no key gets zeros.
// Dynamic shared memory: max_partitions floats (the weights) and 32 for the reductions.
// Grid: (num_heads, num_seqs); block: any multiple of 32 threads up to 1024.
extern "C" __global__ void paged_attention_reduce(
	const float* __restrict__ exp_sums,
	const float* __restrict__ max_logits,
	const float* __restrict__ partial_out,
	const unsigned int* __restrict__ context_lens,
	int max_blocks_per_seq,
	int block_size,
	int num_heads,
	int head_dim,
	int window,
	int partition_size,
	int max_partitions,
	float* __restrict__ out)
{
	extern __shared__ float4 reduce_smem4[];
	float* weights = (float*)reduce_smem4;
	float* red = weights + max_partitions;
	const int head = blockIdx.x;
	const int seq = blockIdx.y;
	const int tid = threadIdx.x;
	const int len = context_len(context_lens, seq, max_blocks_per_seq, block_size);
	const int span = len - decode_first_key(len, window);
	const int parts = min((span + partition_size - 1) / partition_size, max_partitions);
	const size_t base = ((size_t)seq * num_heads + head) * max_partitions;
	float* o = out + ((size_t)seq * num_heads + head) * head_dim;

	float m = NEG_INF;
	for (int i = tid; i < parts; i += blockDim.x) {
		if (exp_sums[base + i] > 0.0f) {
			m = fmaxf(m, max_logits[base + i]);
		}
	}
	m = block_max(m, red);
	float total = 0.0f;
	for (int i = tid; i < parts; i += blockDim.x) {
		const float s = exp_sums[base + i];
		const float w = s > 0.0f ? expf(max_logits[base + i] - m) : 0.0f;
		weights[i] = w;
		total += s * w;
	}
	// Its barriers also publish the weights written above.
	total = block_sum(total, red);

	for (int d = tid; d < head_dim; d += blockDim.x) {
		float acc = 0.0f;
		for (int i = 0; i < parts; ++i) {
			const float w = weights[i];
			if (w != 0.0f) {
				acc += w * partial_out[(base + i) * head_dim + d];
			}
		}
		o[d] = total > 0.0f ? acc / total : 0.0f;
	}
}

// Flash-style prefill for one sequence: queries at positions start .. start + num_tokens
// (q, out: [num_tokens, num_heads, head_dim]) over the keys the cache holds through table.
// Grid: (ceil(num_tokens / PREFILL_BR), num_heads); block: PREFILL_THREADS threads.
//
// Tiles: Br = PREFILL_BR = 16 query rows per block, Bc = bc <= 32 keys per key tile (the
// launcher picks 32, 16 or 8 to keep shared memory under 48 KiB). Dynamic shared memory:
// Q [Br, head_dim], K [bc, head_dim + 1] (padded: lane j reads key j's row without bank
// conflicts), V [bc, head_dim].
//
// Warp w owns query rows w, w + 4, w + 8, w + 12 of the tile; for each, lane j computes the
// score of key j of the tile (a sequential dot product), the warp takes the tile max and the
// exp-sum by butterflies, and lane l accumulates output dimensions l, l + 32, ... in registers
// (PREFILL_DIM_SLOTS of them per row, so head_dim <= 256), the p_j broadcast by shuffles.
// Key tiles run from the first key the tile's first row sees to the tile's last position.
extern "C" __global__ void flash_prefill(
	const float* __restrict__ q,
	const float* __restrict__ k_cache,
	const float* __restrict__ v_cache,
	int num_blocks,
	int block_size,
	int num_kv_heads,
	int head_dim,
	const unsigned int* __restrict__ table,
	int table_len,
	int start,
	int num_tokens,
	int num_heads,
	float scale,
	int window,
	int bc,
	float* __restrict__ out)
{
	extern __shared__ float4 prefill_smem4[];
	float* qs = (float*)prefill_smem4;
	float* ks = qs + PREFILL_BR * head_dim;
	float* vs = ks + bc * (head_dim + 1);
	const int tile_row = blockIdx.x * PREFILL_BR;
	const int head = blockIdx.y;
	const int tid = threadIdx.x;
	const int lane = tid & 31;
	const int warp = tid >> 5;
	if (head_dim > MAX_HEAD_DIM || bc > PREFILL_MAX_BC || bc < 1 || tile_row >= num_tokens) {
		return;
	}
	const int rows = min(PREFILL_BR, num_tokens - tile_row);
	const int kv_head = head / (num_heads / num_kv_heads);
	const int first_pos = start + tile_row;
	const int last_pos = first_pos + rows - 1;
	const int key_first = (window > 0 && first_pos + 1 > window) ? first_pos + 1 - window : 0;

	for (int i = tid; i < PREFILL_BR * head_dim; i += blockDim.x) {
		const int r = i / head_dim;
		const int d = i - r * head_dim;
		qs[i] = r < rows ? q[((size_t)(tile_row + r) * num_heads + head) * head_dim + d] : 0.0f;
	}

	float m[PREFILL_ROWS_PER_WARP];
	float l[PREFILL_ROWS_PER_WARP];
	float acc[PREFILL_ROWS_PER_WARP][PREFILL_DIM_SLOTS];
#pragma unroll
	for (int rr = 0; rr < PREFILL_ROWS_PER_WARP; ++rr) {
		m[rr] = NEG_INF;
		l[rr] = 0.0f;
#pragma unroll
		for (int c = 0; c < PREFILL_DIM_SLOTS; ++c) {
			acc[rr][c] = 0.0f;
		}
	}

	for (int key_start = key_first; key_start <= last_pos; key_start += bc) {
		const int keys = min(bc, last_pos + 1 - key_start);
		// The previous tile's readers are done (and, the first time, Q is in place).
		__syncthreads();
		for (int i = tid; i < keys * head_dim; i += blockDim.x) {
			const int j = i / head_dim;
			const int d = i - j * head_dim;
			const long long row = kv_row(
				table, table_len, key_start + j, num_blocks, block_size, num_kv_heads, head_dim,
				kv_head);
			ks[j * (head_dim + 1) + d] = row >= 0 ? k_cache[row + d] : 0.0f;
			vs[j * head_dim + d] = row >= 0 ? v_cache[row + d] : 0.0f;
		}
		__syncthreads();

		const int key = key_start + lane;
		const bool key_valid = lane < keys
			&& kv_row(table, table_len, key, num_blocks, block_size, num_kv_heads, head_dim,
					  kv_head) >= 0;
#pragma unroll
		for (int rr = 0; rr < PREFILL_ROWS_PER_WARP; ++rr) {
			const int r = warp + rr * PREFILL_WARPS;
			if (r >= rows) {
				continue;
			}
			const int pos = first_pos + r;
			float s = NEG_INF;
			if (key_valid && key <= pos && (window <= 0 || key > pos - window)) {
				const float* qr = qs + r * head_dim;
				const float* kr = ks + lane * (head_dim + 1);
				float dot = 0.0f;
				for (int d = 0; d < head_dim; ++d) {
					dot += qr[d] * kr[d];
				}
				s = dot * scale;
			}
			const float m_new = fmaxf(m[rr], warp_max(s));
			if (m_new == NEG_INF) {
				continue;
			}
			const float p = s == NEG_INF ? 0.0f : expf(s - m_new);
			const float alpha = m[rr] == NEG_INF ? 0.0f : expf(m[rr] - m_new);
			l[rr] = l[rr] * alpha + warp_sum(p);
#pragma unroll
			for (int c = 0; c < PREFILL_DIM_SLOTS; ++c) {
				acc[rr][c] *= alpha;
			}
			for (int j = 0; j < keys; ++j) {
				const float pj = __shfl_sync(FULL_MASK, p, j);
				if (pj == 0.0f) {
					continue;
				}
				const float* vr = vs + j * head_dim;
#pragma unroll
				for (int c = 0; c < PREFILL_DIM_SLOTS; ++c) {
					const int d = lane + 32 * c;
					if (d < head_dim) {
						acc[rr][c] += pj * vr[d];
					}
				}
			}
			m[rr] = m_new;
		}
	}

#pragma unroll
	for (int rr = 0; rr < PREFILL_ROWS_PER_WARP; ++rr) {
		const int r = warp + rr * PREFILL_WARPS;
		if (r >= rows) {
			continue;
		}
		float* o = out + ((size_t)(tile_row + r) * num_heads + head) * head_dim;
#pragma unroll
		for (int c = 0; c < PREFILL_DIM_SLOTS; ++c) {
			const int d = lane + 32 * c;
			if (d < head_dim) {
				o[d] = l[rr] > 0.0f ? acc[rr][c] / l[rr] : 0.0f;
			}
		}
	}
}
