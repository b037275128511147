// Hand-vectorized (AVX-512 or AVX2/FMA) kernel of the fused Gram sweep for narrow
// blocks: for a panel of rows of a row-major matrix, y = M_p X and then
// Z += M_p^T y while the panel is still in cache. With b <= 8 columns the
// OpenBLAS gemm path spends most of its time packing; these loops stream each
// row once from memory and keep X and Z in L2. Selected at run time when the
// CPU has AVX2 and FMA; otherwise gram_sweep uses OpenBLAS.
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <utility>

namespace specdyn::lanczos::detail {

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SPECDYN_AVX2 __attribute__((target("avx2,fma")))

namespace {

SPECDYN_AVX2 inline double hsum(__m256d v) {
  __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
  lo = _mm_add_pd(lo, hi);
  return _mm_cvtsd_f64(_mm_add_sd(lo, _mm_unpackhi_pd(lo, lo)));
}

// y[r * B + j] = sum_l m_r[l] X[j c + l] for R rows starting at m (row stride ld).
template <int R, int B>
SPECDYN_AVX2 void rows_times_block(const double* m, int64_t ld, int64_t c, const double* X, double* y) {
  __m256d acc[R][B];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < B; ++j) acc[r][j] = _mm256_setzero_pd();
  int64_t l = 0;
  for (; l + 4 <= c; l += 4) {
    __m256d mv[R];
    for (int r = 0; r < R; ++r) mv[r] = _mm256_loadu_pd(m + r * ld + l);
    for (int j = 0; j < B; ++j) {
      const __m256d xv = _mm256_loadu_pd(X + j * c + l);
      for (int r = 0; r < R; ++r) acc[r][j] = _mm256_fmadd_pd(mv[r], xv, acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < B; ++j) {
      double s = hsum(acc[r][j]);
      for (int64_t t = l; t < c; ++t) s += m[r * ld + t] * X[j * c + t];
      y[r * B + j] = s;
    }
}

// Z[j c + l] += sum_r m_r[l] y[r * B + j] for R rows.
template <int R, int B>
SPECDYN_AVX2 void rows_transpose_update(const double* m, int64_t ld, int64_t c, const double* y, double* Z) {
  __m256d yb[R][B];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < B; ++j) yb[r][j] = _mm256_set1_pd(y[r * B + j]);
  int64_t l = 0;
  for (; l + 4 <= c; l += 4) {
    __m256d mv[R];
    for (int r = 0; r < R; ++r) mv[r] = _mm256_loadu_pd(m + r * ld + l);
    for (int j = 0; j < B; ++j) {
      __m256d z = _mm256_loadu_pd(Z + j * c + l), z2 = _mm256_setzero_pd();
      for (int r = 0; r < R; r += 2) z = _mm256_fmadd_pd(mv[r], yb[r][j], z);
      for (int r = 1; r < R; r += 2) z2 = _mm256_fmadd_pd(mv[r], yb[r][j], z2);
      _mm256_storeu_pd(Z + j * c + l, _mm256_add_pd(z, z2));
    }
  }
  for (; l < c; ++l)
    for (int j = 0; j < B; ++j) {
      double s = Z[j * c + l];
      for (int r = 0; r < R; ++r) s += m[r * ld + l] * y[r * B + j];
      Z[j * c + l] = s;
    }
}

// Rows per register tile: accumulators R*B plus R row vectors fit the 16 ymm registers.
template <int B>
constexpr int tile_rows() {
  return B <= 2 ? 4 : (B <= 5 ? 2 : 1);
}

template <int B>
SPECDYN_AVX2 void panel_kernel(const double* M, int64_t ld, int64_t rows, int64_t c, const double* X, double* y,
                               double* Z) {
  constexpr int R1 = tile_rows<B>();
  int64_t i = 0;
  for (; i + R1 <= rows; i += R1) rows_times_block<R1, B>(M + i * ld, ld, c, X, y + i * B);
  for (; i < rows; ++i) rows_times_block<1, B>(M + i * ld, ld, c, X, y + i * B);
  // The transpose update amortizes the Z loads and stores over 4 rows.
  constexpr int R2 = B <= 4 ? 4 : 2;
  i = 0;
  for (; i + R2 <= rows; i += R2) rows_transpose_update<R2, B>(M + i * ld, ld, c, y + i * B, Z);
  for (; i < rows; ++i) rows_transpose_update<1, B>(M + i * ld, ld, c, y + i * B, Z);
}


// float matrices: the AVX2 loops with 8 lanes (accumulation in float, like sgemm).
SPECDYN_AVX2 inline float hsum8(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  return _mm_cvtss_f32(_mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1)));
}

