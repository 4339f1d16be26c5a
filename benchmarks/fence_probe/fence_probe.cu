// Does a generic-to-async proxy fence wait for the copies still in flight? (issue 32)
//
// A SOLO program (kernels/sm90/solo.py) converts each 32-token tile with st.shared and then runs
// fence.proxy.async.shared::cta before its wgmma reads the tile; ptxas emits that fence as
// MEMBAR.ALL.CTA + FENCE.VIEW.ASYNC.S, and when the fence runs, the cp.async gathers of the next
// tiles are in flight.  An unsplit SOLO program spends 1.5-1.7 us a tile past its first three (H100,
// 2026-12-07/08), however far ahead its copies are issued (three or five tiles), about one DRAM round
// trip: if the fence waits for every copy in flight, the copy pipeline is one tile deep.
//
// One CTA of 128 threads gathers 32 rows of 576 bytes (one tile's NoPE + RoPE bytes) from a 576 MiB pool
// with 16-byte cp.async, commits them, then (mode) runs nothing, fence.proxy.async.shared::cta,
// membar.cta, or an ld.global left unconsumed followed by the proxy fence; or gathers them with 16-byte
// loads into registers (the warp-specialized producer's way) with and without the proxy fence after
// them (the producer fences each converted sub-block with the next one's loads in flight); or gathers them
// with one bulk copy a row (cp.async.bulk, the async proxy, counted by an mbarrier: what a fence might not
// wait for) with and without the proxy fence after them; times with clock64: issue (the copies), fence (the
// mode's instruction), land (cp.async.wait_all, or the mbarrier's wait, after the fence).  If "fence" is
// about "land" in the fence modes, the fence waits for the copies.  Rows are fresh each launch (the pool is
// 11x the L2); cycles, median of 200 launches a mode.
//
//   nvcc -O3 -arch=sm_90a -o /tmp/fence_probe benchmarks/fence_probe/fence_probe.cu && /tmp/fence_probe
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../bulk_copy.cuh"
#include "../cuda_check.cuh"

constexpr int kRows = 32;
constexpr int kRowBytes = 576;
constexpr int kPieces = kRowBytes / 16;
constexpr int kThreads = 128;
constexpr int kMine = kRows * kPieces / kThreads;  // 16-byte pieces a thread copies
constexpr long long kPoolRows = 1 << 20;  // 576 MiB

enum Mode { kNone = 0, kProxyFence = 1, kMembarCta = 2, kLoadThenProxyFence = 3, kRegistersThenProxyFence = 4,
            kRegistersNoFence = 5, kBulkNone = 6, kBulkProxyFence = 7, kModes = 8 };
const char* kNames[kModes] = {"cp.async, none", "cp.async, fence.proxy.async", "cp.async, membar.cta",
                              "cp.async + ld.global, fence.proxy", "LDG to registers, fence.proxy",
                              "LDG to registers, none", "bulk copies, none", "bulk copies, fence.proxy"};

