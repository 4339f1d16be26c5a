// How fast one CTA can gather a tile of KV rows, by the instruction that moves them (issues 29, 32).
//
// ws_sm90's producer gathers each 32-token sub-block with 16-byte loads into registers (LDG) and
// SOLO / STAGED with cp.async (LDGSTS); a lone item's first tile lands ~6 us after its program starts
// (H100, benchmarks/results/ws-sm90/README.md, "Per-partition timelines"). This probe times a
// program that loads ROWS ids and then gathers those ROWS rows of 576 bytes (the NoPE + RoPE bytes
// of a DSV4 token) from a 576 MiB pool into shared memory, four ways, at 1 to 264 CTAs of 128 threads:
//
//   ldg     16-byte loads into registers, all of a thread's issued before any is used, then stored
//           to shared memory;
//   ldgsts  16-byte cp.async (cp.async.cg.shared.global), then cp.async.wait_all;
//   bulk    one cp.async.bulk (the TMA engine) of 576 bytes a row, completing on an mbarrier;
//   none    the ids alone (the first round trip).
//
// Each CTA sums what it gathered into one word (so nothing is optimized away) and the host checks the
// sums against its own. A sample is a CUDA graph of 20 launches, each on rows no launch read before
// (the pool is 11x the L2), net of the same graph of empty launches; us a launch, median of 15.
//
//   nvcc -O3 -arch=sm_90a -o /tmp/gather_probe benchmarks/gather_probe/gather_probe.cu && /tmp/gather_probe
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../bulk_copy.cuh"
#include "../cuda_check.cuh"

constexpr int kRowBytes = 576;
constexpr int kPieces = kRowBytes / 16;  // 16-byte pieces a row
constexpr int kThreads = 128;
constexpr int kMaxRows = 128;
constexpr int kCalls = 20;
constexpr int kReps = 15;
constexpr size_t kPoolBytes = size_t(576) << 20;

enum Mode { kNone = 0, kLdg = 1, kLdgsts = 2, kBulk = 3 };
const char* kModeName[] = {"none", "ldg", "ldgsts", "bulk"};

__device__ __forceinline__ uint32_t sum4(uint4 v) { return v.x + v.y + v.z + v.w; }

// Launch `call` of a graph: CTA b gathers rows ids[(call * gridDim.x + b) * rows + r], r < rows.
template <int MODE, int ROWS>
__global__ void __launch_bounds__(kThreads) gather(const uint8_t* __restrict__ pool, const int* __restrict__ ids,
                                                   int call, uint32_t* __restrict__ sums) {
  extern __shared__ __align__(1024) uint8_t smem[];
  __shared__ __align__(8) uint64_t bar;
  __shared__ int row_id[ROWS];
  const int t = threadIdx.x;
  const int* my_ids = ids + (size_t(call) * gridDim.x + blockIdx.x) * ROWS;
  if (MODE == kBulk && t == 0) {
    mbar_init(smem_addr(&bar));
  }
  for (int r = t; r < ROWS; r += kThreads) row_id[r] = my_ids[r];  // round trip 1: the ids
  __syncthreads();
  uint32_t acc = 0;
  if (MODE == kNone) {
    for (int r = t; r < ROWS; r += kThreads) acc += row_id[r];
  } else if (MODE == kLdg) {
    constexpr int kPer = ROWS * kPieces / kThreads;  // pieces a thread
    uint4 v[kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int p = i * kThreads + t, r = p / kPieces, c = p % kPieces;
      v[i] = __ldg(reinterpret_cast<const uint4*>(pool + size_t(row_id[r]) * kRowBytes) + c);
    }
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int p = i * kThreads + t;
      reinterpret_cast<uint4*>(smem)[p] = v[i];
    }
    __syncthreads();
  } else if (MODE == kLdgsts) {
    for (int p = t; p < ROWS * kPieces; p += kThreads) {
      const int r = p / kPieces, c = p % kPieces;
      const uint8_t* src = pool + size_t(row_id[r]) * kRowBytes + c * 16;
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(smem + p * 16)), "l"(src) : "memory");
    }
    asm volatile("cp.async.commit_group;\ncp.async.wait_all;" ::: "memory");
    __syncthreads();
  } else {  // kBulk: the first thread expects every row's bytes, one thread a row copies it
    if (t == 0) mbar_expect(smem_addr(&bar), ROWS * kRowBytes);
    __syncthreads();
    for (int r = t; r < ROWS; r += kThreads)
      bulk_copy(smem_addr(smem + r * kRowBytes), pool + size_t(row_id[r]) * kRowBytes, kRowBytes, smem_addr(&bar));
    mbar_wait(smem_addr(&bar));
  }
  if (MODE != kNone) {
    for (int p = t; p < ROWS * kPieces; p += kThreads) acc += sum4(reinterpret_cast<const uint4*>(smem)[p]);
  }
  for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if ((t & 31) == 0) atomicAdd(sums + size_t(call) * gridDim.x + blockIdx.x, acc);
}

__global__ void empty_kernel(int call, uint32_t* sums) {
  if (threadIdx.x == 0 && blockIdx.x == 1 << 30) sums[call] = 0;
}

using Kernel = void (*)(const uint8_t*, const int*, int, uint32_t*);

template <int ROWS>
Kernel pick(int mode) {
  switch (mode) {
    case kNone: return gather<kNone, ROWS>;
    case kLdg: return gather<kLdg, ROWS>;
    case kLdgsts: return gather<kLdgsts, ROWS>;
    default: return gather<kBulk, ROWS>;
  }
}

