// Global magnitude top-k over many tensors (fp32 / bf16 / fp16, mixed in one call), without
// concatenating them, optionally of the differences to base tensors (never materialised).
//
// Score of an entry: its key, the fp32 bit pattern of |x| (sign bit cleared) read as an
// unsigned integer. With a base b the score is |d| with d = fl32(f32(x) - f32(b)): both
// operands widened exactly to fp32, one IEEE fp32 subtraction rounded to nearest even,
// subnormals kept. The key is monotone in the score for every non-NaN value, maps -0.0 and
// +0.0 to the same key and puts inf on top (a NaN ranks above inf and is counted); fp16 and
// bf16 entries are widened exactly, so entries of different dtypes compare by exact value.
//
// Selection (one call):
//   1. full pass: histogram of key >> 15 (2^16 bins) and the NaN count; the bin H holding the
//      k-th largest key, the number of keys above it and the number still to take from it.
//   2. full pass, per segment: the offsets of the keys above bin H (certain) and, packed with
//      their low 15 key bits, of the keys in bin H (candidates), in index order, into
//      per-thread lists. Only the candidates are looked at again:
//   3. histogram of the candidates' low bits: the threshold key T and how many keys equal to
//      T are taken; per segment, the number of candidates above T and equal to T; an
//      exclusive prefix in (tensor, flat index) order gives every segment its share of the
//      ties and its output offset.
//   4. every segment merges its certain offsets with its chosen candidates into the output.
// When bin H holds more keys than the candidate capacity (many equal keys, say), step 2
// instead histograms the low bits of bin H's keys (a full pass), and two more full passes count
// and then write each segment's keys above and equal to T: four full passes, never an extra
// buffer larger than the output.
//
// Work is split into segments of at most 2^16 elements of one tensor (so an offset in a
// segment fits 16 bits); the segments of all tensors form one list that a single OpenMP loop
// distributes, so tensors of any size share the threads. Histograms are per thread and merged
// with integer sums, and every list is read in segment order: the result does not depend on
// the thread count.
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
constexpr uint32_t kInfKey = 0x7F800000u;
// Keys are computed a chunk at a time into a small array, a loop the compiler vectorises,
// before the scalar histogram updates (1.5 -> 0.95 ns per fp32 element and base, one core).
constexpr int64_t kChunk = 256;
// The partition pass computes keys in chunks of 32 and skips a chunk with no key in or above
// the threshold bin (about 70% of them at k = 1%).
constexpr int64_t kScanChunk = 32;

// Candidates kept in lists at most, by default: max(2^22, k / 2). A candidate takes 4 bytes
// and a certain entry (at most k) 2, so the lists never exceed 16 MiB + 4k bytes, half the
// output's 8k bytes beyond 16 MiB.
constexpr int64_t kMinCandidateCapacity = int64_t(1) << 22;

struct Inputs {
  int64_t n_tensors;
  const void* const* data;
  const void* const* bases;  // null, or per tensor null (no base) or the base's elements
  const int32_t* dtypes;
  const int64_t* numels;
  const int64_t* starts;  // null, or per tensor the value added to its flat indices
};

