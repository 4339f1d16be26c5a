// The CUDA C probes' bulk copies (cp.async.bulk, the async proxy) and the mbarrier that counts them, in one
// place: gather_probe and fence_probe both gather rows this way (sm_90a).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// One thread: the mbarrier at `bar` for one arrival, its init released to the async proxy.
__device__ __forceinline__ void mbar_init(uint32_t bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar));
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// The one arrival, expecting `bytes` of bulk copies.
__device__ __forceinline__ void mbar_expect(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

// Copy `bytes` (a multiple of 16, both ends 16-byte aligned) from global `src` to shared `dst`, counted by `bar`.
__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
}

// Wait until the mbarrier's phase 0 has completed (every expected byte landed).
__device__ __forceinline__ void mbar_wait(uint32_t bar) {
  asm volatile("{ .reg .pred p; WAIT: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], 0; @!p bra WAIT; }"
               ::"r"(bar) : "memory");
}
