// One read of a block of rows: per-column sums of squares and of row-weighted
// entries (see row_sums.hpp).
#include "row_sums.hpp"

namespace specdyn::detail {

namespace {

// R rows from row i into the partials: each column adds the rows' terms in row
// order (the squares into sq; with w, the w-weighted entries into p).
// (sq and p restrict: otherwise their stores might feed the next column's row
// loads, and GCC left the weighted loop scalar, a third of the memory's speed.)
template <class T, bool kWeighted, int R>
inline void add_rows(const T* W, int64_t i, int64_t c, const double* w, double* __restrict sq,
                     double* __restrict p) {
  const T* row[R];
  double wr[R];
  for (int r = 0; r < R; ++r) {
    row[r] = W + (i + r) * c;
    wr[r] = kWeighted ? w[i + r] : 0.0;
  }
  for (int64_t j = 0; j < c; ++j) {
    double x[R];
    for (int r = 0; r < R; ++r) x[r] = static_cast<double>(row[r][j]);
    double t = sq[j];
    for (int r = 0; r < R; ++r) t += x[r] * x[r];
    sq[j] = t;
    if (kWeighted) {
      double u = p[j];
      for (int r = 0; r < R; ++r) u += wr[r] * x[r];
      p[j] = u;
    }
  }
}

// Cloned per instruction set (the library's baseline is SSE2: two doubles per
// operation, and the read ran at about a third of the memory's speed); the
// per-column sums are the same in every clone (the file is built without FMA
// contraction, see CMakeLists.txt), so the bits too. Eight rows per sweep
// load and store each column's partial sums half as often as four (the norms
// and beta_f of an N = 2048 float32 linear net: 1.8-1.9 -> 1.5-1.7 ms a
// step), and every column still adds its rows in order: the same bits.
template <class T, bool kWeighted>
__attribute__((target_clones("avx512f", "avx2", "default"))) void add_range(const T* W, int64_t r0, int64_t r1,
                                                                             int64_t c, const double* w, double* sq,
                                                                             double* p) {
  int64_t i = r0;
  for (; i + 8 <= r1; i += 8) add_rows<T, kWeighted, 8>(W, i, c, w, sq, p);
  for (; i + 4 <= r1; i += 4) add_rows<T, kWeighted, 4>(W, i, c, w, sq, p);
  for (; i < r1; ++i) add_rows<T, kWeighted, 1>(W, i, c, w, sq, p);
}

template <class T>
void add(const T* W, int64_t r0, int64_t r1, int64_t c, const double* w, double* sq, double* p) {
  if (w)
    add_range<T, true>(W, r0, r1, c, w, sq, p);
  else
    add_range<T, false>(W, r0, r1, c, nullptr, sq, nullptr);
}

}  // namespace

void add_row_sums(const float* W, int64_t r0, int64_t r1, int64_t c, const double* w, double* sq, double* p) {
  add(W, r0, r1, c, w, sq, p);
}
void add_row_sums(const double* W, int64_t r0, int64_t r1, int64_t c, const double* w, double* sq, double* p) {
  add(W, r0, r1, c, w, sq, p);
}

}  // namespace specdyn::detail
