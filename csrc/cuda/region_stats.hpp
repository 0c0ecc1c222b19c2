// Host-side declaration of the CUDA region accumulation (compiled only when CMake finds CUDA).
#pragma once

#include <cstdint>

namespace aria {

enum class ValueType { kFloat32, kFloat64 };

// out (3, K) float64 on the device += per-region (sum, sum of squares, count) of values (n,) with
// region ids (n,) int64; error (device int) is set to 1 on an id outside [0, K) or a non-finite
// value (those samples are skipped). Asynchronous on `stream` (a cudaStream_t; nullptr = default).
void cuda_region_stats(const int64_t* ids, const void* values, ValueType type, int64_t n, int64_t k,
                       double* out, int* error, void* stream);

}  // namespace aria
