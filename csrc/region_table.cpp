#include "region_table.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <stdexcept>
#include <string>
#include <functional>
#include <thread>

namespace aria {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;
// Below this many samples per region, a dense per-call buffer costs more than it saves.
constexpr int64_t kDenseMinSamplesPerRegion = 4;

inline void atomic_add(double* target, double value) {
  std::atomic_ref<double>(*target).fetch_add(value, std::memory_order_relaxed);
}

void check_sample(int64_t region, double value, int64_t num_regions) {
  if (region < 0 || region >= num_regions) {
    throw std::invalid_argument("region id " + std::to_string(region) + " is outside [0, " +
                                std::to_string(num_regions) + ")");
  }
  if (!std::isfinite(value)) {
    throw std::invalid_argument("value for region " + std::to_string(region) +
                                " is not finite (NaN or inf loss?)");
  }
}

// P(coin < threshold) = p for a uniform 64-bit coin (p = 1 accepts all but one value in 2^64,
// and such columns alias to themselves).
uint64_t alias_threshold(double p) {
  return p >= 1.0 ? UINT64_MAX : static_cast<uint64_t>(p * 0x1.0p64);
}

}  // namespace

uint64_t splitmix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

double counter_uniform(uint64_t key, uint64_t counter) {
  return static_cast<double>(splitmix64(key + (counter + 1) * kGolden) >> 11) * 0x1.0p-53;
}

RegionTable::RegionTable(int64_t num_regions, std::vector<double> base, double init_estimate)
    : num_regions_(num_regions), init_estimate_(init_estimate) {
  if (num_regions < 1) throw std::invalid_argument("num_regions must be >= 1");
  const auto k = static_cast<size_t>(num_regions);
  if (base.empty()) base.assign(k, 1.0);
  if (base.size() != k) {
    throw std::invalid_argument("base has " + std::to_string(base.size()) + " entries, expected " +
                                std::to_string(k));
  }
  double total = 0.0;
  for (double p : base) {
    if (!(p >= 0.0) || !std::isfinite(p)) throw std::invalid_argument("base must be finite, >= 0");
    total += p;
  }
  if (!(total > 0.0)) throw std::invalid_argument("base must have a positive sum");
  for (double& p : base) p /= total;
  base_ = std::move(base);
  accumulators_.assign(kRows * k, 0.0);
  ema_mean_.assign(k, 0.0);
  ema_sq_.assign(k, 0.0);
  ema_weight_.assign(k, 0.0);
  age_.assign(k, 0.0);
  observations_.assign(k, 0.0);
  num_stripes_ = std::clamp<int64_t>(std::thread::hardware_concurrency(), 2, 16);
  stripes_ = std::make_unique<Stripe[]>(static_cast<size_t>(num_stripes_));
  set_probabilities(base_);
}

