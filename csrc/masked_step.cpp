// Masked AdamW step of sparse retraining: the optimizer reads and writes only the K_t
// selected entries of each parameter tensor t; its fp32 state lives in (K_t,) arrays.
//
// For every tensor t and entry j, with i = indices[t][j], in fp32 and in this order:
//   g      = f32(grad[i])
//   g      = g + l1 * sign(master[j] - base[j])        (only when bases are given)
//   m      = exp_avg[j] * beta1 + one_minus_beta1 * g
//   v      = exp_avg_sq[j] * beta2 + (one_minus_beta2 * g) * g
//   w      = master[j] * decay                           (decay = 1 - lr * weight_decay)
//   w      = w - (lr * (m / bias1)) / (sqrt(v / bias2) + eps)
//   master[j], exp_avg[j], exp_avg_sq[j] = w, m, v ;  param[i] = cast(w)
// Every operation is one IEEE fp32 operation rounded to nearest even (compiled with
// -ffp-contract=off: no fused multiply-add; division and sqrt correctly rounded; subnormals
// kept on every thread, whatever the caller's flush mode),
// sign(0) = sign(NaN) = 0, and the cast to bf16 / fp16 rounds to nearest even. This is the
// operation sequence of the torch reference (deftx/ops/reference/masked_step.py) with its
// Python scalars rounded to fp32, and of the Triton kernel (div_rn, sqrt_rn). One known
// difference: torch's CPU sqrt on vectorised lengths (MKL) is not always correctly rounded
// (up to 1 ulp off), so masters can differ from the torch reference's by rounding-level
// amounts; the moments are identical.
//
// Work: each tensor's entries are cut into chunks of at most 2^14; the chunks of all tensors
// form one list that OpenMP loops distribute, so small tensors do not serialise and large
// ones share the threads. A first loop checks that every index list is sorted, unique and in
// range, so nothing is written when one is not; the second applies the step. Entries are
// independent and a tensor's indices are unique, so no two threads write the same element:
// no atomics, and the result does not depend on the thread count. Nothing outside the
// indices is read or written.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <new>
#include <vector>

#include "common.h"

