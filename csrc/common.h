// Shared definitions of the deftx native CPU backend: dtype codes, status codes, exact
// conversions between fp32 and the 16-bit float formats (bf16, fp16), and the guard that keeps
// subnormals on every thread whatever the caller's flush mode.
//
// The conversions work on bit patterns so they do not depend on compiler support for
// _Float16 / __bf16: widening is exact, narrowing rounds to nearest, ties to even, and
// overflows to infinity, the same as torch's `Tensor.to(dtype)`.
#pragma once

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include <cstdint>
#include <cstring>

// Marks the functions of the C ABI (everything else is hidden by -fvisibility=hidden).
#define DEFTX_EXPORT extern "C" __attribute__((visibility("default")))

namespace deftx {

// Element type codes of the C ABI (mirrored in deftx/ops/native/__init__.py).
enum DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Return codes of every exported function (mirrored in deftx/ops/native/__init__.py).
enum Status : int32_t {
  kOk = 0,
  kInvalidArgument = 1,  // bad count, dtype code, null pointer or k out of range
  kOutOfMemory = 2,      // a work buffer could not be allocated
  kBadIndices = 3,       // an index list is not sorted or has an entry out of range
};

inline bool is_valid_dtype(int32_t dtype) {
  return dtype == kFloat32 || dtype == kBFloat16 || dtype == kFloat16;
}

inline uint32_t float_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

inline float bits_float(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// bf16 -> fp32 bit pattern (exact: bf16 is the upper half of an fp32).
inline uint32_t bf16_to_f32_bits(uint16_t h) { return uint32_t(h) << 16; }

// fp16 -> fp32 bit pattern (exact, including subnormals, infinities and NaN payloads).
inline uint32_t f16_to_f32_bits(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1Fu) return sign | 0x7F800000u | (mantissa << 13);
  if (exponent != 0) return sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);
  // Zero or subnormal: mantissa * 2^-24, exact in fp32.
  return sign | float_bits(float(mantissa) * 0x1p-24f);
}

// fp32 bit pattern -> bf16, round to nearest even; NaN stays a quiet NaN of the same sign.
inline uint16_t f32_bits_to_bf16(uint32_t x) {
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((x >> 16) | 0x0040u);
  const uint32_t rounding = 0x7FFFu + ((x >> 16) & 1u);
  return uint16_t((x + rounding) >> 16);
}

// fp32 bit pattern -> fp16, round to nearest even; |x| >= 65520 becomes infinity and NaN
// stays a quiet NaN of the same sign.
inline uint16_t f32_bits_to_f16(uint32_t x) {
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t magnitude = x & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return uint16_t(sign | 0x7E00u | ((magnitude >> 13) & 0x3FFu));
  if (magnitude >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // 65520 and up round to inf
  if (magnitude >= 0x38800000u) {  // normal fp16 range, |x| >= 2^-14
    const uint32_t rebased = magnitude - (uint32_t(127 - 15) << 23);
    const uint32_t rounding = 0xFFFu + ((rebased >> 13) & 1u);
    return uint16_t(sign | ((rebased + rounding) >> 13));
  }
  if (magnitude <= 0x33000000u) return sign;  // |x| <= 2^-25 rounds to zero (tie to even)
  // Subnormal fp16: the result counts units of 2^-24.
  const uint32_t exponent = magnitude >> 23;  // 102 ... 112
  const uint32_t significand = (magnitude & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126 - exponent;  // 14 ... 24
  uint32_t units = significand >> shift;
  const uint32_t remainder = significand & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (remainder > half || (remainder == half && (units & 1u))) ++units;
  return uint16_t(sign | units);
}

// Storage and fp32 conversions of one element type, selected at compile time.
template <int32_t D>
struct Element;

template <>
struct Element<kFloat32> {
  using Storage = uint32_t;
  static float to_float(Storage raw) { return bits_float(raw); }
  static Storage from_float(float x) { return float_bits(x); }
};

template <>
struct Element<kBFloat16> {
  using Storage = uint16_t;
  static float to_float(Storage raw) { return bits_float(bf16_to_f32_bits(raw)); }
  static Storage from_float(float x) { return f32_bits_to_bf16(float_bits(x)); }
};

template <>
struct Element<kFloat16> {
  using Storage = uint16_t;
  static float to_float(Storage raw) { return bits_float(f16_to_f32_bits(raw)); }
  static Storage from_float(float x) { return f32_bits_to_f16(float_bits(x)); }
};

// Calls `fn(Element<D>{})` with D the element type named by the runtime code `dtype`
// (which the caller has validated).
template <typename Fn>
inline void dispatch_dtype(int32_t dtype, Fn&& fn) {
  switch (dtype) {
    case kFloat32: fn(Element<kFloat32>{}); break;
    case kBFloat16: fn(Element<kBFloat16>{}); break;
    default: fn(Element<kFloat16>{}); break;
  }
}

// For its lifetime, the calling thread computes with subnormals (flush-to-zero and
// denormals-are-zero cleared in MXCSR, then restored). The mode is per thread, and a caller
// that flushes (torch.set_flush_denormal(True) sets it on the calling thread only) would give
// the OpenMP master thread other results than the workers, so a result would depend on which
// thread computed it. Every thread of a parallel region that does float arithmetic holds one.
class SubnormalsKept {
 public:
#if defined(__SSE__)
  SubnormalsKept() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ & ~kFlushBits); }
  ~SubnormalsKept() { _mm_setcsr(saved_); }
#else
  SubnormalsKept() = default;
#endif
  SubnormalsKept(const SubnormalsKept&) = delete;
  SubnormalsKept& operator=(const SubnormalsKept&) = delete;

 private:
#if defined(__SSE__)
  static constexpr unsigned kFlushBits = 0x8040u;  // FTZ (bit 15) and DAZ (bit 6)
  unsigned saved_;
#endif
};

}  // namespace deftx
