// A CUDA driver that runs kernels on the CPU: the part of the CUDA driver API (libcuda.so) that
// cudarc calls for this project, over host memory, and kernels/cuda/*.cu compiled for the host
// (device.h) instead of for a GPU. scripts/build-cuda-emulator.sh builds it into a folder of its
// own; with that folder first on LD_LIBRARY_PATH, the crate's GPU code — cudarc, the launchers'
// grids, arguments and shared-memory sizes, the kernels' index arithmetic — runs unchanged on a
// machine with no GPU, and the GPU-against-CPU checks check it.
//
// What it emulates:
// - Memory: device pointers are host pointers. Fresh allocations are filled with 0xFF bytes (a
//   NaN in every float) so a kernel that reads what nobody wrote shows it; copies and frees are
//   checked against the allocations. Each allocation ends (to 16 bytes) against a page that
//   cannot be touched: a kernel that reads or writes past a buffer's end fails its launch,
//   naming the thread and how far past which allocation it went; so does any other access
//   outside memory, or a thread's stack overflowing.
// - Modules: cuModuleLoadData takes the PTX NVRTC made from the same sources; each `.entry` must
//   be a kernel compiled in here with the same number of parameters, and its `.maxntid`
//   (__launch_bounds__) limits the launches as on a GPU.
// - Launches run at once, in order, one at a time in the process, their blocks spread over the
//   launching thread and helper threads (one per core); a block's threads are fibers on one of
//   them. A fiber runs until __syncthreads() or a warp
//   shuffle, then hands over to the next thread that can run; a barrier opens when every live
//   thread of the block (every lane of the warp) has reached it. A barrier that can never open
//   (a shuffle some lanes skip, lanes that left early) fails the launch with
//   CUDA_ERROR_LAUNCH_FAILED instead of hanging, as does a misaligned __ldg or a shuffle mask
//   that does not name the whole warp. Dynamic shared memory is poisoned (0xFF) for each block.
// - Streams and events exist and are trivially complete; event times are wall-clock.
// It is not a GPU: its speed means nothing, and the device's name says so
// (`OpenLedger CUDA emulator`), which the benches check.

#include "device.h"

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#define EXPORT extern "C" __attribute__((visibility("default")))

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;