namespace {

using Slot = RegionTable::Slot;
using Vec4 = RegionTable::Vec4;

// The aggregation loops are compiled twice on x86-64 Linux, for AVX and for the baseline ISA, and
// the loader picks one (an ifunc): a slot update is then one 256-bit add instead of two 128-bit
// ones. Not under ThreadSanitizer, whose runtime is not up when ifunc resolvers run.
#if defined(__x86_64__) && defined(__linux__) && !defined(ARIA_TSAN)
#define ARIA_VECTOR_CLONES __attribute__((target_clones("avx", "default")))
#else
#define ARIA_VECTOR_CLONES
#endif

// A zeroed scratch of K slots, allocated on first use.
Slot* zeroed_scratch(std::vector<Slot>& scratch, int64_t num_regions) {
  if (scratch.empty()) scratch.assign(static_cast<size_t>(num_regions), Slot{});
  return scratch.data();
}

// slots[r] += (v, v^2, 1, 0) for every sample, stopping at the first bad sample: returns its
// index (the caller then discards what was added), or -1 when every sample was good.
template <bool prefetch>
ARIA_VECTOR_CLONES int64_t aggregate_impl(const int64_t* region_ids, const double* values, int64_t n,
                                          int64_t k, Slot* slots) {
  constexpr int64_t kPrefetch = 24;  // random slots: fetch ahead of the add
  for (int64_t i = 0; i < n; ++i) {
    if (prefetch && i + kPrefetch < n) {
      const auto ahead = static_cast<uint64_t>(region_ids[i + kPrefetch]);
      if (ahead < static_cast<uint64_t>(k)) __builtin_prefetch(slots + ahead, 1, 3);
    }
    const int64_t r = region_ids[i];
    const double v = values[i];
    if (static_cast<uint64_t>(r) >= static_cast<uint64_t>(k) || !std::isfinite(v)) return i;
    slots[r].v += Vec4{v, v * v, 1.0, 0.0};
  }
  return -1;
}

// Prefetching pays only when the slots do not fit in cache; below that it is extra instructions.
int64_t aggregate(const int64_t* region_ids, const double* values, int64_t n, int64_t k, Slot* slots) {
  constexpr int64_t kCachedRegions = 8192;  // 8192 slots = 256 KiB
  return k > kCachedRegions ? aggregate_impl<true>(region_ids, values, n, k, slots)
                            : aggregate_impl<false>(region_ids, values, n, k, slots);
}

// target[r] += source[r] and source[r] = 0 for every region.
ARIA_VECTOR_CLONES void merge_and_zero(Slot* target, Slot* source, int64_t k) {
  for (int64_t r = 0; r < k; ++r) {
    target[r].v += source[r].v;
    source[r] = Slot{};
  }
}

// Validate up front (for calls with few samples, where a scratch buffer would cost more).
void check_all(const int64_t* region_ids, const double* values, int64_t n, int64_t k) {
  for (int64_t i = 0; i < n; ++i) check_sample(region_ids[i], values[i], k);
}

}  // namespace

void RegionTable::record(const int64_t* region_ids, const double* values, int64_t n) {
  if (n <= 0) return;
  const int64_t k = num_regions_;
  // Claim a private stripe, starting from one chosen by the thread id (rarely contended). No
  // thread_local state: its teardown in a dlopen'd module races with glibc's TLS reuse.
  const uint64_t preferred = std::hash<std::thread::id>{}(std::this_thread::get_id());
  for (int64_t attempt = 0; attempt < num_stripes_; ++attempt) {
    const int64_t s = static_cast<int64_t>((preferred + attempt) % num_stripes_);
    Stripe& stripe = stripes_[s];
    if (stripe.busy.exchange(true, std::memory_order_acquire)) continue;
    struct Release {
      Stripe& stripe;
      ~Release() { stripe.busy.store(false, std::memory_order_release); }
    } release{stripe};
    if (stripe.slots.empty()) stripe.slots.assign(static_cast<size_t>(k), Slot{});
    Slot* slots = stripe.slots.data();
    if (!stripe.dirty) {
      // A clean stripe is all zeros: add straight into it; a bad sample restores the zeros.
      const int64_t bad = aggregate(region_ids, values, n, k, slots);
      if (bad >= 0) {
        std::fill(stripe.slots.begin(), stripe.slots.end(), Slot{});
        check_sample(region_ids[bad], values[bad], k);  // throws
      }
    } else if (n < kDenseMinSamplesPerRegion * k) {
      check_all(region_ids, values, n, k);
      aggregate(region_ids, values, n, k, slots);
    } else {
      // One fused pass into a zeroed scratch (so a bad sample leaves the stripe untouched), then
      // merge into the stripe, zeroing the scratch in the same sweep.
      Slot* scratch = zeroed_scratch(stripe.scratch, k);
      const int64_t bad = aggregate(region_ids, values, n, k, scratch);
      if (bad >= 0) {
        std::fill(stripe.scratch.begin(), stripe.scratch.end(), Slot{});
        check_sample(region_ids[bad], values[bad], k);  // throws
      }
      merge_and_zero(slots, scratch, k);
    }
    stripe.dirty = true;
    return;
  }
  record_atomic(region_ids, values, n);
}

