// Global magnitude top-k over many tensors (fp32 / bf16 / fp16, mixed in one call),
// without concatenating them.
//
// Score of an entry: the fp32 bit pattern of |x| (sign bit cleared) read as an unsigned
// key. The key is monotone in |x| for every non-NaN value, maps -0.0 and +0.0 to the same
// key and puts inf on top; fp16 and bf16 entries are widened exactly first, so entries of
// different dtypes compare by exact value.
//
// Selection is a radix select over the 31 key bits, then a parallel compaction:
//   deftx_topk_select
//     1. histogram of key >> 15 (2^16 bins): the bin holding the k-th largest key;
//     2. histogram of key & 0x7FFF over the keys of that bin: the threshold key T;
//     3. per segment, the number of keys > T and == T; an exclusive prefix of the == counts
//        in (tensor, flat index) order gives every segment its share of the
//        k - count(key > T) ties, and every segment its output offset in its tensor.
//   deftx_topk_write
//     4. every segment writes its selected flat indices, ascending, at its offset.
// The two calls let the caller allocate each tensor's output once its size is known.
//
// Work is split into segments of at most 2^16 elements of one tensor; the segments of all
// tensors form one list that a single OpenMP loop distributes, so tensors of any size share
// the threads. Histograms are per thread and merged with integer sums: the result does not
// depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <new>
#include <vector>

#include "common.h"