namespace deftx {
namespace {

constexpr int64_t kChunkLength = int64_t(1) << 14;

// Positions in the `scalars` array of the C ABI (mirrored in deftx/ops/native/masked_step.py).
enum Scalar : int32_t {
  kBeta1 = 0,
  kOneMinusBeta1,
  kBeta2,
  kOneMinusBeta2,
  kDecay,
  kLr,
  kBias1,
  kBias2,
  kEps,
  kL1,
};

struct Hyper {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, decay, lr, bias1, bias2, eps, l1;
};

// Per tensor t: the parameter and gradient (dtypes[t], numels[t] elements), the counts[t]
// selected flat indices and the fp32 state at them (bases null: no L1 pull).
struct Tensors {
  int64_t n_tensors;
  void* const* params;
  const void* const* grads;
  const int32_t* dtypes;
  const int64_t* numels;
  const int64_t* const* indices;
  const int64_t* counts;
  float* const* masters;
  float* const* exp_avgs;
  float* const* exp_avg_sqs;
  const float* const* bases;
};

// Entries [begin, end) of tensor `tensor`'s K space.
struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

Hyper read_hyper(const float* scalars) {
  return {scalars[kBeta1], scalars[kOneMinusBeta1], scalars[kBeta2], scalars[kOneMinusBeta2],
          scalars[kDecay],  scalars[kLr],           scalars[kBias1], scalars[kBias2],
          scalars[kEps],   scalars[kL1]};
}

int32_t validate_arguments(const Tensors& in, const float* scalars) {
  if (in.n_tensors < 0 || !scalars) return kInvalidArgument;
  if (in.n_tensors == 0) return kOk;
  if (!in.params || !in.grads || !in.dtypes || !in.numels || !in.indices || !in.counts ||
      !in.masters || !in.exp_avgs || !in.exp_avg_sqs) {
    return kInvalidArgument;
  }
  for (int64_t t = 0; t < in.n_tensors; ++t) {
    if (!is_valid_dtype(in.dtypes[t]) || in.numels[t] < 0 || in.counts[t] < 0) return kInvalidArgument;
    if (in.counts[t] == 0) continue;
    if (!in.params[t] || !in.grads[t] || !in.indices[t] || !in.masters[t] || !in.exp_avgs[t] ||
        !in.exp_avg_sqs[t] || (in.bases && !in.bases[t])) {
      return kInvalidArgument;
    }
  }
  return kOk;
}

std::vector<Chunk> make_chunks(const Tensors& in) {
  std::vector<Chunk> chunks;
  for (int64_t t = 0; t < in.n_tensors; ++t) {
    for (int64_t begin = 0; begin < in.counts[t]; begin += kChunkLength) {
      const int64_t end = begin + kChunkLength < in.counts[t] ? begin + kChunkLength : in.counts[t];
      chunks.push_back({t, begin, end});
    }
  }
  return chunks;
}

// True if the chunk's indices are in [0, numel) and each exceeds the one before it (the
// entry before the chunk included), i.e. the tensor's list is sorted, unique and in range.
bool chunk_indices_valid(const Tensors& in, const Chunk& chunk) {
  const int64_t* index = in.indices[chunk.tensor];
  int64_t previous = chunk.begin > 0 ? index[chunk.begin - 1] : -1;
  bool valid = true;
  for (int64_t j = chunk.begin; j < chunk.end; ++j) {
    valid &= index[j] > previous;
    previous = index[j];
  }
  return valid && previous < in.numels[chunk.tensor];
}

// 1, -1 or 0 (for +-0 and NaN), like torch.sign.
inline float sign_of(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }

// The step on the chunk's entries (formula at the top of this file): one pass that gathers
// each gradient, updates the entry's state and scatters the rounded master into the
// parameter (interleaving the scattered accesses with the arithmetic keeps more of them
// in flight than separate gather / compute / scatter passes).
template <typename E, bool kL1>
void update_chunk(const Tensors& in, const Chunk& chunk, const Hyper& h) {
  const int64_t t = chunk.tensor;
  auto* param = static_cast<typename E::Storage*>(in.params[t]);
  const auto* grad = static_cast<const typename E::Storage*>(in.grads[t]);
  const int64_t* index = in.indices[t];
  float* master = in.masters[t];
  float* exp_avg = in.exp_avgs[t];
  float* exp_avg_sq = in.exp_avg_sqs[t];
  const float* base = kL1 ? in.bases[t] : nullptr;
  for (int64_t j = chunk.begin; j < chunk.end; ++j) {
    const int64_t i = index[j];
    float g = E::to_float(grad[i]);
    if (kL1) g = g + h.l1 * sign_of(master[j] - base[j]);
    const float m = exp_avg[j] * h.beta1 + h.one_minus_beta1 * g;
    const float v = exp_avg_sq[j] * h.beta2 + (h.one_minus_beta2 * g) * g;
    const float decayed = master[j] * h.decay;
    const float update = (h.lr * (m / h.bias1)) / (std::sqrt(v / h.bias2) + h.eps);
    const float w = decayed - update;
    exp_avg[j] = m;
    exp_avg_sq[j] = v;
    master[j] = w;
    param[i] = E::from_float(w);
  }
}

void run_chunk(const Tensors& in, const Chunk& chunk, const Hyper& h) {
  dispatch_dtype(in.dtypes[chunk.tensor], [&](auto element) {
    using E = decltype(element);
    if (in.bases) {
      update_chunk<E, true>(in, chunk, h);
    } else {
      update_chunk<E, false>(in, chunk, h);
    }
  });
}

int32_t masked_adamw_step(const Tensors& in, const float* scalars) {
  if (const int32_t status = validate_arguments(in, scalars); status != kOk) return status;
  const Hyper h = read_hyper(scalars);
  const std::vector<Chunk> chunks = make_chunks(in);
  const int64_t n_chunks = int64_t(chunks.size());
  int invalid = 0;
#pragma omp parallel if (n_chunks > 1)
  {
    const SubnormalsKept subnormals_kept;
#pragma omp for schedule(dynamic, 1) reduction(| : invalid)
    for (int64_t c = 0; c < n_chunks; ++c) {
      invalid |= int(!chunk_indices_valid(in, chunks[size_t(c)]));
    }
    if (!invalid) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t c = 0; c < n_chunks; ++c) run_chunk(in, chunks[size_t(c)], h);
    }
  }
  return invalid ? kBadIndices : kOk;
}

}  // namespace
}  // namespace deftx

// One AdamW step on the selected entries of n_tensors parameters, in place (see the top of
// this file). Per tensor t: params[t] and grads[t] hold numels[t] contiguous elements of
// dtype code dtypes[t]; indices[t] holds counts[t] sorted unique int64 flat indices; masters[t],
// exp_avgs[t], exp_avg_sqs[t] are fp32 arrays of counts[t] entries, updated in place; bases
// is null (no L1 pull) or bases[t] holds counts[t] fp32 anchors. scalars holds, in order,
// beta1, 1 - beta1, beta2, 1 - beta2, 1 - lr * weight_decay, lr, 1 - beta1^step,
// 1 - beta2^step, eps, l1. Returns a Status code; on kBadIndices (a list not sorted, not
// unique or out of range) nothing has been written.
DEFTX_EXPORT int32_t deftx_masked_adamw_step(int64_t n_tensors, void* const* params,
                                             const void* const* grads, const int32_t* dtypes,
                                             const int64_t* numels, const int64_t* const* indices,
                                             const int64_t* counts, float* const* masters,
                                             float* const* exp_avgs, float* const* exp_avg_sqs,
                                             const float* const* bases, const float* scalars) {
  try {
    return deftx::masked_adamw_step({n_tensors, params, grads, dtypes, numels, indices, counts,
                                     masters, exp_avgs, exp_avg_sqs, bases},
                                    scalars);
  } catch (const std::bad_alloc&) {
    return deftx::kOutOfMemory;
  }
}