// Every stripe busy: aggregate locally, then publish with atomic adds on the shared block.
void RegionTable::record_atomic(const int64_t* region_ids, const double* values, int64_t n) {
  const int64_t k = num_regions_;
  double* sums = accumulators_.data();
  double* squares = sums + k;
  double* counts = sums + 2 * k;
  if (n < kDenseMinSamplesPerRegion * k) {
    check_all(region_ids, values, n, k);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = region_ids[i];
      const double v = values[i];
      atomic_add(sums + r, v);
      atomic_add(squares + r, v * v);
      atomic_add(counts + r, 1.0);
    }
    return;
  }
  std::vector<Slot> local;
  Slot* acc = zeroed_scratch(local, k);
  const int64_t bad = aggregate(region_ids, values, n, k, acc);
  if (bad >= 0) check_sample(region_ids[bad], values[bad], k);  // throws
  for (int64_t r = 0; r < k; ++r) {
    if (acc[r].v[2] == 0.0) continue;
    atomic_add(sums + r, acc[r].v[0]);
    atomic_add(squares + r, acc[r].v[1]);
    atomic_add(counts + r, acc[r].v[2]);
  }
}

void RegionTable::settle() {
  const int64_t k = num_regions_;
  double* sums = accumulators_.data();
  for (int64_t s = 0; s < num_stripes_; ++s) {
    Stripe& stripe = stripes_[s];
    // Not concurrent with record(); the acquire pairs with the last claimant's release.
    if (stripe.busy.exchange(true, std::memory_order_acquire)) {
      throw std::logic_error("settle() ran concurrently with record()");
    }
    if (stripe.dirty) {
      const Slot* slots = stripe.slots.data();
      for (int64_t r = 0; r < k; ++r) {
        for (int64_t j = 0; j < kRows; ++j) sums[j * k + r] += slots[r].v[j];
      }
      std::fill(stripe.slots.begin(), stripe.slots.end(), Slot{});
      stripe.dirty = false;
    }
    stripe.busy.store(false, std::memory_order_release);
  }
}

void RegionTable::fold(double beta) {
  if (!(beta > 0.0 && beta <= 1.0)) throw std::invalid_argument("beta must be in (0, 1]");
  settle();
  const int64_t k = num_regions_;
  double* sums = accumulators_.data();
  double* squares = sums + k;
  double* counts = sums + 2 * k;
  for (int64_t r = 0; r < k; ++r) {
    const double count = counts[r];
    if (count > 0.0) {
      ema_mean_[r] = (1.0 - beta) * ema_mean_[r] + beta * (sums[r] / count);
      ema_sq_[r] = (1.0 - beta) * ema_sq_[r] + beta * (squares[r] / count);
      ema_weight_[r] = (1.0 - beta) * ema_weight_[r] + beta;
      age_[r] = 0.0;
      observations_[r] += count;
    } else {
      age_[r] += 1.0;
    }
  }
  std::fill(accumulators_.begin(), accumulators_.end(), 0.0);
  ++folds_;
}

std::vector<double> RegionTable::estimate() const {
  std::vector<double> m(static_cast<size_t>(num_regions_));
  for (size_t r = 0; r < m.size(); ++r) {
    m[r] = ema_weight_[r] > 0.0 ? ema_mean_[r] / ema_weight_[r] : init_estimate_;
  }
  return m;
}

std::vector<double> RegionTable::variance() const {
  std::vector<double> var(static_cast<size_t>(num_regions_), 0.0);
  for (size_t r = 0; r < var.size(); ++r) {
    if (ema_weight_[r] > 0.0) {
      const double mean = ema_mean_[r] / ema_weight_[r];
      var[r] = std::max(0.0, ema_sq_[r] / ema_weight_[r] - mean * mean);
    }
  }
  return var;
}

