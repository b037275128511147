// Internal: one read of a block of rows of a row-major matrix, summing per
// column the squares of the entries and, optionally, the entries weighted by
// their row's weight. The trainer's norm and beta_f read (nets_train.cpp) and
// the first sweep of a solve (lanczos_svd.cpp) share it. Not part of the API.
#pragma once
#include <cstdint>

namespace specdyn::detail {

// Rows r0 .. r1 of W (row stride c) into per-column partials: sq[j] += W_ij^2
// and, when w is given, p[j] += w_i W_ij, every column adding its rows in row
// order (the same bits on every instruction set).
void add_row_sums(const float* W, int64_t r0, int64_t r1, int64_t c, const double* w, double* sq, double* p);
void add_row_sums(const double* W, int64_t r0, int64_t r1, int64_t c, const double* w, double* sq, double* p);

// One block's partials into the running totals, blocks taken in row order:
// total += its squares (column order); out[j] += p[j] when p is given.
inline void fold_row_sums(const double* sq, const double* p, int64_t c, double& total, double* out) {
  for (int64_t j = 0; j < c; ++j) total += sq[j];
  if (p)
    for (int64_t j = 0; j < c; ++j) out[j] += p[j];
}

}  // namespace specdyn::detail