// A range [begin, end) of the flat entries of one tensor.
struct Segment {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

inline uint32_t magnitude_key(float x) { return float_bits(x) & 0x7FFFFFFFu; }

// Key of entry i of a tensor of element type D (no base), from its bit pattern.
template <int32_t D>
struct ValueKeys;

template <>
struct ValueKeys<kFloat32> {
  const uint32_t* bits;
  uint32_t operator()(int64_t i) const { return bits[i] & 0x7FFFFFFFu; }
};

template <>
struct ValueKeys<kBFloat16> {
  const uint16_t* bits;
  uint32_t operator()(int64_t i) const { return bf16_to_f32_bits(uint16_t(bits[i] & 0x7FFFu)); }
};

template <>
struct ValueKeys<kFloat16> {
  const uint16_t* bits;
  uint32_t operator()(int64_t i) const { return f16_to_f32_bits(uint16_t(bits[i] & 0x7FFFu)); }
};

// Key of |fl32(f32(x[i]) - f32(base[i]))| for element type D.
template <int32_t D>
struct DifferenceKeys {
  using Storage = typename Element<D>::Storage;
  const Storage* x;
  const Storage* base;
  uint32_t operator()(int64_t i) const {
    return magnitude_key(Element<D>::to_float(x[i]) - Element<D>::to_float(base[i]));
  }
};

// Calls `fn(keys)` with the keys of element type D: of x, or of x - base when base is set.
template <int32_t D, typename Fn>
void with_typed_keys(const void* x, const void* base, Fn&& fn) {
  using Storage = typename Element<D>::Storage;
  const Storage* values = static_cast<const Storage*>(x);
  if (base) {
    // Every pass must see the same difference keys, or passes disagree on the counts they
    // write by.
    const SubnormalsKept subnormals_kept;
    fn(DifferenceKeys<D>{values, static_cast<const Storage*>(base)});
  } else {
    fn(ValueKeys<D>{values});
  }
}

// Calls `fn(keys)` with `keys(i)` the key of entry i of tensor `t`.
template <typename Fn>
void with_keys(const Inputs& in, int64_t t, Fn&& fn) {
  const void* base = in.bases ? in.bases[t] : nullptr;
  switch (in.dtypes[t]) {
    case kFloat32: with_typed_keys<kFloat32>(in.data[t], base, fn); break;
    case kBFloat16: with_typed_keys<kBFloat16>(in.data[t], base, fn); break;
    default: with_typed_keys<kFloat16>(in.data[t], base, fn); break;
  }
}

int32_t validate(const Inputs& in, int64_t k, int64_t* total) {
  if (in.n_tensors < 0) return kInvalidArgument;
  if (in.n_tensors > 0 && (!in.data || !in.dtypes || !in.numels)) return kInvalidArgument;
  *total = 0;
  for (int64_t t = 0; t < in.n_tensors; ++t) {
    if (in.numels[t] < 0 || !is_valid_dtype(in.dtypes[t])) return kInvalidArgument;
    if (in.numels[t] > 0 && !in.data[t]) return kInvalidArgument;
    *total += in.numels[t];
  }
  if (k < 0 || k > *total) return kInvalidArgument;
  return kOk;
}

// Segments of all tensors in (tensor, flat index) order.
std::vector<Segment> make_segments(const Inputs& in) {
  std::vector<Segment> segments;
  for (int64_t t = 0; t < in.n_tensors; ++t) {
    for (int64_t begin = 0; begin < in.numels[t]; begin += kSegmentLength) {
      segments.push_back({t, begin, std::min(begin + kSegmentLength, in.numels[t])});
    }
  }
  return segments;
}

// Sum of the per-thread histograms `per_thread` (threads x bins).
std::vector<uint64_t> merge_histograms(const std::vector<uint64_t>& per_thread, size_t bins) {
  std::vector<uint64_t> merged(per_thread.begin(), per_thread.begin() + int64_t(bins));
  for (size_t offset = bins; offset < per_thread.size(); offset += bins) {
    for (size_t b = 0; b < bins; ++b) merged[b] += per_thread[offset + b];
  }
  return merged;
}

// Calls `visit(first, count, chunk)` for each run of at most `Chunk` entries of `seg`, in order,
// with chunk[j] the key of entry first + j (the keys computed by one vectorisable loop).
template <int64_t Chunk, typename Visit>
void for_key_chunks(const Inputs& in, const Segment& seg, Visit&& visit) {
  with_keys(in, seg.tensor, [&](auto keys) {
    uint32_t chunk[Chunk];
    for (int64_t first = seg.begin; first < seg.end; first += Chunk) {
      const int64_t count = std::min(Chunk, seg.end - first);
      for (int64_t j = 0; j < count; ++j) chunk[j] = keys(first + j);
      visit(first, count, chunk);
    }
  });
}

// Full pass: histogram of key >> kLowBits over every key, and the number of NaN keys.
std::vector<uint64_t> high_histogram(const Inputs& in, const std::vector<Segment>& segments,
                                     int64_t* nan_count) {
  const int threads = omp_get_max_threads();
  std::vector<uint64_t> per_thread(size_t(threads) * kHighBins, 0);
  const int64_t n_segments = int64_t(segments.size());
  int64_t nans = 0;
#pragma omp parallel num_threads(threads) reduction(+ : nans)
  {
    uint64_t* hist = per_thread.data() + size_t(omp_get_thread_num()) * kHighBins;
#pragma omp for schedule(dynamic, 4)
    for (int64_t s = 0; s < n_segments; ++s) {
      const Segment seg = segments[size_t(s)];
      for_key_chunks<kChunk>(in, seg, [&](int64_t, int64_t count, const uint32_t* chunk) {
        uint32_t chunk_nans = 0;
        for (int64_t j = 0; j < count; ++j) chunk_nans += chunk[j] > kInfKey;
        for (int64_t j = 0; j < count; ++j) ++hist[chunk[j] >> kLowBits];
        nans += chunk_nans;
      });
    }
  }
  *nan_count = nans;
  return merge_histograms(per_thread, kHighBins);
}

// Full pass: histogram of the low bits of the keys whose high bits equal `high`.
std::vector<uint64_t> low_histogram(const Inputs& in, const std::vector<Segment>& segments,
                                    uint32_t high) {
  const int threads = omp_get_max_threads();
  std::vector<uint64_t> per_thread(size_t(threads) * kLowBins, 0);
  const int64_t n_segments = int64_t(segments.size());
#pragma omp parallel num_threads(threads)
  {
    uint64_t* hist = per_thread.data() + size_t(omp_get_thread_num()) * kLowBins;
#pragma omp for schedule(dynamic, 4)
    for (int64_t s = 0; s < n_segments; ++s) {
      const Segment seg = segments[size_t(s)];
      with_keys(in, seg.tensor, [&](auto keys) {
        for (int64_t i = seg.begin; i < seg.end; ++i) {
          const uint32_t key = keys(i);
          if ((key >> kLowBits) == high) ++hist[key & kLowMask];
        }
      });
    }
  }
  return merge_histograms(per_thread, kLowBins);
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

// What every segment selects: `above` keys above the threshold, then `ties` of its keys
// equal to it, written from `offset` of the output.
struct SegmentShare {
  int64_t above = 0;
  int64_t equal = 0;
  int64_t ties = 0;
  int64_t offset = 0;
};

// Deals the ties in segment order (the lowest (tensor, flat index) win) and gives every
// segment its output offset and every tensor its count.
void share_out(std::vector<SegmentShare>& shares, const std::vector<Segment>& segments, int64_t k,
               int64_t* counts, int64_t n_tensors) {
  int64_t ties_left = k;
  for (const SegmentShare& share : shares) ties_left -= share.above;
  std::fill(counts, counts + n_tensors, 0);
  int64_t offset = 0;
  for (size_t s = 0; s < shares.size(); ++s) {
    SegmentShare& share = shares[s];
    share.ties = std::min(ties_left, share.equal);
    ties_left -= share.ties;
    share.offset = offset;
    const int64_t selected = share.above + share.ties;
    offset += selected;
    counts[segments[s].tensor] += selected;
  }
}

int64_t index_start(const Inputs& in, int64_t t) { return in.starts ? in.starts[t] : 0; }

// The two lists the partition pass writes: per thread, the offsets of the certain entries
// and the packed (offset << 16 | low key bits) candidates, with every segment's spans.
struct Partition {
  struct Span {
    int thread;
    int64_t certain_begin, certain_end, candidate_begin, candidate_end;
  };
  std::vector<std::vector<uint16_t>> certain;
  std::vector<std::vector<uint32_t>> candidates;
  std::vector<Span> spans;
};

// Full pass: every key above bin `high` is certain, every key in it a candidate. The lists
// grow inside the parallel region, where an exception must not escape (it would terminate the
// process): a failed allocation is caught there and thrown again after the region.
Partition partition(const Inputs& in, const std::vector<Segment>& segments, uint32_t high) {
  const int threads = omp_get_max_threads();
  Partition parts{std::vector<std::vector<uint16_t>>(size_t(threads)),
                  std::vector<std::vector<uint32_t>>(size_t(threads)),
                  std::vector<Partition::Span>(segments.size())};
  const int64_t n_segments = int64_t(segments.size());
  const uint32_t lowest = high << kLowBits;
  int out_of_memory = 0;
#pragma omp parallel num_threads(threads) reduction(| : out_of_memory)
  {
    const int thread = omp_get_thread_num();
    std::vector<uint16_t>& certain = parts.certain[size_t(thread)];
    std::vector<uint32_t>& candidates = parts.candidates[size_t(thread)];
#pragma omp for schedule(dynamic, 4)
    for (int64_t s = 0; s < n_segments; ++s) {
      if (out_of_memory) continue;  // this thread's lists are incomplete: the call fails anyway
      const Segment seg = segments[size_t(s)];
      Partition::Span& span = parts.spans[size_t(s)];
      span.thread = thread;
      span.certain_begin = int64_t(certain.size());
      span.candidate_begin = int64_t(candidates.size());
      try {
        for_key_chunks<kScanChunk>(in, seg, [&](int64_t first, int64_t count, const uint32_t* chunk) {
          uint32_t hits = 0;
          for (int64_t j = 0; j < count; ++j) hits |= uint32_t(chunk[j] >= lowest);
          if (!hits) return;
          for (int64_t j = 0; j < count; ++j) {
            const uint32_t key = chunk[j];
            if (key < lowest) continue;
            const uint32_t offset = uint32_t(first + j - seg.begin);
            if ((key >> kLowBits) > high) {
              certain.push_back(uint16_t(offset));
            } else {
              candidates.push_back((offset << 16) | (key & kLowMask));
            }
          }
        });
      } catch (const std::bad_alloc&) {
        out_of_memory = 1;
      }
      span.certain_end = int64_t(certain.size());
      span.candidate_end = int64_t(candidates.size());
    }
  }
  if (out_of_memory) throw std::bad_alloc();
  return parts;
}

// Histogram of the candidates' low key bits: every list is counted into its own histogram by
// a loop over the lists, not by the thread that wrote it, so no list is left out when this
// region's team is smaller than the partition's (OMP_DYNAMIC sizes each team on its own).
std::vector<uint64_t> candidate_histogram(const Partition& parts) {
  const int64_t lists = int64_t(parts.candidates.size());
  std::vector<uint64_t> per_list(size_t(lists) * kLowBins, 0);
#pragma omp parallel for schedule(static, 1)
  for (int64_t list = 0; list < lists; ++list) {
    uint64_t* hist = per_list.data() + size_t(list) * kLowBins;
    for (uint32_t packed : parts.candidates[size_t(list)]) ++hist[packed & kLowMask];
  }
  return merge_histograms(per_list, kLowBins);
}

// Steps 3 and 4 of the selection over the lists of `parts`.
void select_from_candidates(const Inputs& in, const std::vector<Segment>& segments, const Partition& parts,
                            uint64_t need, int64_t k, int64_t* out, int64_t* counts) {
  uint64_t above_low = 0;
  const uint32_t low = bin_of_rank(candidate_histogram(parts), need, &above_low);
  const int64_t n_segments = int64_t(segments.size());
  std::vector<SegmentShare> shares(segments.size());
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t s = 0; s < n_segments; ++s) {
    const Partition::Span& span = parts.spans[size_t(s)];
    const uint32_t* candidates = parts.candidates[size_t(span.thread)].data();
    int64_t above = span.certain_end - span.certain_begin;
    int64_t equal = 0;
    for (int64_t c = span.candidate_begin; c < span.candidate_end; ++c) {
      const uint32_t bits = candidates[c] & kLowMask;
      above += bits > low;
      equal += bits == low;
    }
    shares[size_t(s)].above = above;
    shares[size_t(s)].equal = equal;
  }
  share_out(shares, segments, k, counts, in.n_tensors);
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t s = 0; s < n_segments; ++s) {
    const Partition::Span& span = parts.spans[size_t(s)];
    const uint16_t* certain = parts.certain[size_t(span.thread)].data();
    const uint32_t* candidates = parts.candidates[size_t(span.thread)].data();
    const int64_t first = segments[size_t(s)].begin + index_start(in, segments[size_t(s)].tensor);
    int64_t* dst = out + shares[size_t(s)].offset;
    int64_t ties = shares[size_t(s)].ties;
    int64_t a = span.certain_begin;
    for (int64_t c = span.candidate_begin; c < span.candidate_end; ++c) {
      const uint32_t bits = candidates[c] & kLowMask;
      const bool chosen = bits > low || (bits == low && ties > 0);
      if (!chosen) continue;
      ties -= bits == low;
      const int64_t offset = candidates[c] >> 16;
      for (; a < span.certain_end && certain[a] < offset; ++a) *dst++ = first + certain[a];
      *dst++ = first + offset;
    }
    for (; a < span.certain_end; ++a) *dst++ = first + certain[a];
  }
}

