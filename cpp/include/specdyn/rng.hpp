// Counter-based random streams (Philox4x32-10, Salmon et al. 2011).
// A number is a pure function of (seed, stream, index): the same matrix comes
// out whatever the thread count, and a device kernel can reproduce it.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace specdyn::rng {

struct Philox4x32 {
  uint32_t v[4];
};

#if defined(__CUDACC__)
#define SPECDYN_HD __host__ __device__ __forceinline__
#else
#define SPECDYN_HD inline
#endif

SPECDYN_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Ten Philox rounds on counter (c0..c3) with key (k0, k1).
SPECDYN_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                    uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(M0, c0, hi0, lo0);
    mulhilo32(M1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += W0;
    k1 += W1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// 53-bit uniform in (0, 1] from two 32-bit words (never 0, so log is finite).
SPECDYN_HD double uniform53(uint32_t a, uint32_t b) {
  const uint64_t bits = (static_cast<uint64_t>(a) << 21) ^ (static_cast<uint64_t>(b) >> 11);
  return (static_cast<double>(bits) + 1.0) * (1.0 / 9007199254740992.0);
}

// Two standard normals for pair index p of stream `stream` (Box-Muller).
// Element 2p of the stream is z0, element 2p+1 is z1.
SPECDYN_HD void normal_pair(uint64_t seed, uint64_t stream, uint64_t p, double& z0, double& z1) {
  const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(p), static_cast<uint32_t>(p >> 32),
                                     static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32),
                                     static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const double u1 = uniform53(r.v[0], r.v[1]);
  const double u2 = uniform53(r.v[2], r.v[3]);
  const double rad = sqrt(-2.0 * log(u1));
  const double ang = 6.283185307179586476925286766559 * u2;
  z0 = rad * cos(ang);
  z1 = rad * sin(ang);
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
