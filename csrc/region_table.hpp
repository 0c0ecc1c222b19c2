// Region statistics table for ARIA (docs/design.md section 4).
//
// K regions of the conditioning space. Between syncs, every rank accumulates per-region
// (sum d, sum d^2, count) of the timestep-normalised discrepancy d_i into one contiguous float64
// block of shape (3, K). `record` is lock-free and safe from any number of threads:
//   * a caller first tries to claim one of S private stripes (an atomic exchange, never a wait) and
//     adds into it with plain stores: no atomic per sample, no flush. A stripe holds a 32-byte slot
//     (sum, sum of squares, count, pad) per region, so a sample is one aligned vector add on one
//     cache line (AVX where the CPU has it, chosen at load time);
//   * if every stripe is busy it aggregates locally and publishes with relaxed atomic adds on the
//     block (contention per region, not per sample).
// Stripes are merged into the block by settle(), which reading the accumulators, fold() and the
// cross-rank sync call first. Why stripes: a locked instruction costs ~9 ns on the machines we
// measured, so flushing 3K atomics per call cannot beat one np.bincount pass at K = 65536.
// `fold` applies the deterministic EMA update
//     m_k <- (1 - beta) m_k + beta * mean_k          (observed regions only)
// with Adam-style bias correction, ages unobserved regions, and zeroes the block. Every rank that
// folds the same (all-reduced) block from the same state reaches the same state.
//
// Plain C++20, no libtorch, no Python: the bindings live in bindings.cpp.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace aria {

// Counter-based random numbers (splitmix64 finaliser over key + (counter + 1) * golden ratio).
// The NumPy reference in aria_hpc/regions/rng.py computes the same bits.
uint64_t splitmix64(uint64_t x);
double counter_uniform(uint64_t key, uint64_t counter);  // in [0, 1), 53 random bits

class RegionTable {
 public:
  static constexpr int kRows = 3;  // sum, sum of squares, count

  RegionTable(int64_t num_regions, std::vector<double> base, double init_estimate);

  int64_t num_regions() const { return num_regions_; }
  // The (3, K) block, settled: holds every record() that returned before this call.
  double* accumulators() {
    settle();
    return accumulators_.data();
  }

  // Lock-free, thread-safe. Throws std::invalid_argument (and records nothing) on an id outside
  // [0, K) or a non-finite value.
  void record(const int64_t* region_ids, const double* values, int64_t n);

  // Merge the private stripes into the block. Not concurrent with record(), like fold().
  void settle();

  // Not concurrent with record(): called by the training loop between steps, after the sync.
  // Settles first.
  void fold(double beta);

  // The one implementation of ARIA's allocation (docs/design.md section 4):
  // q_k = b_k * (1 + (1 - eps) * (t_k / Z - 1)),  t_k = (m_k / mean_b(m))^alpha,
  // Z = sum(b t) / sum(b), over the base b = pi (gamma = 0) or b ∝ pi^(1 - gamma) on non-empty regions.
  // Algebraically (1-eps) b t / Z + eps b, written so that alpha = 0 gives q == b bit for bit.
  // Stores q and rebuilds the alias table.
  std::vector<double> probabilities(double alpha, double eps, double gamma = 0.0);
  void set_probabilities(const std::vector<double>& q);  // e.g. warm-up: q = pi
  void sample(int64_t n, uint64_t key, int64_t* out) const;  // alias method, O(1) per draw

  // State (everything fold/probabilities depend on), for checkpoints and tests.
  std::vector<double> estimate() const;  // bias-corrected m_k; init_estimate where never observed
  std::vector<double> variance() const;  // bias-corrected EMA of d^2 minus m^2 (0 if unobserved)

  int64_t num_regions_;
  double init_estimate_;
  int64_t folds_ = 0;
  std::vector<double> accumulators_;  // (3, K) row-major
  std::vector<double> base_;          // pi_k, normalised
  std::vector<double> ema_mean_;      // uncorrected EMA of mean_k
  std::vector<double> ema_sq_;        // uncorrected EMA of mean of d^2
  std::vector<double> ema_weight_;    // 1 - (1 - beta)^(observed folds): the bias correction
  std::vector<double> age_;           // folds since the region was last observed
  std::vector<double> observations_;  // total samples folded in
  std::vector<double> q_;             // current allocation
  std::vector<double> alias_prob_;
  std::vector<int64_t> alias_index_;

  // (sum, sum of squares, count, 0) of one region. A struct with explicit alignment: a bare
  // 32-byte vector type is only 16-byte aligned in code compiled without AVX, and its alignment
  // attribute is dropped as a template argument (std::vector).
  typedef double Vec4 __attribute__((vector_size(4 * sizeof(double))));
  struct alignas(32) Slot {
    Vec4 v;
  };

 private:
  struct Stripe {
    std::atomic<bool> busy{false};
    bool dirty = false;         // written only by the claimant, read by settle(); clean = all zero
    std::vector<Slot> slots;    // K slots
    std::vector<Slot> scratch;  // zero between calls: a dense call's samples before merging
  };
  struct AliasEntry {
    uint64_t threshold;  // accept the column when the 64 leftover bits are below this
    int64_t alias;
  };

  void build_alias();
  void record_atomic(const int64_t* region_ids, const double* values, int64_t n);

  std::unique_ptr<Stripe[]> stripes_;
  int64_t num_stripes_ = 0;
  std::vector<AliasEntry> alias_entries_;
};

}  // namespace aria