namespace {

constexpr CUresult SUCCESS = 0;
constexpr CUresult INVALID_VALUE = 1;
constexpr CUresult NOT_INITIALIZED = 3;
constexpr CUresult INVALID_DEVICE = 101;
constexpr CUresult INVALID_IMAGE = 200;
constexpr CUresult INVALID_HANDLE = 400;
constexpr CUresult NOT_FOUND = 500;
constexpr CUresult LAUNCH_OUT_OF_RESOURCES = 701;
constexpr CUresult LAUNCH_FAILED = 719;

const char* error_name(CUresult r)
{
	switch (r) {
	case SUCCESS: return "CUDA_SUCCESS";
	case INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
	case NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
	case INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
	case INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
	case INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
	case NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
	case LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
	case LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
	default: return "CUDA_ERROR_UNKNOWN";
	}
}

const char* error_string(CUresult r)
{
	switch (r) {
	case SUCCESS: return "no error";
	case INVALID_VALUE: return "invalid argument";
	case NOT_INITIALIZED: return "initialization error";
	case INVALID_DEVICE: return "invalid device ordinal";
	case INVALID_IMAGE: return "device kernel image is invalid";
	case INVALID_HANDLE: return "invalid resource handle";
	case NOT_FOUND: return "named symbol not found";
	case LAUNCH_OUT_OF_RESOURCES: return "too many resources requested for launch";
	case LAUNCH_FAILED: return "unspecified launch failure";
	default: return "unknown error";
	}
}

// The device the emulator claims to be: compute capability 8.0 (so NVRTC compiles for sm_80),
// H100-like limits.
constexpr const char* DEVICE_NAME = "OpenLedger CUDA emulator (CPU, not a GPU)";
constexpr size_t TOTAL_MEMORY = size_t(80) << 30;
constexpr int MAX_THREADS = 1024;
constexpr int DEFAULT_DYNAMIC_SHARED = 48 * 1024;
constexpr int MAX_DYNAMIC_SHARED = 227 * 1024;

struct Kernel {
	emu::Invoker invoke;
	int params;
};

std::unordered_map<std::string, Kernel>& registry()
{
	static std::unordered_map<std::string, Kernel> kernels;
	return kernels;
}

struct Function {
	std::string name;
	Kernel kernel;
	int max_threads; // from .maxntid; 0 when the PTX sets none
	int max_dynamic_shared;
};

struct Module {
	std::unordered_map<std::string, Function*> functions;
};

struct Event {
	std::chrono::steady_clock::time_point at;
};

struct Context {
	int device;
};

// A device allocation. It lies at the end of a mapping of its own, just before a page that
// cannot be read or written, and another such page opens the mapping: a kernel that reads or
// writes past the end of a buffer (or far before its start) faults at once, and the fault
// handler below fails its launch with where it went, where a GPU would often read or write the
// allocator's slack unnoticed. The start is aligned to 16 bytes (a float4), not to the GPU's
// 256, so that the end is exact to 16 bytes.
struct Allocation {
	size_t bytes;         // as asked for
	char* mapping;        // a guard page, the data's pages, a guard page
	size_t mapping_bytes;
};

constexpr size_t GUARD_BYTES = 4096;

std::mutex memory_lock;
std::map<uintptr_t, Allocation> device_allocations; // start -> allocation
size_t allocated_bytes = 0;
bool initialised = false;
Context primary{0};
thread_local Context* current_context = nullptr;

// Whether [ptr, ptr + bytes) lies inside one device allocation.
bool in_device_memory(CUdeviceptr ptr, size_t bytes)
{
	std::lock_guard<std::mutex> guard(memory_lock);
	auto it = device_allocations.upper_bound(static_cast<uintptr_t>(ptr));
	if (it == device_allocations.begin()) {
		return false;
	}
	--it;
	const size_t size = it->second.bytes;
	return ptr >= it->first && bytes <= size && ptr - it->first <= size - bytes;
}

CUresult allocate(CUdeviceptr* out, size_t bytes)
{
	if (out == nullptr || bytes == 0) {
		return INVALID_VALUE;
	}
	constexpr CUresult OUT_OF_MEMORY = 2;
	if (bytes > TOTAL_MEMORY) {
		return OUT_OF_MEMORY;
	}
	const size_t used = (bytes + 15) / 16 * 16;
	const size_t data_bytes = (used + GUARD_BYTES - 1) / GUARD_BYTES * GUARD_BYTES;
	const size_t mapping_bytes = data_bytes + 2 * GUARD_BYTES;
	void* mapped = mmap(nullptr, mapping_bytes, PROT_NONE,
		MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mapped == MAP_FAILED) {
		return OUT_OF_MEMORY;
	}
	char* mapping = static_cast<char*>(mapped);
	if (mprotect(mapping + GUARD_BYTES, data_bytes, PROT_READ | PROT_WRITE) != 0) {
		munmap(mapping, mapping_bytes);
		return OUT_OF_MEMORY;
	}
	char* p = mapping + GUARD_BYTES + data_bytes - used;
	std::memset(p, 0xFF, used);
	std::lock_guard<std::mutex> guard(memory_lock);
	device_allocations[reinterpret_cast<uintptr_t>(p)] = Allocation{bytes, mapping, mapping_bytes};
	allocated_bytes += bytes;
	*out = reinterpret_cast<CUdeviceptr>(p);
	return SUCCESS;
}

CUresult release(CUdeviceptr ptr)
{
	std::lock_guard<std::mutex> guard(memory_lock);
	auto it = device_allocations.find(static_cast<uintptr_t>(ptr));
	if (it == device_allocations.end()) {
		return INVALID_VALUE;
	}
	allocated_bytes -= it->second.bytes;
	munmap(it->second.mapping, it->second.mapping_bytes);
	device_allocations.erase(it);
	return SUCCESS;
}

// ---------------------------------------------------------------------------------------------
// Fibers.

#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save and
// continues on `to`'s stack (System V x86-64).
extern "C" void emu_switch(void** save, void* to);
asm(R"(
	.text
	.globl emu_switch
	.hidden emu_switch
	.type emu_switch, @function
emu_switch:
	pushq %rbp
	pushq %rbx
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, (%rdi)
	movq %rsi, %rsp
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %rbx
	popq %rbp
	ret
	.size emu_switch, .-emu_switch
)");
#else
#error "the CUDA emulator's fibers are written for x86-64"
#endif

// A fiber's region: its ThreadState in the first page, a guard page, then its stack.
constexpr size_t REGION_BYTES = emu::FIBER_REGION;
constexpr size_t PAGE_BYTES = 4096;

struct Barrier {
	unsigned expected = 0;
	unsigned arrived = 0;
	unsigned long long generation = 0;
};

struct Fiber {
	void* sp = nullptr;
	char* region = nullptr; // REGION_BYTES, aligned to REGION_BYTES
	emu::ThreadState* state() const { return reinterpret_cast<emu::ThreadState*>(region); }
	bool done = false;
	const Barrier* waiting = nullptr;
	unsigned long long wait_generation = 0;
};

struct Warp {
	Barrier barrier;
	unsigned lanes = 0;
	std::uint64_t slots[2][32] = {};
};

// What one OS thread needs to run blocks: its fibers (and their stacks, kept from launch to
// launch), the block's barriers, and the launch it is working on.
struct Worker {
	const Function* function = nullptr;
	void** params = nullptr;
	std::vector<Fiber> fibers;
	std::vector<Warp> warps;
	unsigned threads = 0;
	Barrier block_barrier;
	unsigned live = 0;
	void* scheduler_sp = nullptr;
	Fiber* running = nullptr;
	std::vector<unsigned char> dynamic_shared;
	/// The static __shared__ arrays the kernels run on this thread have declared.
	std::vector<std::pair<void*, size_t>> static_shared;
	std::string error;
};

// The calling OS thread's worker. Code on a fiber finds it through emu::self() instead.
thread_local Worker* this_worker = nullptr;

// OPENLEDGER_CUDA_EMULATOR_ORDER=reverse: a block's threads start, and hand over, from the
// highest index down instead of from 0 up, so a race that the usual order happens to win (a
// lower thread writing shared memory a higher one reads without a barrier) loses in one of the
// two runs.
const bool reverse_order = [] {
	const char* order = std::getenv("OPENLEDGER_CUDA_EMULATOR_ORDER");
	return order != nullptr && std::strcmp(order, "reverse") == 0;
}();

// The worker of the fiber running this code.
Worker& fiber_worker() { return *static_cast<Worker*>(emu::self()->worker); }

Worker& me()
{
	if (this_worker == nullptr) {
		this_worker = new Worker();
		// The fault handler's stack, unless the thread has one (Rust's threads do).
		stack_t current{};
		if (sigaltstack(nullptr, &current) == 0 && (current.ss_flags & SS_DISABLE) != 0) {
			stack_t alternate{};
			alternate.ss_size = 64 * 1024;
			alternate.ss_sp = std::malloc(alternate.ss_size);
			if (alternate.ss_sp != nullptr) {
				sigaltstack(&alternate, nullptr);
			}
		}
	}
	return *this_worker;
}

// Leaves fiber f (blocked at a barrier, finished or failed) for the next fiber after it, in
// thread order, that can run; or for the scheduler when none can (the block is over, stuck, or
// failed). Returns when f is resumed.
void switch_away(Fiber* f)
{
	Worker& l = fiber_worker();
	if (l.error.empty()) {
		const unsigned n = l.threads;
		const unsigned at = static_cast<unsigned>(f - l.fibers.data());
		for (unsigned k = 1; k <= n; ++k) {
			Fiber& next = l.fibers[reverse_order ? (at + n - k) % n : (at + k) % n];
			if (next.done ||
			    (next.waiting != nullptr && next.waiting->generation == next.wait_generation)) {
				continue;
			}
			next.waiting = nullptr;
			l.running = &next;
			if (&next != f) {
				emu_switch(&f->sp, next.sp);
			}
			return;
		}
	}
	emu_switch(&f->sp, l.scheduler_sp);
}

void fiber_main()
{
	Worker& l = fiber_worker();
	Fiber* f = l.running;
	l.function->kernel.invoke(l.params);
	f->done = true;
	--l.live;
	--l.block_barrier.expected;
	if (l.block_barrier.arrived > 0 && l.block_barrier.arrived == l.block_barrier.expected) {
		l.block_barrier.arrived = 0;
		++l.block_barrier.generation;
	}
	switch_away(f);
	__builtin_unreachable();
}

// Lays out a fresh stack for f so that switching to it enters fiber_main.
void prepare(Fiber& f)
{
	if (f.region == nullptr) {
		// Twice the size, then only the aligned part kept.
		void* mapping = mmap(nullptr, 2 * REGION_BYTES, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (mapping == MAP_FAILED) {
			std::fprintf(stderr, "CUDA emulator: no memory for a fiber stack\n");
			std::abort();
		}
		const auto start = reinterpret_cast<uintptr_t>(mapping);
		const uintptr_t aligned = (start + REGION_BYTES - 1) & ~(uintptr_t)(REGION_BYTES - 1);
		if (aligned > start) {
			munmap(mapping, aligned - start);
		}
		munmap(reinterpret_cast<void*>(aligned + REGION_BYTES), start + REGION_BYTES - aligned);
		f.region = reinterpret_cast<char*>(aligned);
		if (mprotect(f.region + PAGE_BYTES, PAGE_BYTES, PROT_NONE) != 0) {
			std::fprintf(stderr, "CUDA emulator: cannot protect a fiber stack's guard page\n");
			std::abort();
		}
	}
	auto* top = reinterpret_cast<void**>(f.region + REGION_BYTES);
	*--top = nullptr; // fiber_main's (never used) return address
	*--top = reinterpret_cast<void*>(&fiber_main);
	for (int i = 0; i < 6; ++i) {
		*--top = nullptr; // rbp, rbx, r12-r15
	}
	f.sp = top;
}

// Called on a fiber: waits at b until it opens.
void arrive(Barrier& b)
{
	Worker& l = fiber_worker();
	if (++b.arrived == b.expected) {
		b.arrived = 0;
		++b.generation;
		return;
	}
	Fiber* f = l.running;
	f->waiting = &b;
	f->wait_generation = b.generation;
	switch_away(f);
}

// Runs block `block` to its end on the calling OS thread; false (with the worker's error set)
// when it fails.
bool run_block(uint3 block)
{
	Worker& l = me();
	const unsigned bx = emu::block_dim.x;
	const unsigned by = emu::block_dim.y;
	for (unsigned i = 0; i < l.threads; ++i) {
		Fiber& f = l.fibers[i];
		prepare(f);
		*f.state() = emu::ThreadState{uint3{i % bx, (i / bx) % by, i / (bx * by)}, i, block, &l};
		f.done = false;
		f.waiting = nullptr;
	}
	l.block_barrier = Barrier{l.threads, 0, 0};
	l.live = l.threads;
	for (size_t w = 0; w < l.warps.size(); ++w) {
		const unsigned lanes = std::min(32u, l.threads - static_cast<unsigned>(w) * 32);
		l.warps[w].barrier = Barrier{lanes, 0, 0};
		l.warps[w].lanes = lanes;
	}
	if (!l.dynamic_shared.empty()) {
		std::memset(l.dynamic_shared.data(), 0xFF, l.dynamic_shared.size());
	}
	for (const auto& [at, bytes] : l.static_shared) {
		std::memset(at, 0xFF, bytes);
	}
	// The fibers pass control among themselves; it comes back here when none can run.
	Fiber& first = l.fibers[reverse_order ? l.threads - 1 : 0];
	l.running = &first;
	emu_switch(&l.scheduler_sp, first.sp);
	if (!l.error.empty()) {
		return false;
	}
	unsigned at_block = 0;
	unsigned at_warp = 0;
	for (unsigned i = 0; i < l.threads; ++i) {
		const Fiber& f = l.fibers[i];
		if (!f.done && f.waiting == &l.block_barrier) {
			++at_block;
		} else if (!f.done) {
			++at_warp;
		}
	}
	if (at_block + at_warp == 0) {
		return true;
	}
	l.error = "a barrier that can never open: " + std::to_string(at_block) +
		" threads wait at __syncthreads, " + std::to_string(at_warp) +
		" at a warp shuffle some of whose lanes have left or never reach it";
	return false;
}

} // namespace

namespace emu {

uint3 block_dim{};
uint3 grid_dim{};

Registrar::Registrar(const char* name, Invoker invoke, int params)
{
	registry()[name] = Kernel{invoke, params};
}

void fault(const char* what)
{
	Worker& l = fiber_worker();
	l.error = what;
	Fiber* f = l.running;
	f->done = true;
	switch_away(f);
	__builtin_unreachable();
}

void sync_block() { arrive(fiber_worker().block_barrier); }

std::uint64_t warp_exchange(unsigned int mask, std::uint64_t value, int src)
{
	Worker& l = fiber_worker();
	const unsigned linear = self()->linear;
	Warp& w = l.warps[linear / 32];
	const unsigned whole = w.lanes == 32 ? 0xFFFFFFFFu : (1u << w.lanes) - 1;
	if (mask != whole) {
		fault(w.lanes == 32 ? "a warp shuffle whose mask leaves lanes out"
				    : "a warp shuffle whose mask names lanes a partial warp does not have");
	}
	const unsigned lane = linear & 31;
	const unsigned parity = static_cast<unsigned>(w.barrier.generation & 1);
	w.slots[parity][lane] = value;
	arrive(w.barrier);
	if (src < 0 || static_cast<unsigned>(src) >= w.lanes) {
		src = static_cast<int>(lane);
	}
	return w.slots[parity][src];
}

void* dynamic_shared()
{
	Worker& l = fiber_worker();
	return l.dynamic_shared.empty() ? nullptr : l.dynamic_shared.data();
}

bool register_shared(void* at, std::size_t bytes)
{
	std::memset(at, 0xFF, bytes);
	fiber_worker().static_shared.emplace_back(at, bytes);
	return true;
}

} // namespace emu

namespace {

// The PTX entries of a module: name, parameter count, .maxntid product (0 when none).
struct Entry {
	std::string name;
	int params;
	int max_threads;
};

bool parse_entries(const char* ptx, std::vector<Entry>& entries)
{
	const std::string text(ptx);
	if (text.find(".version") == std::string::npos) {
		return false;
	}
	size_t at = 0;
	while ((at = text.find(".entry ", at)) != std::string::npos) {
		at += 7;
		size_t end = text.find('(', at);
		if (end == std::string::npos) {
			return false;
		}
		Entry e{text.substr(at, end - at), 0, 0};
		e.name.erase(std::remove_if(e.name.begin(), e.name.end(), ::isspace), e.name.end());
		const size_t close = text.find(')', end);
		const size_t body = text.find('{', end);
		if (close == std::string::npos || body == std::string::npos) {
			return false;
		}
		for (size_t p = text.find(".param", end); p != std::string::npos && p < close;
		     p = text.find(".param", p + 6)) {
			++e.params;
		}
		const size_t bounds = text.find(".maxntid", close);
		if (bounds != std::string::npos && bounds < body) {
			unsigned x = 1, y = 1, z = 1;
			std::sscanf(text.c_str() + bounds, ".maxntid %u, %u, %u", &x, &y, &z);
			e.max_threads = static_cast<int>(x * y * z);
		}
		entries.push_back(e);
		at = body;
	}
	return true;
}

} // namespace

namespace {

// The threads that run a launch's blocks: the launching thread and helpers (one fewer than the
// machine's cores, at most 15, or OPENLEDGER_CUDA_EMULATOR_THREADS - 1), each taking the next
// block not yet taken. Blocks are independent in CUDA, so the order they run in does not matter.
struct Pool {
	std::mutex lock;
	std::condition_variable start;
	std::condition_variable finished;
	std::vector<std::thread> helpers;
	unsigned long long generation = 0;
	unsigned active = 0;
	// The launch being run (set under launch_lock before the helpers start).
	const Function* function = nullptr;
	void** params = nullptr;
	unsigned threads = 0;
	unsigned shared_bytes = 0;
	unsigned long long blocks = 0;
	std::atomic<unsigned long long> next{0};
	std::atomic<bool> failed{false};
	std::string error;
	uint3 failed_block{};
};

void run_blocks(Pool& p)
{
	Worker& w = me();
	w.function = p.function;
	w.params = p.params;
	w.threads = p.threads;
	if (w.fibers.size() < p.threads) {
		w.fibers.resize(p.threads);
	}
	w.warps.assign((p.threads + 31) / 32, Warp());
	w.dynamic_shared.assign(p.shared_bytes, 0xFF);
	w.error.clear();
	const unsigned gx = emu::grid_dim.x;
	const unsigned gy = emu::grid_dim.y;
	while (!p.failed.load(std::memory_order_relaxed)) {
		const unsigned long long b = p.next.fetch_add(1);
		if (b >= p.blocks) {
			break;
		}
		const uint3 block{static_cast<unsigned>(b % gx), static_cast<unsigned>((b / gx) % gy),
			static_cast<unsigned>(b / (1ull * gx * gy))};
		if (!run_block(block)) {
			std::lock_guard<std::mutex> guard(p.lock);
			if (!p.failed) {
				p.error = w.error;
				p.failed_block = block;
				p.failed = true;
			}
		}
	}
}

void helper(Pool* p)
{
	unsigned long long seen = 0;
	for (;;) {
		{
			std::unique_lock<std::mutex> guard(p->lock);
			p->start.wait(guard, [&] { return p->generation != seen; });
			seen = p->generation;
		}
		run_blocks(*p);
		std::lock_guard<std::mutex> guard(p->lock);
		if (--p->active == 0) {
			p->finished.notify_one();
		}
	}
}

// Never destroyed: its helpers wait on it until the process ends.
Pool& pool()
{
	static Pool* p = [] {
		auto* pool = new Pool();
		unsigned threads = std::thread::hardware_concurrency();
		if (const char* env = std::getenv("OPENLEDGER_CUDA_EMULATOR_THREADS")) {
			threads = static_cast<unsigned>(std::strtoul(env, nullptr, 10));
		}
		// At most 16: each thread keeps up to 1,024 fiber stacks mapped.
		threads = std::max(1u, std::min(threads, 16u));
		for (unsigned i = 1; i < threads; ++i) {
			pool->helpers.emplace_back(helper, pool);
			pool->helpers.back().detach();
		}
		return pool;
	}();
	return *p;
}

std::mutex launch_lock;

// ---------------------------------------------------------------------------------------------
// Faults: a kernel's read or write outside device memory fails its launch.

struct sigaction previous_segv{};

// Says where `addr` lies against the device allocations, into `out`.
void describe_address(uintptr_t addr, char* out, size_t len)
{
	// Only tried: the fault may have interrupted a host thread that holds the lock.
	std::unique_lock<std::mutex> guard(memory_lock, std::try_to_lock);
	if (guard.owns_lock()) {
		for (const auto& [start, a] : device_allocations) {
			const auto first = reinterpret_cast<uintptr_t>(a.mapping);
			if (addr < first || addr >= first + a.mapping_bytes) {
				continue;
			}
			if (addr >= start) {
				std::snprintf(out, len,
					"a read or write %zu bytes past the end of a device allocation of %zu "
					"bytes at %#lx",
					static_cast<size_t>(addr - start - a.bytes), a.bytes, start);
			} else {
				std::snprintf(out, len,
					"a read or write %zu bytes before the start of a device allocation of %zu "
					"bytes at %#lx",
					static_cast<size_t>(start - addr), a.bytes, start);
			}
			return;
		}
	}
	std::snprintf(out, len, "a read or write at %#lx, outside device memory", addr);
}

// SIGSEGV: on a kernel's fiber, the launch fails (the fiber is left for good, as emu::fault
// leaves it) and the process goes on, as a GPU's context would report an illegal address;
// elsewhere, whoever handled it before (Rust's stack-overflow report) or the default action.
void on_segv(int sig, siginfo_t* info, void* context)
{
	const auto* uc = static_cast<const ucontext_t*>(context);
	const auto sp = static_cast<uintptr_t>(uc->uc_mcontext.gregs[REG_RSP]);
	const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
	Worker* l = this_worker;
	Fiber* f = l != nullptr ? l->running : nullptr;
	if (f != nullptr && !f->done && f->region != nullptr &&
	    (sp & ~static_cast<uintptr_t>(REGION_BYTES - 1)) == reinterpret_cast<uintptr_t>(f->region)) {
		char what[256];
		const auto guard = reinterpret_cast<uintptr_t>(f->region) + PAGE_BYTES;
		if (addr >= guard && addr < guard + PAGE_BYTES) {
			std::snprintf(what, sizeof what,
				"thread %u overflowed its stack (%zu KiB on the emulator)",
				f->state()->linear, (REGION_BYTES - 2 * PAGE_BYTES) / 1024);
		} else {
			char where[200];
			describe_address(addr, where, sizeof where);
			std::snprintf(what, sizeof what, "thread %u: %s", f->state()->linear, where);
		}
		l->error = what;
		f->done = true;
		emu_switch(&f->sp, l->scheduler_sp);
		__builtin_unreachable();
	}
	if ((previous_segv.sa_flags & SA_SIGINFO) != 0 && previous_segv.sa_sigaction != nullptr) {
		previous_segv.sa_sigaction(sig, info, context);
	} else if (previous_segv.sa_handler == SIG_DFL || previous_segv.sa_handler == SIG_IGN) {
		// Returning re-runs the faulting instruction, which now ends the process.
		signal(sig, SIG_DFL);
	} else {
		previous_segv.sa_handler(sig);
	}
}

// Installs on_segv once. It runs on the thread's alternate signal stack (so that a fiber's stack
// overflow can be reported), which each OS thread that runs blocks has (see me()), and it never
// returns from a kernel's fault, so SIGSEGV stays unblocked (SA_NODEFER).
void install_fault_handler()
{
	static std::once_flag once;
	std::call_once(once, [] {
		struct sigaction action{};
		action.sa_sigaction = on_segv;
		action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
		sigemptyset(&action.sa_mask);
		sigaction(SIGSEGV, &action, &previous_segv);
	});
}

} // namespace

// ---------------------------------------------------------------------------------------------
// The driver API.

EXPORT CUresult cuInit(unsigned int flags)
{
	if (flags != 0) {
		return INVALID_VALUE;
	}
	install_fault_handler();
	initialised = true;
	return SUCCESS;
}

// NVRTC asks the driver for private interfaces; the emulator has none.
EXPORT CUresult cuGetExportTable(const void** table, const void*)
{
	if (table != nullptr) {
		*table = nullptr;
	}
	return NOT_FOUND;
}

EXPORT CUresult cuDriverGetVersion(int* version)
{
	if (version == nullptr) {
		return INVALID_VALUE;
	}
	*version = 12090;
	return SUCCESS;
}

EXPORT CUresult cuGetErrorName(CUresult error, const char** name)
{
	*name = error_name(error);
	return SUCCESS;
}

EXPORT CUresult cuGetErrorString(CUresult error, const char** text)
{
	*text = error_string(error);
	return SUCCESS;
}

EXPORT CUresult cuDeviceGetCount(int* count)
{
	if (!initialised) {
		return NOT_INITIALIZED;
	}
	*count = 1;
	return SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice* device, int ordinal)
{
	if (!initialised) {
		return NOT_INITIALIZED;
	}
	if (ordinal != 0) {
		return INVALID_DEVICE;
	}
	*device = 0;
	return SUCCESS;
}

EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice device)
{
	if (device != 0) {
		return INVALID_DEVICE;
	}
	if (name == nullptr || len <= 0) {
		return INVALID_VALUE;
	}
	std::snprintf(name, static_cast<size_t>(len), "%s", DEVICE_NAME);
	return SUCCESS;
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice device)
{
	if (device != 0) {
		return INVALID_DEVICE;
	}
	*bytes = TOTAL_MEMORY;
	return SUCCESS;
}