template <int R, int B>
SPECDYN_AVX2 void rows_times_block_f32(const float* m, int64_t ld, int64_t c, const float* X, float* y) {
  __m256 acc[R][B];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < B; ++j) acc[r][j] = _mm256_setzero_ps();
  int64_t l = 0;
  for (; l + 8 <= c; l += 8) {
    __m256 mv[R];
    for (int r = 0; r < R; ++r) mv[r] = _mm256_loadu_ps(m + r * ld + l);
    for (int j = 0; j < B; ++j) {
      const __m256 xv = _mm256_loadu_ps(X + j * c + l);
      for (int r = 0; r < R; ++r) acc[r][j] = _mm256_fmadd_ps(mv[r], xv, acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < B; ++j) {
      float s = hsum8(acc[r][j]);
      for (int64_t t = l; t < c; ++t) s += m[r * ld + t] * X[j * c + t];
      y[r * B + j] = s;
    }
}

template <int R, int B>
SPECDYN_AVX2 void rows_transpose_update_f32(const float* m, int64_t ld, int64_t c, const float* y, float* Z) {
  int64_t l = 0;
  for (; l + 8 <= c; l += 8) {
    __m256 mv[R];
    for (int r = 0; r < R; ++r) mv[r] = _mm256_loadu_ps(m + r * ld + l);
    for (int j = 0; j < B; ++j) {
      __m256 z = _mm256_loadu_ps(Z + j * c + l);
      for (int r = 0; r < R; ++r) z = _mm256_fmadd_ps(mv[r], _mm256_set1_ps(y[r * B + j]), z);
      _mm256_storeu_ps(Z + j * c + l, z);
    }
  }
  for (; l < c; ++l)
    for (int j = 0; j < B; ++j) {
      float s = Z[j * c + l];
      for (int r = 0; r < R; ++r) s += m[r * ld + l] * y[r * B + j];
      Z[j * c + l] = s;
    }
}

template <int B>
SPECDYN_AVX2 void panel_kernel_f32(const float* M, int64_t ld, int64_t rows, int64_t c, const float* X, float* y,
                                   float* Z) {
  constexpr int R1 = tile_rows<B>();
  int64_t i = 0;
  for (; i + R1 <= rows; i += R1) rows_times_block_f32<R1, B>(M + i * ld, ld, c, X, y + i * B);
  for (; i < rows; ++i) rows_times_block_f32<1, B>(M + i * ld, ld, c, X, y + i * B);
  constexpr int R2 = B <= 4 ? 4 : 2;
  i = 0;
  for (; i + R2 <= rows; i += R2) rows_transpose_update_f32<R2, B>(M + i * ld, ld, c, y + i * B, Z);
  for (; i < rows; ++i) rows_transpose_update_f32<1, B>(M + i * ld, ld, c, y + i * B, Z);
}

#define SPECDYN_AVX512 __attribute__((target("avx512f")))

// The same loops with 512-bit vectors and 32 registers, for double (8 lanes) and
// float (16 lanes, accumulated in float like sgemm): blocks up to 8; wider ones
// measured slower than OpenBLAS.
template <class T>
struct Zmm;
template <>
struct Zmm<double> {
  using V = __m512d;
  static constexpr int kLanes = 8;
  SPECDYN_AVX512 static V zero() { return _mm512_setzero_pd(); }
  SPECDYN_AVX512 static V load(const double* p) { return _mm512_loadu_pd(p); }
  SPECDYN_AVX512 static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  SPECDYN_AVX512 static V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  SPECDYN_AVX512 static V add(V a, V b) { return _mm512_add_pd(a, b); }
  SPECDYN_AVX512 static V set1(double x) { return _mm512_set1_pd(x); }
  SPECDYN_AVX512 static void lanes(double* out, V v) { _mm512_storeu_pd(out, v); }
};
template <>
struct Zmm<float> {
  using V = __m512;
  static constexpr int kLanes = 16;
  SPECDYN_AVX512 static V zero() { return _mm512_setzero_ps(); }
  SPECDYN_AVX512 static V load(const float* p) { return _mm512_loadu_ps(p); }
  SPECDYN_AVX512 static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  SPECDYN_AVX512 static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  SPECDYN_AVX512 static V add(V a, V b) { return _mm512_add_ps(a, b); }
  SPECDYN_AVX512 static V set1(float x) { return _mm512_set1_ps(x); }
  SPECDYN_AVX512 static void lanes(float* out, V v) { _mm512_storeu_ps(out, v); }
};

// Sum of the lanes in a fixed pairwise order (GCC 12 warns spuriously inside _mm512_reduce_add_*).
template <class T>
SPECDYN_AVX512 T lane_sum(typename Zmm<T>::V v) {
  T x[Zmm<T>::kLanes];
  Zmm<T>::lanes(x, v);
  for (int w = 1; w < Zmm<T>::kLanes; w *= 2)  // ((x0 + x1) + (x2 + x3)) + ...
    for (int i = 0; i < Zmm<T>::kLanes; i += 2 * w) x[i] += x[i + w];
  return x[0];
}

template <class T, int R, int B>
SPECDYN_AVX512 void rows_times_block_512(const T* m, int64_t ld, int64_t c, const T* X, T* y) {
  using Z = Zmm<T>;
  constexpr int W = Z::kLanes;
  typename Z::V acc[R][B];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < B; ++j) acc[r][j] = Z::zero();
  int64_t l = 0;
  for (; l + W <= c; l += W) {
    typename Z::V mv[R];
    for (int r = 0; r < R; ++r) mv[r] = Z::load(m + r * ld + l);
    for (int j = 0; j < B; ++j) {
      const typename Z::V xv = Z::load(X + j * c + l);
      for (int r = 0; r < R; ++r) acc[r][j] = Z::fmadd(mv[r], xv, acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < B; ++j) {
      T s = lane_sum<T>(acc[r][j]);
      for (int64_t t = l; t < c; ++t) s += m[r * ld + t] * X[j * c + t];
      y[r * B + j] = s;
    }
}

template <class T, int R, int B>
SPECDYN_AVX512 void rows_transpose_update_512(const T* m, int64_t ld, int64_t c, const T* y, T* Zc) {
  using Z = Zmm<T>;
  constexpr int W = Z::kLanes;
  int64_t l = 0;
  for (; l + W <= c; l += W) {
    typename Z::V mv[R];
    for (int r = 0; r < R; ++r) mv[r] = Z::load(m + r * ld + l);
    for (int j = 0; j < B; ++j) {
      // Two independent FMA chains (even / odd rows) halve the latency chain.
      typename Z::V z = Z::load(Zc + j * c + l), z2 = Z::zero();
      for (int r = 0; r < R; r += 2) z = Z::fmadd(mv[r], Z::set1(y[r * B + j]), z);
      for (int r = 1; r < R; r += 2) z2 = Z::fmadd(mv[r], Z::set1(y[r * B + j]), z2);
      Z::store(Zc + j * c + l, Z::add(z, z2));
    }
  }
  for (; l < c; ++l)
    for (int j = 0; j < B; ++j) {
      T s = Zc[j * c + l];
      for (int r = 0; r < R; ++r) s += m[r * ld + l] * y[r * B + j];
      Zc[j * c + l] = s;
    }
}

template <int B>
constexpr int tile_rows_512() {
  return B <= 2 ? 8 : (B <= 4 ? 4 : (B <= 6 ? 3 : (B <= 12 ? 2 : 1)));
}

template <class T, int B>
SPECDYN_AVX512 void panel_kernel_512(const T* M, int64_t ld, int64_t rows, int64_t c, const T* X, T* y, T* Z) {
  constexpr int R1 = tile_rows_512<B>();
  int64_t i = 0;
  for (; i + R1 <= rows; i += R1) rows_times_block_512<T, R1, B>(M + i * ld, ld, c, X, y + i * B);
  for (; i < rows; ++i) rows_times_block_512<T, 1, B>(M + i * ld, ld, c, X, y + i * B);
  constexpr int R2 = B <= 4 ? 8 : (B <= 8 ? 4 : 2);
  i = 0;
  for (; i + R2 <= rows; i += R2) rows_transpose_update_512<T, R2, B>(M + i * ld, ld, c, y + i * B, Z);
  for (; i < rows; ++i) rows_transpose_update_512<T, 1, B>(M + i * ld, ld, c, y + i * B, Z);
}

template <class T, int... Bs>
bool dispatch_512(int b, const T* M, int64_t ld, int64_t rows, int64_t c, const T* X, T* y, T* Z,
                  std::integer_sequence<int, Bs...>) {
  bool done = false;
  ((b == Bs + 1 ? (panel_kernel_512<T, Bs + 1>(M, ld, rows, c, X, y, Z), done = true) : false), ...);
  return done;
}

bool use_avx512() {
  static const bool on = __builtin_cpu_supports("avx512f") && std::getenv("SPECDYN_NO_AVX512") == nullptr;
  return on;
}

}  // namespace

bool fused_panel_f64(const double* M, int64_t ld, int64_t rows, int64_t c, const double* X, int b, double* y,
                     double* Z) {
  if (use_avx512() && b <= 8) return dispatch_512(b, M, ld, rows, c, X, y, Z, std::make_integer_sequence<int, 8>{});
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!ok) return false;
  switch (b) {
    case 1: panel_kernel<1>(M, ld, rows, c, X, y, Z); return true;
    case 2: panel_kernel<2>(M, ld, rows, c, X, y, Z); return true;
    case 3: panel_kernel<3>(M, ld, rows, c, X, y, Z); return true;
    case 4: panel_kernel<4>(M, ld, rows, c, X, y, Z); return true;
    case 5: panel_kernel<5>(M, ld, rows, c, X, y, Z); return true;
    case 6: panel_kernel<6>(M, ld, rows, c, X, y, Z); return true;
    case 7: panel_kernel<7>(M, ld, rows, c, X, y, Z); return true;
    case 8: panel_kernel<8>(M, ld, rows, c, X, y, Z); return true;
    default: return false;
  }
}

bool fused_panel_f32(const float* M, int64_t ld, int64_t rows, int64_t c, const float* X, int b, float* y, float* Z) {
  if (use_avx512() && b <= 8) return dispatch_512(b, M, ld, rows, c, X, y, Z, std::make_integer_sequence<int, 8>{});
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!ok) return false;
  switch (b) {
    case 1: panel_kernel_f32<1>(M, ld, rows, c, X, y, Z); return true;
    case 2: panel_kernel_f32<2>(M, ld, rows, c, X, y, Z); return true;
    case 3: panel_kernel_f32<3>(M, ld, rows, c, X, y, Z); return true;
    case 4: panel_kernel_f32<4>(M, ld, rows, c, X, y, Z); return true;
    default: return false;
  }
}

#else
bool fused_panel_f32(const float*, int64_t, int64_t, int64_t, const float*, int, float*, float*) { return false; }
bool fused_panel_f64(const double*, int64_t, int64_t, int64_t, const double*, int, double*, double*) { return false; }
#endif

}  // namespace specdyn::lanczos::detail
