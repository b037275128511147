// Counter-based random streams (Philox4x32-10, Salmon et al. 2011).
// A number is a pure function of (seed, stream, index): the same matrix comes
// out whatever the thread count, and a device kernel can reproduce it.
//
// Gaussians come from Box-Muller with our own log / sin / cos built from exact
// integer bit manipulation and IEEE + - * / sqrt only (no libm, no FMA), so the
// result is identical for every vector width (SSE2, AVX2) and on the device.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace specdyn::rng {

struct Philox4x32 {
  uint32_t v[4];
};

#if defined(__CUDACC__)
#define SPECDYN_HD __host__ __device__ __forceinline__
#else
#define SPECDYN_HD inline
#endif

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

// Ten Philox rounds on counter (c0..c3) with key (k0, k1).
SPECDYN_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                    uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

SPECDYN_HD double bits_to_double(uint64_t b) {
  double d;
  memcpy(&d, &b, sizeof d);
  return d;
}
SPECDYN_HD uint64_t double_to_bits(double d) {
  uint64_t b;
  memcpy(&b, &d, sizeof b);
  return b;
}

// A small non-negative integer (< 2^52) as a double, exactly, without int->fp conversion.
SPECDYN_HD double small_int_to_double(uint64_t x) {
  return bits_to_double(0x4330000000000000ull | x) - 4503599627370496.0;
}

// log(u) for u in (0, 1]: u = 2^e m with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, series to s^21.
SPECDYN_HD double log_unit(double u) {
  const uint64_t b = double_to_bits(u);
  double m = bits_to_double((b & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);  // [1, 2)
  double e = small_int_to_double(b >> 52) - 1023.0;
  const uint64_t big = m > 1.4142135623730951 ? ~0ull : 0ull;
  m = bits_to_double((double_to_bits(m) & ~big) | (double_to_bits(m * 0.5) & big));
  e = e + bits_to_double(double_to_bits(1.0) & big);
  const double s = (m - 1.0) / (m + 1.0), z = s * s;
  double p = 1.0 / 21;
  p = p * z + 1.0 / 19;
  p = p * z + 1.0 / 17;
  p = p * z + 1.0 / 15;
  p = p * z + 1.0 / 13;
  p = p * z + 1.0 / 11;
  p = p * z + 1.0 / 9;
  p = p * z + 1.0 / 7;
  p = p * z + 1.0 / 5;
  p = p * z + 1.0 / 3;
  const double logm = 2.0 * s + 2.0 * s * (z * p);
  return e * 6.93147180369123816490e-01 + (e * 1.90821492927058770002e-10 + logm);
}

// sin and cos of y in [0, pi/4] by their Taylor series (truncation < 1e-17).
SPECDYN_HD void sincos_octant(double y, double& s, double& c) {
  const double z = y * y;
  double ps = -1.0 / 1307674368000.0;      // -1/15!
  ps = ps * z + 1.0 / 6227020800.0;        // 1/13!
  ps = ps * z - 1.0 / 39916800.0;
  ps = ps * z + 1.0 / 362880.0;
  ps = ps * z - 1.0 / 5040.0;
  ps = ps * z + 1.0 / 120.0;
  ps = ps * z - 1.0 / 6.0;
  s = y + y * (z * ps);
  double pc = 1.0 / 20922789888000.0;      // 1/16!
  pc = pc * z - 1.0 / 87178291200.0;
  pc = pc * z + 1.0 / 479001600.0;
  pc = pc * z - 1.0 / 3628800.0;
  pc = pc * z + 1.0 / 40320.0;
  pc = pc * z - 1.0 / 720.0;
  pc = pc * z + 1.0 / 24.0;
  pc = pc * z - 0.5;
  c = 1.0 + z * pc;
}

// Two standard normals from one Philox output (Box-Muller). The radius uses a
// 52-bit uniform in (0, 1]; the angle 2 pi (o + f) / 8 uses the top 3 bits of
// a second 52-bit word as octant o and the remaining 49 as fraction f.
SPECDYN_HD void box_muller(uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3, double& z0, double& z1) {
  const uint64_t b1 = ((static_cast<uint64_t>(r0) << 20) ^ (r1 >> 12)) & 0x000FFFFFFFFFFFFFull;
  const uint64_t b2 = ((static_cast<uint64_t>(r2) << 20) ^ (r3 >> 12)) & 0x000FFFFFFFFFFFFFull;
  const double u1 = 1.0 - (bits_to_double(b1 | 0x3FF0000000000000ull) - 1.0);  // (0, 1]
  const double rad = sqrt(-2.0 * log_unit(u1));
  const uint64_t o = b2 >> 49;  // octant 0..7
  const double f = bits_to_double(((b2 & 0x0001FFFFFFFFFFFFull) << 3) | 0x3FF0000000000000ull) - 1.0;
  const uint64_t odd = 0ull - (o & 1ull);
  const double fo = bits_to_double((double_to_bits(f) & ~odd) | (double_to_bits(1.0 - f) & odd));
  double s, c;
  sincos_octant(fo * 0.78539816339744830962, s, c);
  s = bits_to_double(double_to_bits(s) ^ (odd & 0x8000000000000000ull));  // delta = -y in odd octants
  const uint64_t jm = ((o + 1) >> 1) & 3ull;                                // quarter turns
  const uint64_t swap = 0ull - (jm & 1ull);
  const uint64_t x = (double_to_bits(c) & ~swap) | (double_to_bits(s) & swap);
  const uint64_t y = (double_to_bits(s) & ~swap) | (double_to_bits(c) & swap);
  const uint64_t neg_c = ((jm & 1ull) ^ (jm >> 1)) << 63, neg_s = (jm >> 1) << 63;
  z0 = rad * bits_to_double(x ^ neg_c);
  z1 = rad * bits_to_double(y ^ neg_s);
}

// Two standard normals for pair index p of stream `stream`.
// Element 2p of the stream is z0, element 2p+1 is z1.
SPECDYN_HD void normal_pair(uint64_t seed, uint64_t stream, uint64_t p, double& z0, double& z1) {
  const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(p), static_cast<uint32_t>(p >> 32),
                                     static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32),
                                     static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  box_muller(r.v[0], r.v[1], r.v[2], r.v[3], z0, z1);
}

// Fill out[0..n) with sigma * N(0,1), element i being element `offset + i` of
// the stream. Parallel over OpenMP threads; independent of the thread count.
void normal_fill(double* out, size_t n, uint64_t seed, uint64_t stream, double sigma,
                 uint64_t offset = 0);
void normal_fill(float* out, size_t n, uint64_t seed, uint64_t stream, double sigma,
                 uint64_t offset = 0);

// Stream ids of named uses, so that two consumers of one seed never overlap.
// Layer l of a network uses stream kWeights + l, data uses kData, and so on.
constexpr uint64_t kUser = 0;
constexpr uint64_t kWeights = 1ull << 32;
constexpr uint64_t kData = 2ull << 32;
constexpr uint64_t kProbes = 3ull << 32;
constexpr uint64_t kSpikes = 4ull << 32;
constexpr uint64_t kMinibatch = 5ull << 32;

}  // namespace specdyn::rng
