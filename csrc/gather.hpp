// Row gather for the teacher-bank reader: copy selected fixed-size rows of a memory-mapped block
// straight into a destination buffer, one memcpy per row, without the temporary that NumPy fancy
// indexing followed by an assignment makes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace aria {

// dst[i] = src[idx[i]] for rows of row_bytes bytes. Returns the position of the first out-of-range
// index, or -1 when all are valid (nothing is copied then).
int64_t gather_rows(const std::uint8_t* src, int64_t src_rows, int64_t row_bytes, const int64_t* idx, int64_t n,
                    std::uint8_t* dst);

}  // namespace aria