// Per segment, the number of keys greater than and equal to `threshold` (a full pass).
std::vector<SegmentShare> count_segments(const Inputs& in, const std::vector<Segment>& segments,
                                         uint32_t threshold) {
  std::vector<SegmentShare> shares(segments.size());
  const int64_t n_segments = int64_t(segments.size());
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t s = 0; s < n_segments; ++s) {
    const Segment seg = segments[size_t(s)];
    with_keys(in, seg.tensor, [&](auto keys) {
      int64_t above = 0;
      int64_t equal = 0;
      for (int64_t i = seg.begin; i < seg.end; ++i) {
        const uint32_t key = keys(i);
        above += key > threshold;
        equal += key == threshold;
      }
      shares[size_t(s)].above = above;
      shares[size_t(s)].equal = equal;
    });
  }
  return shares;
}

// Steps 2-4 without lists: the exact threshold from a low-bits histogram of bin `high`, then
// a counting pass and a writing pass over all segments.
void select_by_passes(const Inputs& in, const std::vector<Segment>& segments, uint32_t high,
                      uint64_t need, int64_t k, int64_t* out, int64_t* counts) {
  uint64_t above_low = 0;
  const uint32_t low = bin_of_rank(low_histogram(in, segments, high), need, &above_low);
  const uint32_t threshold = (high << kLowBits) | low;
  std::vector<SegmentShare> shares = count_segments(in, segments, threshold);
  share_out(shares, segments, k, counts, in.n_tensors);
  const int64_t n_segments = int64_t(segments.size());
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t s = 0; s < n_segments; ++s) {
    const Segment seg = segments[size_t(s)];
    const int64_t first = index_start(in, seg.tensor);
    int64_t* dst = out + shares[size_t(s)].offset;
    int64_t ties = shares[size_t(s)].ties;
    with_keys(in, seg.tensor, [&](auto keys) {
      for (int64_t i = seg.begin; i < seg.end; ++i) {
        const uint32_t key = keys(i);
        if (key > threshold || (key == threshold && ties > 0)) {
          ties -= key == threshold;
          *dst++ = first + i;
        }
      }
    });
  }
}

