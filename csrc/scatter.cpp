// Sparse scatter-add of several diffs into several dense tensors, with save and restore.
//
// For diffs d = 0, 1, ... in order and every entry j of diff d in tensor t, i = indices[d][t][j]:
//   dense[t][i] = cast(f32(dense[t][i]) + (f32(scale_d) * f32(values[d][t][j])))
// with two separately rounded fp32 operations (the library is compiled with
// -ffp-contract=off, so no fused multiply-add; subnormals kept on every thread, whatever the
// caller's flush mode) and a round-to-nearest-even cast to the dense dtype. Applying diffs together therefore equals applying them one after another, bit for
// bit.
//
// Each dense tensor's flat positions are cut into blocks of 2^16; a block owns its positions
// and applies, in diff order, every entry that falls in it (found by binary search in each
// sorted index list). No two threads touch the same position: no atomics, deterministic.
// Lists are addressed as [d * n_tensors + t].
#include <omp.h>

#include <cstdint>
#include <new>
#include <vector>

#include "common.h"

namespace deftx {
namespace {

constexpr int64_t kBlockLength = int64_t(1) << 16;

struct Dense {
  int64_t n_tensors;
  void* const* data;
  const int32_t* dtypes;
  const int64_t* numels;
};

// Diff d's entries of every tensor: list (d, t) is at position d * n_tensors + t.
struct Lists {
  int64_t n_diffs;
  const int64_t* const* indices;
  const int64_t* lengths;
};

// The flat positions [begin, end) of one dense tensor.
struct Block {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

// A block's entries [first, last) of one index list.
struct EntryRange {
  int64_t first;
  int64_t last;
};

int32_t validate(const Dense& dense, const Lists& lists) {
  if (dense.n_tensors < 0 || lists.n_diffs < 0) return kInvalidArgument;
  if (dense.n_tensors > 0 && (!dense.data || !dense.dtypes || !dense.numels)) {
    return kInvalidArgument;
  }
  if (dense.n_tensors > 0 && lists.n_diffs > 0 && (!lists.indices || !lists.lengths)) {
    return kInvalidArgument;
  }
  for (int64_t t = 0; t < dense.n_tensors; ++t) {
    if (!is_valid_dtype(dense.dtypes[t]) || dense.numels[t] < 0) return kInvalidArgument;
    if (dense.numels[t] > 0 && !dense.data[t]) return kInvalidArgument;
  }
  for (int64_t d = 0; d < lists.n_diffs; ++d) {
    for (int64_t t = 0; t < dense.n_tensors; ++t) {
      const int64_t list = d * dense.n_tensors + t;
      const int64_t length = lists.lengths[list];
      if (length < 0) return kInvalidArgument;
      if (length == 0) continue;
      const int64_t* indices = lists.indices[list];
      if (!indices) return kInvalidArgument;
      // Cheap range check of a sorted list; unsorted lists are caught while applying.
      if (indices[0] < 0 || indices[length - 1] >= dense.numels[t]) return kBadIndices;
    }
  }
  return kOk;
}

// Checks that every list (d, t) of positive length has a non-null pointer in `arrays`.
int32_t validate_arrays(const Dense& dense, const Lists& lists, const void* const* arrays) {
  if (dense.n_tensors > 0 && lists.n_diffs > 0 && !arrays) return kInvalidArgument;
  for (int64_t list = 0; list < lists.n_diffs * dense.n_tensors; ++list) {
    if (lists.lengths[list] > 0 && !arrays[list]) return kInvalidArgument;
  }
  return kOk;
}

// Blocks of every tensor that at least one list touches, in (tensor, position) order.
std::vector<Block> make_blocks(const Dense& dense, const Lists& lists) {
  std::vector<Block> blocks;
  for (int64_t t = 0; t < dense.n_tensors; ++t) {
    bool touched = false;
    for (int64_t d = 0; d < lists.n_diffs; ++d) touched |= lists.lengths[d * dense.n_tensors + t] > 0;
    if (!touched) continue;
    for (int64_t begin = 0; begin < dense.numels[t]; begin += kBlockLength) {
      const int64_t end = begin + kBlockLength < dense.numels[t] ? begin + kBlockLength : dense.numels[t];
      blocks.push_back({t, begin, end});
    }
  }
  return blocks;
}

// Position of the first entry >= bound in a sorted list; the tensor's first and last
// boundaries map to the list's ends, so the blocks' ranges cover every entry of any list.
int64_t boundary_entry(const int64_t* indices, int64_t length, int64_t bound, int64_t numel) {
  if (bound == 0) return 0;
  if (bound == numel) return length;
  int64_t lo = 0;
  int64_t hi = length;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (indices[mid] < bound) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

EntryRange entries_in_block(const Dense& dense, const Lists& lists, const Block& block, int64_t d) {
  const int64_t list = d * dense.n_tensors + block.tensor;
  const int64_t length = lists.lengths[list];
  if (length == 0) return {0, 0};
  const int64_t* indices = lists.indices[list];
  const int64_t numel = dense.numels[block.tensor];
  return {boundary_entry(indices, length, block.begin, numel),
          boundary_entry(indices, length, block.end, numel)};
}

// dense[i] = cast(f32(dense[i]) + scale * f32(value)) for the block's entries of one list.
// Returns false if an entry lies outside the block (the list was not sorted).
template <typename DenseElement, typename ValueElement>
bool add_entries(typename DenseElement::Storage* dense, const int64_t* indices,
                 const typename ValueElement::Storage* values, EntryRange range,
                 const Block& block, float scale) {
  bool inside = true;
  for (int64_t j = range.first; j < range.last; ++j) {
    const int64_t i = indices[j];
    if (i < block.begin || i >= block.end) {
      inside = false;
      continue;
    }
    const float product = scale * ValueElement::to_float(values[j]);
    const float sum = DenseElement::to_float(dense[i]) + product;
    dense[i] = DenseElement::from_float(sum);
  }
  return inside;
}

// Copies dense[indices[j]] to saved[j] (gather) or saved[j] to dense[indices[j]] (restore)
// for the block's entries of one list. Returns false if an entry lies outside the block.
template <bool kGather, typename Storage>
bool copy_entries(Storage* dense, const int64_t* indices, Storage* saved, EntryRange range,
                  const Block& block) {
  bool inside = true;
  for (int64_t j = range.first; j < range.last; ++j) {
    const int64_t i = indices[j];
    if (i < block.begin || i >= block.end) {
      inside = false;
    } else if (kGather) {
      saved[j] = dense[i];
    } else {
      dense[i] = saved[j];
    }
  }
  return inside;
}

template <bool kGather>
bool copy_block(const Dense& dense, const Lists& lists, void* const* saved, const Block& block) {
  bool inside = true;
  dispatch_dtype(dense.dtypes[block.tensor], [&](auto element) {
    using Storage = typename decltype(element)::Storage;
    Storage* target = static_cast<Storage*>(dense.data[block.tensor]);
    for (int64_t d = 0; d < lists.n_diffs; ++d) {
      const int64_t list = d * dense.n_tensors + block.tensor;
      const EntryRange range = entries_in_block(dense, lists, block, d);
      if (range.first >= range.last) continue;
      inside &= copy_entries<kGather>(target, lists.indices[list],
                                      static_cast<Storage*>(saved[list]), range, block);
    }
  });
  return inside;
}

bool add_block(const Dense& dense, const Lists& lists, const void* const* values,
               const int32_t* value_dtypes, const float* scales, const Block& block) {
  bool inside = true;
  dispatch_dtype(dense.dtypes[block.tensor], [&](auto dense_element) {
    using DenseElement = decltype(dense_element);
    auto* target = static_cast<typename DenseElement::Storage*>(dense.data[block.tensor]);
    for (int64_t d = 0; d < lists.n_diffs; ++d) {
      const int64_t list = d * dense.n_tensors + block.tensor;
      const EntryRange range = entries_in_block(dense, lists, block, d);
      if (range.first >= range.last) continue;
      dispatch_dtype(value_dtypes[list], [&](auto value_element) {
        using ValueElement = decltype(value_element);
        inside &= add_entries<DenseElement, ValueElement>(
            target, lists.indices[list],
            static_cast<const typename ValueElement::Storage*>(values[list]), range, block,
            scales[d]);
      });
    }
  });
  return inside;
}

int32_t scatter_add(const Dense& dense, const Lists& lists, const void* const* values,
                    const int32_t* value_dtypes, const float* scales, void* const* saved) {
  if (const int32_t status = validate(dense, lists); status != kOk) return status;
  if (const int32_t status = validate_arrays(dense, lists, values); status != kOk) return status;
  if (saved) {
    if (const int32_t status = validate_arrays(dense, lists, saved); status != kOk) return status;
  }
  if (dense.n_tensors > 0 && lists.n_diffs > 0 && (!value_dtypes || !scales)) {
    return kInvalidArgument;
  }
  for (int64_t list = 0; list < lists.n_diffs * dense.n_tensors; ++list) {
    if (lists.lengths[list] > 0 && !is_valid_dtype(value_dtypes[list])) return kInvalidArgument;
  }
  const std::vector<Block> blocks = make_blocks(dense, lists);
  const int64_t n_blocks = int64_t(blocks.size());
  int outside = 0;
#pragma omp parallel reduction(| : outside)
  {
    const SubnormalsKept subnormals_kept;
#pragma omp for schedule(dynamic, 8)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const Block& block = blocks[size_t(b)];
      bool inside = true;
      if (saved) inside &= copy_block<true>(dense, lists, saved, block);
      inside &= add_block(dense, lists, values, value_dtypes, scales, block);
      outside |= int(!inside);
    }
  }
  return outside ? kBadIndices : kOk;
}

int32_t scatter_restore(const Dense& dense, const Lists& lists, void* const* saved) {
  if (const int32_t status = validate(dense, lists); status != kOk) return status;
  if (const int32_t status = validate_arrays(dense, lists, saved); status != kOk) return status;
  const std::vector<Block> blocks = make_blocks(dense, lists);
  const int64_t n_blocks = int64_t(blocks.size());
  int outside = 0;
#pragma omp parallel for schedule(dynamic, 8) reduction(| : outside)
  for (int64_t b = 0; b < n_blocks; ++b) {
    outside |= int(!copy_block<false>(dense, lists, saved, blocks[size_t(b)]));
  }
  return outside ? kBadIndices : kOk;
}

}  // namespace
}  // namespace deftx

// Adds n_diffs sparse diffs to n_tensors dense tensors in place (see the top of this file).
// dense[t]: numels[t] contiguous elements of dtype code dense_dtypes[t]. List (d, t), at
// d * n_tensors + t: lengths[...] sorted unique int64 flat indices in indices[...] and as many
// values of dtype code value_dtypes[...] in values[...]; scales[d] multiplies diff d. If
// `saved` is non-null, saved[...] (dense dtype, lengths[...] elements) receives the values of
// dense[t] at the list's indices before any diff is added. Returns a Status code; on
// kBadIndices (an unsorted list) the entries inside their blocks have been applied.
DEFTX_EXPORT int32_t deftx_scatter_add(int64_t n_tensors, void* const* dense,
                                       const int32_t* dense_dtypes, const int64_t* numels,
                                       int64_t n_diffs, const int64_t* const* indices,
                                       const int64_t* lengths, const void* const* values,
                                       const int32_t* value_dtypes, const float* scales,
                                       void* const* saved) {
  try {
    return deftx::scatter_add({n_tensors, dense, dense_dtypes, numels}, {n_diffs, indices, lengths},
                              values, value_dtypes, scales, saved);
  } catch (const std::bad_alloc&) {
    return deftx::kOutOfMemory;
  }
}

// Writes saved[d * n_tensors + t] (dense dtype) back at indices[d * n_tensors + t] of dense[t],
// undoing deftx_scatter_add bit for bit. Returns a Status code.
DEFTX_EXPORT int32_t deftx_scatter_restore(int64_t n_tensors, void* const* dense,
                                           const int32_t* dense_dtypes, const int64_t* numels,
                                           int64_t n_diffs, const int64_t* const* indices,
                                           const int64_t* lengths, void* const* saved) {
  try {
    return deftx::scatter_restore({n_tensors, dense, dense_dtypes, numels},
                                  {n_diffs, indices, lengths}, saved);
  } catch (const std::bad_alloc&) {
    return deftx::kOutOfMemory;
  }
}