std::vector<double> RegionTable::probabilities(double alpha, double eps, double gamma) {
  if (!(eps >= 0.0 && eps <= 1.0)) throw std::invalid_argument("eps must be in [0, 1]");
  if (!(alpha >= 0.0) || !std::isfinite(alpha)) throw std::invalid_argument("alpha must be >= 0");
  if (!(gamma >= 0.0 && gamma <= 1.0)) throw std::invalid_argument("gamma must be in [0, 1]");
  const size_t k = base_.size();
  // The allocation's base b_k: pi_k itself (gamma = 0), else pi_k^(1 - gamma) over the non-empty
  // regions, normalised (gamma = 1: uniform over regions).
  std::vector<double> base = base_;
  if (gamma > 0.0) {
    double flat_total = 0.0;
    for (size_t r = 0; r < k; ++r) {
      base[r] = base_[r] > 0.0 ? std::pow(base_[r], 1.0 - gamma) : 0.0;
      flat_total += base[r];
    }
    for (double& v : base) v /= flat_total;
  }
  // Discrepancies are non-negative; a negative estimate (possible only from negative inputs)
  // is treated as zero so that the tilt stays defined.
  std::vector<double> m = estimate();
  for (double& v : m) v = std::max(v, 0.0);
  double base_total = 0.0, mean_m = 0.0;
  for (size_t r = 0; r < k; ++r) {
    base_total += base[r];
    mean_m += base[r] * m[r];
  }
  mean_m /= base_total;
  std::vector<double> tilt(k, 1.0);
  if (mean_m > 0.0 && std::isfinite(mean_m)) {
    for (size_t r = 0; r < k; ++r) tilt[r] = std::pow(m[r] / mean_m, alpha);
  }
  double z = 0.0;
  for (size_t r = 0; r < k; ++r) z += base[r] * tilt[r];
  z /= base_total;
  std::vector<double> q(k);
  for (size_t r = 0; r < k; ++r) q[r] = base[r] * (1.0 + (1.0 - eps) * (tilt[r] / z - 1.0));
  set_probabilities(q);
  return q;
}

void RegionTable::set_probabilities(const std::vector<double>& q) {
  if (q.size() != static_cast<size_t>(num_regions_)) {
    throw std::invalid_argument("probabilities have the wrong length");
  }
  double total = 0.0;
  for (double p : q) {
    if (!(p >= 0.0) || !std::isfinite(p)) {
      throw std::invalid_argument("probabilities must be finite and >= 0");
    }
    total += p;
  }
  if (!(total > 0.0)) throw std::invalid_argument("probabilities must have a positive sum");
  q_ = q;
  build_alias();
}

// Vose's alias method. The worklists are stacks filled in index order, so the table is a
// deterministic function of q (the NumPy reference builds the same one).
void RegionTable::build_alias() {
  const size_t k = q_.size();
  double total = 0.0;
  for (double p : q_) total += p;
  std::vector<double> scaled(k);
  std::vector<int64_t> small, large;
  for (size_t r = 0; r < k; ++r) {
    scaled[r] = q_[r] * static_cast<double>(k) / total;
    (scaled[r] < 1.0 ? small : large).push_back(static_cast<int64_t>(r));
  }
  alias_prob_.assign(k, 1.0);
  alias_index_.resize(k);
  for (size_t r = 0; r < k; ++r) alias_index_[r] = static_cast<int64_t>(r);
  while (!small.empty() && !large.empty()) {
    const int64_t s = small.back();
    small.pop_back();
    const int64_t l = large.back();
    large.pop_back();
    alias_prob_[s] = scaled[s];
    alias_index_[s] = l;
    scaled[l] = (scaled[l] + scaled[s]) - 1.0;
    (scaled[l] < 1.0 ? small : large).push_back(l);
  }
  // Leftovers (rounding) keep probability 1 and point to themselves.
  alias_entries_.resize(k);
  for (size_t r = 0; r < k; ++r) {
    alias_entries_[r] = {alias_threshold(alias_prob_[r]), alias_index_[r]};
  }
}

// One 64-bit hash per draw: the high word of x * K is the column (uniform in [0, K)), the low
// word is uniform too and independent of it, and serves as the coin against the threshold.
void RegionTable::sample(int64_t n, uint64_t key, int64_t* out) const {
  const auto k = static_cast<unsigned __int128>(alias_entries_.size());
  const AliasEntry* entries = alias_entries_.data();
  uint64_t counter = key;  // key + (i + 1) * golden, advanced by addition
  for (int64_t i = 0; i < n; ++i) {
    counter += kGolden;
    const uint64_t x = splitmix64(counter);
    const unsigned __int128 product = static_cast<unsigned __int128>(x) * k;
    const auto column = static_cast<int64_t>(product >> 64);
    const auto coin = static_cast<uint64_t>(product);
    // Branchless select: the coin is unpredictable, a branch would mispredict half the time.
    const int64_t keep = -static_cast<int64_t>(coin < entries[column].threshold);
    out[i] = (column & keep) | (entries[column].alias & ~keep);
  }
}

}  // namespace aria