namespace deftx {
namespace {

constexpr int64_t kSegmentLength = int64_t(1) << 16;
constexpr uint32_t kLowBits = 15;
constexpr size_t kHighBins = size_t(1) << (31 - kLowBits);
constexpr size_t kLowBins = size_t(1) << kLowBits;
constexpr uint32_t kLowMask = uint32_t(kLowBins) - 1;

// Workspace layout (int64): threshold key (-1 when k == 0), segment count, then per segment
// the number of ties it takes and its output offset within its tensor.
constexpr int64_t kHeaderLength = 2;
constexpr int64_t kPerSegment = 2;

struct Inputs {
  int64_t n_tensors;
  const void* const* data;
  const int32_t* dtypes;
  const int64_t* numels;
};

// A range [begin, end) of the flat entries of one tensor.
struct Segment {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

struct Float32Keys {
  const uint32_t* bits;
  uint32_t operator()(int64_t i) const { return bits[i] & 0x7FFFFFFFu; }
};

struct BFloat16Keys {
  const uint16_t* bits;
  uint32_t operator()(int64_t i) const { return bf16_to_f32_bits(uint16_t(bits[i] & 0x7FFFu)); }
};

struct Float16Keys {
  const uint16_t* bits;
  uint32_t operator()(int64_t i) const { return f16_to_f32_bits(uint16_t(bits[i] & 0x7FFFu)); }
};

// Calls `fn(keys)` with `keys(i)` the magnitude key of entry i of tensor `t`.
template <typename Fn>
void with_keys(const Inputs& in, int64_t t, Fn&& fn) {
  switch (in.dtypes[t]) {
    case kFloat32: fn(Float32Keys{static_cast<const uint32_t*>(in.data[t])}); break;
    case kBFloat16: fn(BFloat16Keys{static_cast<const uint16_t*>(in.data[t])}); break;
    default: fn(Float16Keys{static_cast<const uint16_t*>(in.data[t])}); break;
  }
}

int32_t validate(const Inputs& in, int64_t* total) {
  if (in.n_tensors < 0) return kInvalidArgument;
  if (in.n_tensors > 0 && (!in.data || !in.dtypes || !in.numels)) return kInvalidArgument;
  *total = 0;
  for (int64_t t = 0; t < in.n_tensors; ++t) {
    if (in.numels[t] < 0 || !is_valid_dtype(in.dtypes[t])) return kInvalidArgument;
    if (in.numels[t] > 0 && !in.data[t]) return kInvalidArgument;
    *total += in.numels[t];
  }
  return kOk;
}

int64_t segment_count(const int64_t* numels, int64_t n_tensors) {
  int64_t count = 0;
  for (int64_t t = 0; t < n_tensors; ++t) count += (numels[t] + kSegmentLength - 1) / kSegmentLength;
  return count;
}

// Segments of all tensors in (tensor, flat index) order.
std::vector<Segment> make_segments(const Inputs& in) {
  std::vector<Segment> segments;
  segments.reserve(size_t(segment_count(in.numels, in.n_tensors)));
  for (int64_t t = 0; t < in.n_tensors; ++t) {
    for (int64_t begin = 0; begin < in.numels[t]; begin += kSegmentLength) {
      segments.push_back({t, begin, std::min(begin + kSegmentLength, in.numels[t])});
    }
  }
  return segments;
}

struct HighBinner {
  void operator()(uint32_t key, uint64_t* hist) const { ++hist[key >> kLowBits]; }
};

struct LowBinner {
  uint32_t high;
  void operator()(uint32_t key, uint64_t* hist) const {
    if ((key >> kLowBits) == high) ++hist[key & kLowMask];
  }
};

// Histogram of `bins` bins over every key, filled by `binner(key, hist)`.
template <typename Binner>
std::vector<uint64_t> histogram(const Inputs& in, const std::vector<Segment>& segments, size_t bins,
                                const Binner& binner) {
  const int threads = omp_get_max_threads();
  std::vector<uint64_t> per_thread(size_t(threads) * bins, 0);
  const int64_t n_segments = int64_t(segments.size());
#pragma omp parallel num_threads(threads)
  {
    uint64_t* hist = per_thread.data() + size_t(omp_get_thread_num()) * bins;
#pragma omp for schedule(dynamic, 4)
    for (int64_t s = 0; s < n_segments; ++s) {
      const Segment seg = segments[size_t(s)];
      with_keys(in, seg.tensor, [&](auto keys) {
        for (int64_t i = seg.begin; i < seg.end; ++i) binner(keys(i), hist);
      });
    }
  }
  std::vector<uint64_t> merged(per_thread.begin(), per_thread.begin() + int64_t(bins));
  for (int t = 1; t < threads; ++t) {
    const uint64_t* hist = per_thread.data() + size_t(t) * bins;
    for (size_t b = 0; b < bins; ++b) merged[b] += hist[b];
  }
  return merged;
}

// The bin holding the rank-th largest key (rank >= 1, at most the histogram's total);
// `above` receives the number of keys in higher bins.
uint32_t bin_of_rank(const std::vector<uint64_t>& hist, uint64_t rank, uint64_t* above) {
  uint64_t cumulative = 0;
  size_t b = hist.size();
  while (b > 1 && cumulative + hist[b - 1] < rank) cumulative += hist[--b];
  *above = cumulative;
  return uint32_t(b - 1);
}

// The key of the k-th largest entry (1 <= k <= total).
uint32_t threshold_key(const Inputs& in, const std::vector<Segment>& segments, int64_t k) {
  uint64_t above_high = 0;
  const uint32_t high =
      bin_of_rank(histogram(in, segments, kHighBins, HighBinner{}), uint64_t(k), &above_high);
  uint64_t above_low = 0;
  const uint32_t low = bin_of_rank(histogram(in, segments, kLowBins, LowBinner{high}),
                                   uint64_t(k) - above_high, &above_low);
  return (high << kLowBits) | low;
}

struct SegmentCounts {
  int64_t above;
  int64_t equal;
};

// Per segment, the number of keys greater than and equal to `threshold`.
std::vector<SegmentCounts> count_segments(const Inputs& in, const std::vector<Segment>& segments,
                                          uint32_t threshold) {
  std::vector<SegmentCounts> counts(segments.size());
  const int64_t n_segments = int64_t(segments.size());
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t s = 0; s < n_segments; ++s) {
    const Segment seg = segments[size_t(s)];
    with_keys(in, seg.tensor, [&](auto keys) {
      uint32_t above = 0;
      uint32_t equal = 0;
      for (int64_t i = seg.begin; i < seg.end; ++i) {
        const uint32_t key = keys(i);
        above += key > threshold;
        equal += key == threshold;
      }
      counts[size_t(s)] = {above, equal};
    });
  }
  return counts;
}

// Writes the flat indices of one segment's selected entries (ascending) to `out`: every key
// above the threshold and the first `ties` keys equal to it.
template <typename Keys>
void write_segment(Keys keys, const Segment& seg, uint32_t threshold, int64_t ties, int64_t* out) {
  for (int64_t i = seg.begin; i < seg.end; ++i) {
    const uint32_t key = keys(i);
    if (key > threshold) {
      *out++ = i;
    } else if (key == threshold && ties > 0) {
      *out++ = i;
      --ties;
    }
  }
}

int32_t plan_selection(const Inputs& in, int64_t k, int64_t* workspace, int64_t workspace_size,
               int64_t* counts) {
  int64_t total = 0;
  if (const int32_t status = validate(in, &total); status != kOk) return status;
  const int64_t n_segments = segment_count(in.numels, in.n_tensors);
  if (k < 0 || k > total || !workspace || (in.n_tensors > 0 && !counts) ||
      workspace_size != kHeaderLength + kPerSegment * n_segments) {
    return kInvalidArgument;
  }
  std::fill(counts, counts + in.n_tensors, 0);
  std::fill(workspace, workspace + workspace_size, 0);
  workspace[0] = -1;
  workspace[1] = n_segments;
  if (k == 0) return kOk;

  const std::vector<Segment> segments = make_segments(in);
  const uint32_t threshold = threshold_key(in, segments, k);
  const std::vector<SegmentCounts> seg_counts = count_segments(in, segments, threshold);
  int64_t ties_left = k;
  for (const SegmentCounts& c : seg_counts) ties_left -= c.above;
  workspace[0] = threshold;
  for (int64_t s = 0; s < n_segments; ++s) {
    const SegmentCounts c = seg_counts[size_t(s)];
    const int64_t ties = std::min(ties_left, c.equal);
    const int64_t t = segments[size_t(s)].tensor;
    ties_left -= ties;
    workspace[kHeaderLength + kPerSegment * s] = ties;
    workspace[kHeaderLength + kPerSegment * s + 1] = counts[t];
    counts[t] += c.above + ties;
  }
  return kOk;
}

int32_t write_selection(const Inputs& in, const int64_t* workspace, int64_t workspace_size,
              int64_t* const* out) {
  int64_t total = 0;
  if (const int32_t status = validate(in, &total); status != kOk) return status;
  const int64_t n_segments = segment_count(in.numels, in.n_tensors);
  if (!workspace || workspace_size != kHeaderLength + kPerSegment * n_segments ||
      workspace[1] != n_segments || (in.n_tensors > 0 && !out)) {
    return kInvalidArgument;
  }
  if (workspace[0] < 0) return kOk;  // k == 0: nothing selected
  const uint32_t threshold = uint32_t(workspace[0]);
  const std::vector<Segment> segments = make_segments(in);
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t s = 0; s < n_segments; ++s) {
    const Segment seg = segments[size_t(s)];
    const int64_t ties = workspace[kHeaderLength + kPerSegment * s];
    int64_t* dst = out[seg.tensor] + workspace[kHeaderLength + kPerSegment * s + 1];
    with_keys(in, seg.tensor, [&](auto keys) { write_segment(keys, seg, threshold, ties, dst); });
  }
  return kOk;
}

}  // namespace
}  // namespace deftx