EXPORT CUresult cuDeviceGetAttribute(int* value, int attribute, CUdevice device)
{
	if (device != 0) {
		return INVALID_DEVICE;
	}
	switch (attribute) {
	case 1: *value = MAX_THREADS; break;			       // MAX_THREADS_PER_BLOCK
	case 2: case 3: *value = 1024; break;			       // MAX_BLOCK_DIM_X, Y
	case 4: *value = 64; break;				       // MAX_BLOCK_DIM_Z
	case 5: *value = 2147483647; break;			       // MAX_GRID_DIM_X
	case 6: case 7: *value = 65535; break;			       // MAX_GRID_DIM_Y, Z
	case 8: *value = DEFAULT_DYNAMIC_SHARED; break;		       // MAX_SHARED_MEMORY_PER_BLOCK
	case 10: *value = 32; break;				       // WARP_SIZE
	case 12: *value = 65536; break;				       // MAX_REGISTERS_PER_BLOCK
	case 13: *value = 1000000; break;			       // CLOCK_RATE (kHz)
	case 16: *value = 1; break;				       // MULTIPROCESSOR_COUNT
	case 36: *value = 1000000; break;			       // MEMORY_CLOCK_RATE (kHz)
	case 37: *value = 64; break;				       // GLOBAL_MEMORY_BUS_WIDTH
	case 39: *value = MAX_THREADS; break;			       // MAX_THREADS_PER_MULTIPROCESSOR
	case 41: *value = 1; break;				       // UNIFIED_ADDRESSING
	case 75: *value = 8; break;				       // COMPUTE_CAPABILITY_MAJOR
	case 76: *value = 0; break;				       // COMPUTE_CAPABILITY_MINOR
	case 81: *value = MAX_DYNAMIC_SHARED; break;		       // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
	case 97: *value = MAX_DYNAMIC_SHARED; break;		       // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
	default: *value = 0; break;				       // not supported (memory pools among them)
	}
	return SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(Context** ctx, CUdevice device)
{
	if (!initialised) {
		return NOT_INITIALIZED;
	}
	if (device != 0) {
		return INVALID_DEVICE;
	}
	*ctx = &primary;
	return SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device)
{
	return device == 0 ? SUCCESS : INVALID_DEVICE;
}

EXPORT CUresult cuCtxSetCurrent(Context* ctx)
{
	current_context = ctx;
	return SUCCESS;
}

EXPORT CUresult cuCtxGetCurrent(Context** ctx)
{
	*ctx = current_context;
	return SUCCESS;
}

EXPORT CUresult cuCtxGetDevice(CUdevice* device)
{
	if (current_context == nullptr) {
		return 201; // CUDA_ERROR_INVALID_CONTEXT
	}
	*device = current_context->device;
	return SUCCESS;
}

EXPORT CUresult cuCtxSynchronize() { return SUCCESS; }

EXPORT CUresult cuStreamCreate(void** stream, unsigned int)
{
	*stream = new char(0);
	return SUCCESS;
}

EXPORT CUresult cuStreamCreateWithPriority(void** stream, unsigned int flags, int)
{
	return cuStreamCreate(stream, flags);
}

EXPORT CUresult cuStreamDestroy_v2(void* stream)
{
	delete static_cast<char*>(stream);
	return SUCCESS;
}

EXPORT CUresult cuStreamSynchronize(void*) { return SUCCESS; }

EXPORT CUresult cuStreamWaitEvent(void*, void*, unsigned int) { return SUCCESS; }

EXPORT CUresult cuStreamQuery(void*) { return SUCCESS; }

EXPORT CUresult cuEventCreate(Event** event, unsigned int)
{
	*event = new Event{std::chrono::steady_clock::now()};
	return SUCCESS;
}

EXPORT CUresult cuEventDestroy_v2(Event* event)
{
	delete event;
	return SUCCESS;
}

EXPORT CUresult cuEventRecord(Event* event, void*)
{
	if (event == nullptr) {
		return INVALID_HANDLE;
	}
	event->at = std::chrono::steady_clock::now();
	return SUCCESS;
}

EXPORT CUresult cuEventSynchronize(Event*) { return SUCCESS; }

EXPORT CUresult cuEventQuery(Event*) { return SUCCESS; }

EXPORT CUresult cuEventElapsedTime(float* ms, Event* start, Event* end)
{
	if (start == nullptr || end == nullptr) {
		return INVALID_HANDLE;
	}
	*ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
	return SUCCESS;
}

EXPORT CUresult cuEventElapsedTime_v2(float* ms, Event* start, Event* end)
{
	return cuEventElapsedTime(ms, start, end);
}

EXPORT CUresult cuMemGetInfo_v2(size_t* free, size_t* total)
{
	std::lock_guard<std::mutex> guard(memory_lock);
	*total = TOTAL_MEMORY;
	*free = TOTAL_MEMORY - std::min(allocated_bytes, TOTAL_MEMORY);
	return SUCCESS;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* ptr, size_t bytes) { return allocate(ptr, bytes); }

EXPORT CUresult cuMemAllocAsync(CUdeviceptr* ptr, size_t bytes, void*)
{
	return allocate(ptr, bytes);
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr ptr) { return release(ptr); }

EXPORT CUresult cuMemFreeAsync(CUdeviceptr ptr, void*) { return release(ptr); }

EXPORT CUresult cuMemHostAlloc(void** ptr, size_t bytes, unsigned int)
{
	*ptr = std::malloc(bytes == 0 ? 1 : bytes);
	return *ptr == nullptr ? 2 : SUCCESS;
}

EXPORT CUresult cuMemFreeHost(void* ptr)
{
	std::free(ptr);
	return SUCCESS;
}

EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes)
{
	if (!in_device_memory(dst, bytes)) {
		return INVALID_VALUE;
	}
	std::memcpy(reinterpret_cast<void*>(dst), src, bytes);
	return SUCCESS;
}

EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, void*)
{
	return cuMemcpyHtoD_v2(dst, src, bytes);
}

EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes)
{
	if (!in_device_memory(src, bytes)) {
		return INVALID_VALUE;
	}
	std::memcpy(dst, reinterpret_cast<const void*>(src), bytes);
	return SUCCESS;
}

EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, void*)
{
	return cuMemcpyDtoH_v2(dst, src, bytes);
}

EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes)
{
	if (!in_device_memory(dst, bytes) || !in_device_memory(src, bytes)) {
		return INVALID_VALUE;
	}
	std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
	return SUCCESS;
}

EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, void*)
{
	return cuMemcpyDtoD_v2(dst, src, bytes);
}

EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t bytes)
{
	if (!in_device_memory(dst, bytes)) {
		return INVALID_VALUE;
	}
	std::memset(reinterpret_cast<void*>(dst), value, bytes);
	return SUCCESS;
}

EXPORT CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t bytes, void*)
{
	return cuMemsetD8_v2(dst, value, bytes);
}

EXPORT CUresult cuLaunchHostFunc(void*, void (*fn)(void*), void* data)
{
	fn(data);
	return SUCCESS;
}

EXPORT CUresult cuModuleLoadData(Module** module, const void* image)
{
	std::vector<Entry> entries;
	if (image == nullptr || !parse_entries(static_cast<const char*>(image), entries)) {
		return INVALID_IMAGE;
	}
	auto* m = new Module();
	for (const Entry& e : entries) {
		auto it = registry().find(e.name);
		if (it == registry().end() || it->second.params != e.params) {
			std::fprintf(stderr,
				"CUDA emulator: kernel %s (%d parameters in the PTX) is %s; rebuild the emulator "
				"(scripts/build-cuda-emulator.sh)\n",
				e.name.c_str(), e.params,
				it == registry().end() ? "not compiled in" : "compiled in with another signature");
			for (auto& f : m->functions) {
				delete f.second;
			}
			delete m;
			return INVALID_IMAGE;
		}
		m->functions[e.name] = new Function{e.name, it->second, e.max_threads, DEFAULT_DYNAMIC_SHARED};
	}
	*module = m;
	return SUCCESS;
}