int32_t select(const Inputs& in, int64_t k, int64_t capacity, int64_t* out, int64_t* counts,
               int64_t* nan_count, int64_t* full_passes) {
  int64_t total = 0;
  if (const int32_t status = validate(in, k, &total); status != kOk) return status;
  if (!nan_count || !full_passes || (in.n_tensors > 0 && !counts) || (k > 0 && !out)) {
    return kInvalidArgument;
  }
  std::fill(counts, counts + in.n_tensors, 0);
  *nan_count = 0;
  *full_passes = 0;
  const std::vector<Segment> segments = make_segments(in);
  if (segments.empty()) return kOk;
  const std::vector<uint64_t> high_hist = high_histogram(in, segments, nan_count);
  *full_passes = 1;
  if (k == 0) return kOk;
  uint64_t above = 0;
  const uint32_t high = bin_of_rank(high_hist, uint64_t(k), &above);
  const uint64_t need = uint64_t(k) - above;
  if (capacity < 0) capacity = std::max(kMinCandidateCapacity, k / 2);
  if (int64_t(high_hist[high]) <= capacity) {
    const Partition parts = partition(in, segments, high);
    select_from_candidates(in, segments, parts, need, k, out, counts);
    *full_passes = 2;
  } else {
    select_by_passes(in, segments, high, need, k, out, counts);
    *full_passes = 4;
  }
  return kOk;
}

}  // namespace
}  // namespace deftx