Kernel kernel_for(int mode, int rows) {
  return rows == 32 ? pick<32>(mode) : rows == 64 ? pick<64>(mode) : pick<128>(mode);
}

// Median us a launch of graphs of kCalls launches of `k` (or of the empty kernel), each graph on rows
// no launch before it read (calls 1 + rep * kCalls + c: call 0 is the checked launch), uploaded and
// not run before it is timed, so that every row comes from DRAM (the pool is 11x the L2).
float graph_us(Kernel k, bool empty, int grid, size_t smem, const uint8_t* pool, const int* ids, uint32_t* sums,
               cudaStream_t s) {
  std::vector<float> ms(kReps);
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int rep = 0; rep < kReps; ++rep) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int c = 0; c < kCalls; ++c) {
      const int call = 1 + rep * kCalls + c;
      if (empty)
        empty_kernel<<<grid, kThreads, 0, s>>>(call, sums);
      else
        k<<<grid, kThreads, smem, s>>>(pool, ids, call, sums);
    }
    CHECK(cudaStreamEndCapture(s, &g));
    CHECK(cudaGraphInstantiate(&ge, g, 0));
    CHECK(cudaGraphUpload(ge, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaEventRecord(a, s));
    CHECK(cudaGraphLaunch(ge, s));
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    CHECK(cudaEventElapsedTime(&ms[rep], a, b));
    CHECK(cudaGraphExecDestroy(ge));
    CHECK(cudaGraphDestroy(g));
  }
  std::sort(ms.begin(), ms.end());
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  return ms[kReps / 2] * 1000.0f / kCalls;
}

int main() {
  int dev = 0, sms = 0;
  CHECK(cudaGetDevice(&dev));
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, dev));
  const size_t n_slots = kPoolBytes / kRowBytes;
  const int grids[] = {1, 64, sms, 2 * sms};
  const size_t max_ids = size_t(1 + kReps * kCalls) * 2 * sms * kMaxRows;  // every call's rows its own
  std::vector<uint8_t> h_pool(kPoolBytes);
  std::mt19937_64 rng(7);
  for (size_t i = 0; i < kPoolBytes; i += 8) {
    const uint64_t v = rng();
    std::copy_n(reinterpret_cast<const uint8_t*>(&v), 8, h_pool.data() + i);
  }
  std::vector<int> h_ids(max_ids);
  std::uniform_int_distribution<int> slot(0, int(n_slots) - 1);
  for (int& id : h_ids) id = slot(rng);
  uint8_t* pool;
  int* ids;
  uint32_t* sums;
  CHECK(cudaMalloc(&pool, kPoolBytes));
  CHECK(cudaMalloc(&ids, sizeof(int) * max_ids));
  CHECK(cudaMalloc(&sums, sizeof(uint32_t) * max_ids));
  CHECK(cudaMemcpy(pool, h_pool.data(), kPoolBytes, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(ids, h_ids.data(), sizeof(int) * max_ids, cudaMemcpyHostToDevice));
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  std::printf("gather_probe on %s (%d SMs): us a launch net of an empty one; %d B rows, %d threads a CTA\n",
              prop.name, sms, kRowBytes, kThreads);
  std::printf("%-7s %5s %5s %9s %9s %6s\n", "mode", "ctas", "rows", "us", "GB/s", "check");
  bool all_ok = true;
  for (int rows : {32, 64, 128}) {
    const size_t smem = size_t(rows) * kRowBytes;
    for (int mode = kNone; mode <= kBulk; ++mode) {
      Kernel k = kernel_for(mode, rows);
      CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      for (int grid : grids) {
        CHECK(cudaMemset(sums, 0, sizeof(uint32_t) * grid));
        k<<<grid, kThreads, smem, s>>>(pool, ids, 0, sums);  // one launch, checked below (call 0)
        CHECK(cudaStreamSynchronize(s));
        std::vector<uint32_t> got(grid);
        CHECK(cudaMemcpy(got.data(), sums, sizeof(uint32_t) * grid, cudaMemcpyDeviceToHost));
        bool ok = true;
        for (int b = 0; b < grid && ok; ++b) {
          uint32_t want = 0;
          for (int r = 0; r < rows; ++r) {
            const int id = h_ids[size_t(b) * rows + r];
            if (mode == kNone) {
              want += uint32_t(id);
              continue;
            }
            const uint32_t* w = reinterpret_cast<const uint32_t*>(h_pool.data() + size_t(id) * kRowBytes);
            for (int i = 0; i < kRowBytes / 4; ++i) want += w[i];
          }
          ok = got[b] == want;
        }
        all_ok = all_ok && ok;
        const float us = graph_us(k, false, grid, smem, pool, ids, sums, s) -
                         graph_us(k, true, grid, 0, pool, ids, sums, s);
        const double bytes = mode == kNone ? 4.0 * rows * grid : double(kRowBytes) * rows * grid;
        std::printf("%-7s %5d %5d %9.2f %9.1f %6s\n", kModeName[mode], grid, rows, us, bytes / (us * 1e3),
                    ok ? "ok" : "WRONG");
      }
    }
  }
  CHECK(cudaFree(pool));
  CHECK(cudaFree(ids));
  CHECK(cudaFree(sums));
  return all_ok ? 0 : 1;
}