__global__ void probe(const uint4* __restrict__ pool, const int* __restrict__ ids, const int* __restrict__ far,
                      int mode, long long* out, unsigned* sink) {
  __shared__ __align__(16) uint4 tile[kRows * kPieces];
  __shared__ __align__(8) unsigned long long bar;
  const bool bulk = mode == kBulkNone || mode == kBulkProxyFence;
  const uint32_t bar_at = smem_addr(&bar);
  if (bulk && threadIdx.x == 0) {  // the copies' mbarrier: one arrival, expecting every row's bytes
    mbar_init(bar_at);
    mbar_expect(bar_at, kRows * kRowBytes);
  }
  int my_ids[kMine];
  for (int i = 0; i < kMine; ++i) my_ids[i] = ids[(threadIdx.x + i * kThreads) / kPieces];
  const int my_row = ids[threadIdx.x % kRows];  // (the bulk modes: thread r copies row r)
  unsigned far_word = 0;
  const bool in_registers = mode == kRegistersThenProxyFence || mode == kRegistersNoFence;
  uint4 rows[kMine];  // (the warp-specialized producer's way: 16-byte loads into registers, stored later)
  __syncthreads();
  long long t0 = clock64();
  for (int i = 0; i < kMine && !bulk; ++i) {
    int p = threadIdx.x + i * kThreads;
    const uint4* src = pool + (long long)my_ids[i] * kPieces + p % kPieces;
    if (in_registers) {
      asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                   : "=r"(rows[i].x), "=r"(rows[i].y), "=r"(rows[i].z), "=r"(rows[i].w) : "l"(src));
    } else {
      const uint32_t dst = smem_addr(&tile[p]);
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
    }
  }
  if (bulk && threadIdx.x < kRows) {  // one bulk copy a row, by the row's thread
    bulk_copy(smem_addr(&tile[threadIdx.x * kPieces]), pool + (long long)my_row * kPieces, kRowBytes, bar_at);
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
  if (mode == kLoadThenProxyFence) asm volatile("ld.global.u32 %0, [%1];" : "=r"(far_word) : "l"(far + threadIdx.x));
  long long t1 = clock64();
  if (mode == kProxyFence || mode == kLoadThenProxyFence || mode == kRegistersThenProxyFence ||
      mode == kBulkProxyFence) {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  } else if (mode == kMembarCta) {
    asm volatile("membar.cta;" ::: "memory");
  }
  long long t2 = clock64();
  asm volatile("cp.async.wait_all;" ::: "memory");
  if (bulk) mbar_wait(bar_at);
  if (in_registers) {
    for (int i = 0; i < kMine; ++i) tile[threadIdx.x + i * kThreads] = rows[i];  // (waits for the loads)
  }
  long long t3 = clock64();
  __syncthreads();
  unsigned s = far_word;
  for (int p = threadIdx.x; p < kRows * kPieces; p += kThreads) s += tile[p].x ^ tile[p].w;
  atomicAdd(sink, s);
  if (threadIdx.x == 0) {
    out[0] = t1 - t0;
    out[1] = t2 - t1;
    out[2] = t3 - t1;
  }
}

int main() {
  uint4* pool;
  CHECK(cudaMalloc(&pool, kPoolRows * kRowBytes));
  CHECK(cudaMemset(pool, 1, kPoolRows * kRowBytes));
  const int launches = 200;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> row(0, kPoolRows - 1);
  std::vector<int> ids(launches * kModes * kRows), far(launches * kModes);  // far: a word offset into the pool
  for (auto& x : ids) x = row(rng);
  for (auto& x : far) x = row(rng) * (kRowBytes / 4);
  int* d_ids;
  long long* d_out;
  unsigned* d_sink;
  CHECK(cudaMalloc(&d_ids, ids.size() * sizeof(int)));
  CHECK(cudaMalloc(&d_out, 3 * sizeof(long long)));
  CHECK(cudaMalloc(&d_sink, sizeof(unsigned)));
  CHECK(cudaMemcpy(d_ids, ids.data(), ids.size() * sizeof(int), cudaMemcpyHostToDevice));
  std::printf("one CTA, %d rows of %d B by 16-byte cp.async, then the mode; SM cycles, median (p10-p90) of %d\n",
              kRows, kRowBytes, launches);
  std::printf("%-32s %22s %22s %22s\n", "mode", "issue", "fence", "land (after issue)");
  for (int mode = 0; mode < kModes; ++mode) {
    std::vector<long long> t[3];
    for (int l = 0; l < launches; ++l) {
      int k = mode * launches + l;
      probe<<<1, kThreads>>>(pool, d_ids + k * kRows, reinterpret_cast<const int*>(pool) + far[k], mode,
                             d_out, d_sink);
      CHECK(cudaGetLastError());
      long long h[3];
      CHECK(cudaMemcpy(h, d_out, sizeof(h), cudaMemcpyDeviceToHost));
      for (int i = 0; i < 3; ++i) t[i].push_back(h[i]);
    }
    std::printf("%-32s", kNames[mode]);
    for (auto& v : t) {
      std::sort(v.begin(), v.end());
      std::printf(" %8lld (%5lld-%6lld)", v[v.size() / 2], v[v.size() / 10], v[v.size() * 9 / 10]);
    }
    std::printf("\n");
  }
  return 0;
}
