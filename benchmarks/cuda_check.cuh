// CHECK(call): the benchmarks' CUDA C probes stop with the failed call, its error and line.
#pragma once
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK(x)                                                                                  \
  do {                                                                                            \
    cudaError_t e_ = (x);                                                                         \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s: %s (line %d)\n", #x, cudaGetErrorString(e_), __LINE__);          \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)
