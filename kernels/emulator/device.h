// The device side of the CUDA emulator (see driver.cpp): what the sources in kernels/cuda/ use of
// CUDA C++, defined for a host C++ compiler, so that the very same sources compile into the
// emulator's `libcuda.so` and run on the CPU.
//
// Every CUDA thread of a block is a fiber; `__syncthreads()` and each warp shuffle are the only
// points where a fiber gives way to the next, so code that leans on an ordering CUDA does not
// promise (shared memory read without a barrier, a shuffle some lanes of the warp never reach)
// fails here too, and loudly.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#define CUDA_EMULATOR 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One copy per OS thread: each thread runs one block at a time, and every fiber of that block
// sees the same copy. The build script turns each `__shared__ T name[dims];` into EMU_SHARED,
// which also has the array filled with 0xFF (NaN) before every block, as dynamic shared memory
// is: a kernel reading shared memory nobody wrote sees poison, not the last block's values.
#define __shared__ static thread_local
#define EMU_SHARED(T, name, dims)          \
	static thread_local T name dims;   \
	static thread_local const bool emu_shared_##name = emu::register_shared(&name, sizeof(name))

struct uint3 {
	unsigned int x, y, z;
};
struct alignas(16) float4 {
	float x, y, z, w;
};
struct alignas(8) float2 {
	float x, y;
};
struct alignas(16) uint4 {
	unsigned int x, y, z, w;
};

inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }

namespace emu {

/// What a fiber knows about itself. It lies at the lowest address of the fiber's stack region,
/// which is FIBER_REGION bytes aligned to FIBER_REGION, so code running on the fiber finds it
/// from its stack pointer: no thread-local lookup, whatever OS thread runs the fiber.
struct ThreadState {
	uint3 thread_idx;
	unsigned int linear;
	uint3 block_idx;
	void* worker;
};

constexpr std::uintptr_t FIBER_REGION = 128 * 1024;

inline ThreadState* self()
{
	std::uintptr_t sp;
	asm("mov %%rsp, %0" : "=r"(sp));
	return reinterpret_cast<ThreadState*>(sp & ~(FIBER_REGION - 1));
}

/// The launch's shape (launches run one at a time).
extern uint3 block_dim;
extern uint3 grid_dim;

/// Stops the launch: the running kernel fails with `what` (printed, and the launch returns an
/// error). Never returns to the caller.
[[noreturn]] void fault(const char* what);
/// `__syncthreads()`.
void sync_block();
/// Gives every lane of the calling fiber's warp `value` (8 bytes at most) and returns lane
/// `src`'s; every lane of the warp must call it with `mask` naming all of them.
std::uint64_t warp_exchange(unsigned int mask, std::uint64_t value, int src);
/// The launch's dynamic shared memory (null when the launch asked for none).
void* dynamic_shared();
/// Has `bytes` at `at` (a static `__shared__` array) poisoned now and before every later block
/// on this OS thread.
bool register_shared(void* at, std::size_t bytes);
/// The calling fiber's lane.
inline int lane() { return static_cast<int>(self()->linear & 31u); }

template <typename T>
inline T exchange(unsigned int mask, T v, int src)
{
	static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a 4- or 8-byte value");
	std::uint64_t bits = 0;
	std::memcpy(&bits, &v, sizeof(T));
	bits = warp_exchange(mask, bits, src);
	T r;
	std::memcpy(&r, &bits, sizeof(T));
	return r;
}

} // namespace emu

#define threadIdx (emu::self()->thread_idx)
#define blockIdx (emu::self()->block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define warpSize 32

inline void __syncthreads() { emu::sync_block(); }

template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = 32)
{
	const int lane = emu::lane();
	const int src = lane ^ lane_mask;
	// Outside the caller's segment of `width` lanes: the lane keeps its own value.
	const bool inside = (src / width) == (lane / width);
	return emu::exchange(mask, v, inside ? src : lane);
}

template <typename T>
inline T __shfl_sync(unsigned int mask, T v, int src_lane, int width = 32)
{
	const int lane = emu::lane();
	return emu::exchange(mask, v, (lane / width) * width + (src_lane % width));
}

template <typename T>
inline T __shfl_up_sync(unsigned int mask, T v, unsigned int delta, int width = 32)
{
	const int lane = emu::lane();
	const int src = lane - static_cast<int>(delta);
	const bool inside = src >= (lane / width) * width;
	return emu::exchange(mask, v, inside ? src : lane);
}

template <typename T>
inline T __shfl_down_sync(unsigned int mask, T v, unsigned int delta, int width = 32)
{
	const int lane = emu::lane();
	const int src = lane + static_cast<int>(delta);
	const bool inside = src < (lane / width + 1) * width;
	return emu::exchange(mask, v, inside ? src : lane);
}

// A read through the read-only cache: a fault when `p` is not aligned to its type, as on a GPU.
template <typename T>
inline T __ldg(const T* p)
{
	if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0) {
		emu::fault("misaligned __ldg");
	}
	return *p;
}

// Rounded-to-nearest arithmetic: plain IEEE operations (the emulator is built without
// contraction, so a * b + c is never fused behind the kernel's back).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }

inline float __int_as_float(int v)
{
	float f;
	std::memcpy(&f, &v, 4);
	return f;
}
inline float __uint_as_float(unsigned int v)
{
	float f;
	std::memcpy(&f, &v, 4);
	return f;
}
inline unsigned int __float_as_uint(float f)
{
	unsigned int v;
	std::memcpy(&v, &f, 4);
	return v;
}
inline int __float_as_int(float f)
{
	int v;
	std::memcpy(&v, &f, 4);
	return v;
}

// IEEE half bits to float, exactly (what PTX's cvt.f32.f16 does).
inline float emu_half_to_float(unsigned short h)
{
	const unsigned int sign = (h & 0x8000u) << 16;
	const unsigned int exp = (h >> 10) & 0x1Fu;
	const unsigned int mant = h & 0x3FFu;
	float magnitude;
	if (exp == 0) {
		magnitude = std::ldexp(static_cast<float>(mant), -24);
	} else if (exp == 31) {
		magnitude = mant ? NAN : INFINITY;
	} else {
		magnitude = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
	}
	return sign ? -magnitude : magnitude;
}

// CUDA's integer and float min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

namespace emu {

using Invoker = void (*)(void** params);

/// Adds kernel `name` to the emulator's table (at load time, from each source's registration).
struct Registrar {
	Registrar(const char* name, Invoker invoke, int params);
};

template <typename... A>
constexpr int arity(void (*)(A...))
{
	return static_cast<int>(sizeof...(A));
}

template <typename... A, std::size_t... I>
inline void call(void (*kernel)(A...), void** params, std::index_sequence<I...>)
{
	kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...);
}

template <typename... A>
inline void call_kernel(void (*kernel)(A...), void** params)
{
	call(kernel, params, std::index_sequence_for<A...>{});
}

/// Calls kernel `K` with its arguments unpacked from `cuLaunchKernel`'s `kernelParams`.
template <auto K>
void invoke(void** params)
{
	call_kernel(K, params);
}

} // namespace emu

// Registers kernel `name` (the build script lists a source's kernels after compiling it once).
#define EMU_REGISTER(name) \
	static emu::Registrar emu_registrar_##name(#name, &emu::invoke<&name>, emu::arity(&name));