// Number of int64 entries of the workspace that deftx_topk_select fills and
// deftx_topk_write reads, or -1 for an invalid argument.
DEFTX_EXPORT int64_t deftx_topk_workspace_size(int64_t n_tensors, const int64_t* numels) {
  if (n_tensors < 0 || (n_tensors > 0 && !numels)) return -1;
  for (int64_t t = 0; t < n_tensors; ++t) {
    if (numels[t] < 0) return -1;
  }
  return deftx::kHeaderLength + deftx::kPerSegment * deftx::segment_count(numels, n_tensors);
}

// Selects the k entries of largest magnitude over `n_tensors` tensors (data[t]: `numels[t]`
// contiguous elements of dtype code dtypes[t]). Writes counts[t], the number of entries
// selected in tensor t (they sum to k), and the plan that deftx_topk_write executes into
// `workspace` (deftx_topk_workspace_size entries). Returns a Status code.
DEFTX_EXPORT int32_t deftx_topk_select(int64_t n_tensors, const void* const* data,
                                       const int32_t* dtypes, const int64_t* numels, int64_t k,
                                       int64_t* workspace, int64_t workspace_size,
                                       int64_t* counts) {
  try {
    return deftx::plan_selection({n_tensors, data, dtypes, numels}, k, workspace, workspace_size, counts);
  } catch (const std::bad_alloc&) {
    return deftx::kOutOfMemory;
  }
}

// Writes the ascending flat indices selected in tensor t to out[t] (counts[t] int64 entries,
// as returned by deftx_topk_select for the same tensors and workspace). Returns a Status code.
DEFTX_EXPORT int32_t deftx_topk_write(int64_t n_tensors, const void* const* data,
                                      const int32_t* dtypes, const int64_t* numels,
                                      const int64_t* workspace, int64_t workspace_size,
                                      int64_t* const* out) {
  try {
    return deftx::write_selection({n_tensors, data, dtypes, numels}, workspace, workspace_size, out);
  } catch (const std::bad_alloc&) {
    return deftx::kOutOfMemory;
  }
}