// Selects the k entries of largest score over `n_tensors` tensors: data[t] holds numels[t]
// contiguous elements of dtype code dtypes[t]; the score is |x|, or |fl32(f32(x) - f32(b))|
// where bases is non-null and bases[t] non-null (numels[t] elements of the same dtype). Among
// entries tied at the k-th largest score, the lowest (tensor, flat index) are taken.
// Writes to `out` (k int64) every tensor's selected flat indices, ascending, plus starts[t]
// when `starts` is non-null, in tensor order; counts[t], the number of them in tensor t;
// *nan_count, the number of NaN scores (the selection then means nothing); *full_passes, the
// number of passes over all elements it made (2, or 4 when the threshold's bin held more than
// `candidate_capacity` keys; a negative capacity means the default). Returns a Status code.
DEFTX_EXPORT int32_t deftx_topk_select(int64_t n_tensors, const void* const* data, const void* const* bases,
                                       const int32_t* dtypes, const int64_t* numels, const int64_t* starts,
                                       int64_t k, int64_t candidate_capacity, int64_t* out, int64_t* counts,
                                       int64_t* nan_count, int64_t* full_passes) {
  try {
    return deftx::select({n_tensors, data, bases, dtypes, numels, starts}, k, candidate_capacity, out, counts,
                         nan_count, full_passes);
  } catch (const std::bad_alloc&) {
    return deftx::kOutOfMemory;
  }
}