EXPORT CUresult cuModuleUnload(Module* module)
{
	if (module == nullptr) {
		return INVALID_HANDLE;
	}
	for (auto& f : module->functions) {
		delete f.second;
	}
	delete module;
	return SUCCESS;
}

EXPORT CUresult cuModuleGetFunction(Function** function, Module* module, const char* name)
{
	if (module == nullptr) {
		return INVALID_HANDLE;
	}
	auto it = module->functions.find(name);
	if (it == module->functions.end()) {
		return NOT_FOUND;
	}
	*function = it->second;
	return SUCCESS;
}

EXPORT CUresult cuFuncSetAttribute(Function* function, int attribute, int value)
{
	if (function == nullptr) {
		return INVALID_HANDLE;
	}
	if (attribute == 8) { // MAX_DYNAMIC_SHARED_SIZE_BYTES
		if (value < 0 || value > MAX_DYNAMIC_SHARED) {
			return INVALID_VALUE;
		}
		function->max_dynamic_shared = value;
	}
	return SUCCESS;
}

EXPORT CUresult cuFuncGetAttribute(int* value, int attribute, Function* function)
{
	if (function == nullptr) {
		return INVALID_HANDLE;
	}
	switch (attribute) {
	case 0: *value = function->max_threads ? function->max_threads : MAX_THREADS; break;
	case 8: *value = function->max_dynamic_shared; break;
	default: *value = 0; break;
	}
	return SUCCESS;
}

