#include "specdyn/rng.hpp"

#include <algorithm>

namespace specdyn::rng {

namespace {

constexpr int kBatch = 16;  // pairs per vectorized batch

// kBatch consecutive pairs starting at p, in structure-of-arrays form so the
// Philox rounds and the Box-Muller arithmetic vectorize. Compiled for AVX2 and
// for the baseline; both give the same bits (integer ops and exact IEEE ops).
__attribute__((target_clones("avx2", "default")))
void batch(uint64_t seed, uint64_t stream, uint64_t p, double* z0, double* z1) {
  uint32_t c0[kBatch], c1[kBatch], c2[kBatch], c3[kBatch];
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma omp simd
  for (int i = 0; i < kBatch; ++i) {
    const uint64_t q = p + static_cast<uint64_t>(i);
    c0[i] = static_cast<uint32_t>(q);
    c1[i] = static_cast<uint32_t>(q >> 32);
    c2[i] = static_cast<uint32_t>(stream);
    c3[i] = static_cast<uint32_t>(stream >> 32);
  }
  uint32_t ka = k0, kb = k1;
  for (int r = 0; r < 10; ++r) {
#pragma omp simd
    for (int i = 0; i < kBatch; ++i) {
      const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0[i];
      const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2[i];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[i] ^ ka;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[i] ^ kb;
      c1[i] = static_cast<uint32_t>(p1);
      c3[i] = static_cast<uint32_t>(p0);
      c0[i] = n0;
      c2[i] = n2;
    }
    ka += kPhiloxW0;
    kb += kPhiloxW1;
  }
#pragma omp simd
  for (int i = 0; i < kBatch; ++i) box_muller(c0[i], c1[i], c2[i], c3[i], z0[i], z1[i]);
}

template <class T>
void fill_impl(T* out, size_t n, uint64_t seed, uint64_t stream, double sigma, uint64_t offset) {
  if (n == 0) return;
  const uint64_t first = offset, last = offset + n;  // stream elements [first, last)
  const uint64_t p0 = first / 2, p1 = (last + 1) / 2;  // pairs touched
  const int64_t nbatches = static_cast<int64_t>((p1 - p0 + kBatch - 1) / kBatch);
#pragma omp parallel for schedule(static) if (n > (1u << 15))
  for (int64_t b = 0; b < nbatches; ++b) {
    const uint64_t p = p0 + static_cast<uint64_t>(b) * kBatch;
    double z0[kBatch], z1[kBatch];
    batch(seed, stream, p, z0, z1);
    const uint64_t e_lo = std::max(first, 2 * p), e_hi = std::min(last, 2 * (p + kBatch));
    for (uint64_t e = e_lo; e < e_hi; ++e) {
      const uint64_t i = (e - 2 * p) >> 1;
      out[e - first] = static_cast<T>(sigma * ((e & 1) ? z1[i] : z0[i]));
    }
  }
}

}  // namespace

void normal_fill(double* out, size_t n, uint64_t seed, uint64_t stream, double sigma, uint64_t offset) {
  fill_impl(out, n, seed, stream, sigma, offset);
}
void normal_fill(float* out, size_t n, uint64_t seed, uint64_t stream, double sigma, uint64_t offset) {
  fill_impl(out, n, seed, stream, sigma, offset);
}

}  // namespace specdyn::rng
