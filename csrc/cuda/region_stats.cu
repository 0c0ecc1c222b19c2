// Per-region (sum, sum of squares, count) of per-sample values that live on the GPU.
//
// Launched on the caller's stream (PyTorch's current stream, passed as a raw pointer), so the
// training step never synchronises with the host for statistics; the host table is filled only at
// sync time. Small K: block-private shared-memory accumulation, then one global atomic per block,
// region and statistic. Large K (the (3, K) block does not fit in shared memory): per-sample global
// atomics (native double atomicAdd, sm_60+). An id outside [0, K) or a non-finite value sets
// `error` and is skipped; the caller checks it at sync time.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "region_stats.hpp"

namespace aria {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kSharedMaxRegions = 2048;  // 3 * 2048 doubles = 48 KiB, the default limit

template <typename T>
__device__ inline bool valid(int64_t r, T v, int64_t k) {
  return r >= 0 && r < k && isfinite(static_cast<double>(v));
}

// kShared: accumulate in block-private shared memory, then one global atomic per block, region and
// statistic; otherwise straight into the global block.
template <typename T, bool kShared>
__global__ void region_stats(const int64_t* __restrict__ ids, const T* __restrict__ values, int64_t n,
                             int64_t k, double* __restrict__ out, int* __restrict__ error) {
  extern __shared__ double shared[];  // (3, k) when kShared
  double* target = kShared ? shared : out;
  if constexpr (kShared) {
    for (int64_t j = threadIdx.x; j < 3 * k; j += blockDim.x) shared[j] = 0.0;
    __syncthreads();
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = ids[i];
    const double v = static_cast<double>(values[i]);
    if (!valid(r, values[i], k)) {
      atomicExch(error, 1);
      continue;
    }
    atomicAdd(target + r, v);
    atomicAdd(target + k + r, v * v);
    atomicAdd(target + 2 * k + r, 1.0);
  }
  if constexpr (kShared) {
    __syncthreads();
    for (int64_t r = threadIdx.x; r < k; r += blockDim.x) {
      const double count = shared[2 * k + r];
      if (count == 0.0) continue;
      atomicAdd(out + r, shared[r]);
      atomicAdd(out + k + r, shared[k + r]);
      atomicAdd(out + 2 * k + r, count);
    }
  }
}

template <typename T>
void launch(const int64_t* ids, const T* values, int64_t n, int64_t k, double* out, int* error,
            cudaStream_t stream) {
  if (n == 0) return;
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t wanted = (n + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(std::min<int64_t>(wanted, 4 * static_cast<int64_t>(sms)));
  if (k <= kSharedMaxRegions) {
    const size_t shared = 3 * static_cast<size_t>(k) * sizeof(double);
    region_stats<T, true><<<blocks, kThreads, shared, stream>>>(ids, values, n, k, out, error);
  } else {
    region_stats<T, false><<<blocks, kThreads, 0, stream>>>(ids, values, n, k, out, error);
  }
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("region stats kernel launch failed: ") + cudaGetErrorString(status));
  }
}

}  // namespace

void cuda_region_stats(const int64_t* ids, const void* values, ValueType type, int64_t n, int64_t k,
                       double* out, int* error, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (type == ValueType::kFloat32) {
    launch(ids, static_cast<const float*>(values), n, k, out, error, s);
  } else {
    launch(ids, static_cast<const double*>(values), n, k, out, error, s);
  }
}

}  // namespace aria
