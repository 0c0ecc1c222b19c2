#include "gather.hpp"

#include <cstring>

namespace aria {

int64_t gather_rows(const std::uint8_t* src, int64_t src_rows, int64_t row_bytes, const int64_t* idx, int64_t n,
                    std::uint8_t* dst) {
  for (int64_t i = 0; i < n; ++i) {
    if (idx[i] < 0 || idx[i] >= src_rows) return i;
  }
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(dst + i * row_bytes, src + idx[i] * row_bytes, static_cast<std::size_t>(row_bytes));
  }
  return -1;
}

}  // namespace aria
