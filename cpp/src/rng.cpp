#include "specdyn/rng.hpp"

#include <omp.h>

namespace specdyn::rng {

template <class T>
static void fill_impl(T* out, size_t n, uint64_t seed, uint64_t stream, double sigma, uint64_t offset) {
  if (n == 0) return;
  // Work on whole pairs of the stream; a partial pair at either end is handled
  // by drawing the pair and keeping the needed half.
  const uint64_t first = offset, last = offset + n;  // [first, last)
  const uint64_t p0 = first / 2, p1 = (last + 1) / 2;
  const int64_t npairs = static_cast<int64_t>(p1 - p0);
  const bool big = n > (1u << 15);
#pragma omp parallel for schedule(static) if (big)
  for (int64_t q = 0; q < npairs; ++q) {
    const uint64_t p = p0 + static_cast<uint64_t>(q);
    double z0, z1;
    normal_pair(seed, stream, p, z0, z1);
    const uint64_t e0 = 2 * p, e1 = 2 * p + 1;
    if (e0 >= first && e0 < last) out[e0 - first] = static_cast<T>(sigma * z0);
    if (e1 >= first && e1 < last) out[e1 - first] = static_cast<T>(sigma * z1);
  }
}

void normal_fill(double* out, size_t n, uint64_t seed, uint64_t stream, double sigma, uint64_t offset) {
  fill_impl(out, n, seed, stream, sigma, offset);
}
void normal_fill(float* out, size_t n, uint64_t seed, uint64_t stream, double sigma, uint64_t offset) {
  fill_impl(out, n, seed, stream, sigma, offset);
}

}  // namespace specdyn::rng
