// Internal: the vectorized kernels of one panel of the CPU fused Gram sweep
// (lanczos_kernels.cpp), used by gram_sweep (lanczos_svd.cpp). Not part of the API.
#pragma once
#include <cstdint>

namespace specdyn::lanczos::detail {

// y (rows x b, row-major) = M_p X and Z += M_p^T y. AVX-512 or AVX2/FMA for
// b <= 8; returns false (doing nothing) otherwise. ahead: the panel the caller
// reads next (same rows and stride; its lines are requested during the update),
// or null.
bool fused_panel_f64(const double* M, int64_t ld, int64_t rows, int64_t c, const double* X, int b, double* y,
                     double* Z, const double* ahead);
// The float version (the same kernels, accumulating in float).
bool fused_panel_f32(const float* M, int64_t ld, int64_t rows, int64_t c, const float* X, int b, float* y, float* Z,
                     const float* ahead);
inline bool fused_panel(const double* M, int64_t ld, int64_t rows, int64_t c, const double* X, int b, double* y,
                        double* Z, const double* ahead) {
  return fused_panel_f64(M, ld, rows, c, X, b, y, Z, ahead);
}
inline bool fused_panel(const float* M, int64_t ld, int64_t rows, int64_t c, const float* X, int b, float* y,
                        float* Z, const float* ahead) {
  return fused_panel_f32(M, ld, rows, c, X, b, y, Z, ahead);
}

// Columns of a block the kernels of this CPU take in one read of a panel: 6
// with AVX-512 (a block of 5, the top-4 and the next value of a tracked warm
// solve, took 0.72 ms a pass in one chunk of 5 against 0.88 ms as chunks of
// 3 + 2, at 2048 x 2048 float32), else 4.
int preferred_chunk_width();

// Whether pipelined_panel runs for block width b on this CPU (b <= 2: its
// product and update tiles are the same rows).
bool pipelined_panel_supported(int b);
// y (rows x b, row-major) = M_p X and, when P is not null, Z += P^T yp for the
// previous panel P (the same rows and stride, its y in yp), in one loop: the
// bits of fused_panel over P, then the product of M_p. False (nothing done)
// where not supported.
bool pipelined_panel_f64(const double* M, int64_t ld, int64_t rows, int64_t c, const double* X, int b, double* y,
                         const double* P, const double* yp, double* Z);
bool pipelined_panel_f32(const float* M, int64_t ld, int64_t rows, int64_t c, const float* X, int b, float* y,
                         const float* P, const float* yp, float* Z);
inline bool pipelined_panel(const double* M, int64_t ld, int64_t rows, int64_t c, const double* X, int b, double* y,
                            const double* P, const double* yp, double* Z) {
  return pipelined_panel_f64(M, ld, rows, c, X, b, y, P, yp, Z);
}
inline bool pipelined_panel(const float* M, int64_t ld, int64_t rows, int64_t c, const float* X, int b, float* y,
                            const float* P, const float* yp, float* Z) {
  return pipelined_panel_f32(M, ld, rows, c, X, b, y, P, yp, Z);
}

// Z += M_p^T y alone (the second half of fused_panel), for a given y.
bool transpose_panel_f64(const double* M, int64_t ld, int64_t rows, int64_t c, const double* y, int b, double* Z);
bool transpose_panel_f32(const float* M, int64_t ld, int64_t rows, int64_t c, const float* y, int b, float* Z);
inline bool transpose_panel(const double* M, int64_t ld, int64_t rows, int64_t c, const double* y, int b, double* Z) {
  return transpose_panel_f64(M, ld, rows, c, y, b, Z);
}
inline bool transpose_panel(const float* M, int64_t ld, int64_t rows, int64_t c, const float* y, int b, float* Z) {
  return transpose_panel_f32(M, ld, rows, c, y, b, Z);
}

}  // namespace specdyn::lanczos::detail