EXPORT CUresult cuLaunchKernel(Function* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
	unsigned by, unsigned bz, unsigned shared_bytes, void*, void** params, void** extra)
{
	if (f == nullptr) {
		return INVALID_HANDLE;
	}
	if (extra != nullptr || (params == nullptr && f->kernel.params > 0)) {
		return INVALID_VALUE;
	}
	const unsigned long long threads = 1ull * bx * by * bz;
	if (gx == 0 || gy == 0 || gz == 0 || threads == 0 || gx > 2147483647u || gy > 65535 ||
	    gz > 65535 || bx > 1024 || by > 1024 || bz > 64) {
		return INVALID_VALUE;
	}
	if (threads > MAX_THREADS || (f->max_threads > 0 && threads > (unsigned)f->max_threads)) {
		return LAUNCH_OUT_OF_RESOURCES;
	}
	if (shared_bytes > (unsigned)f->max_dynamic_shared) {
		return INVALID_VALUE;
	}
	std::lock_guard<std::mutex> serialised(launch_lock);
	Pool& p = pool();
	p.function = f;
	p.params = params;
	p.threads = static_cast<unsigned>(threads);
	p.shared_bytes = shared_bytes;
	p.blocks = 1ull * gx * gy * gz;
	p.next = 0;
	p.failed = false;
	emu::block_dim = uint3{bx, by, bz};
	emu::grid_dim = uint3{gx, gy, gz};
	const bool helped = p.blocks > 1 && !p.helpers.empty();
	if (helped) {
		std::lock_guard<std::mutex> guard(p.lock);
		p.active = static_cast<unsigned>(p.helpers.size());
		++p.generation;
		p.start.notify_all();
	}
	run_blocks(p);
	if (helped) {
		std::unique_lock<std::mutex> guard(p.lock);
		p.finished.wait(guard, [&] { return p.active == 0; });
	}
	if (p.failed) {
		const uint3 b = p.failed_block;
		std::fprintf(stderr,
			"CUDA emulator: kernel %s, block (%u, %u, %u) of (%u, %u, %u), %llu threads: %s\n",
			f->name.c_str(), b.x, b.y, b.z, gx, gy, gz, threads, p.error.c_str());
		return LAUNCH_FAILED;
	}
	return SUCCESS;
}
