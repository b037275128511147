// Hand-vectorized (AVX-512 or AVX2/FMA) kernel of the fused Gram sweep for narrow
// blocks: for a panel of rows of a row-major matrix, y = M_p X and then
// Z += M_p^T y while the panel is still in cache. With b <= 8 columns the
// OpenBLAS gemm path spends most of its time packing; these loops stream each
// row once from memory and keep X and Z in L2. Selected at run time when the
// CPU has AVX2 and FMA; otherwise gram_sweep uses OpenBLAS.
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <utility>

namespace specdyn::lanczos::detail {

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SPECDYN_AVX2 __attribute__((target("avx2,fma")))

namespace {

// 256-bit vectors: double (4 lanes) and float (8 lanes, accumulated in float like sgemm).
template <class T>
struct Ymm;
template <>
struct Ymm<double> {
  using V = __m256d;
  static constexpr int kLanes = 4;
  SPECDYN_AVX2 static V zero() { return _mm256_setzero_pd(); }
  SPECDYN_AVX2 static V load(const double* p) { return _mm256_loadu_pd(p); }
  SPECDYN_AVX2 static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  SPECDYN_AVX2 static V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  SPECDYN_AVX2 static V add(V a, V b) { return _mm256_add_pd(a, b); }
  SPECDYN_AVX2 static V set1(double x) { return _mm256_set1_pd(x); }
};
template <>
struct Ymm<float> {
  using V = __m256;
  static constexpr int kLanes = 8;
  SPECDYN_AVX2 static V zero() { return _mm256_setzero_ps(); }
  SPECDYN_AVX2 static V load(const float* p) { return _mm256_loadu_ps(p); }
  SPECDYN_AVX2 static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  SPECDYN_AVX2 static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  SPECDYN_AVX2 static V add(V a, V b) { return _mm256_add_ps(a, b); }
  SPECDYN_AVX2 static V set1(float x) { return _mm256_set1_ps(x); }
};

// Sum of the lanes, halves first: (x0 + x2) + (x1 + x3) for 4 lanes.
template <class T>
SPECDYN_AVX2 T half_sum(typename Ymm<T>::V v) {
  T x[Ymm<T>::kLanes];
  Ymm<T>::store(x, v);
  for (int w = Ymm<T>::kLanes / 2; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) x[i] += x[i + w];
  return x[0];
}

// y[r * B + j] = sum_l m_r[l] X[j c + l] for R rows starting at m (row stride ld).
template <class T, int R, int B>
SPECDYN_AVX2 void rows_times_block(const T* m, int64_t ld, int64_t c, const T* X, T* y) {
  using Y = Ymm<T>;
  constexpr int W = Y::kLanes;
  typename Y::V acc[R][B];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < B; ++j) acc[r][j] = Y::zero();
  int64_t l = 0;
  for (; l + W <= c; l += W) {
    typename Y::V mv[R];
    for (int r = 0; r < R; ++r) mv[r] = Y::load(m + r * ld + l);
    for (int j = 0; j < B; ++j) {
      const typename Y::V xv = Y::load(X + j * c + l);
      for (int r = 0; r < R; ++r) acc[r][j] = Y::fmadd(mv[r], xv, acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < B; ++j) {
      T s = half_sum<T>(acc[r][j]);
      for (int64_t t = l; t < c; ++t) s += m[r * ld + t] * X[j * c + t];
      y[r * B + j] = s;
    }
}

// Z[j c + l] += sum_r m_r[l] y[r * B + j] for R rows.
template <class T, int R, int B>
SPECDYN_AVX2 void rows_transpose_update(const T* m, int64_t ld, int64_t c, const T* y, T* Z) {
  using Y = Ymm<T>;
  constexpr int W = Y::kLanes;
  typename Y::V yb[R][B];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < B; ++j) yb[r][j] = Y::set1(y[r * B + j]);
  int64_t l = 0;
  for (; l + W <= c; l += W) {
    typename Y::V mv[R];
    for (int r = 0; r < R; ++r) mv[r] = Y::load(m + r * ld + l);
    for (int j = 0; j < B; ++j) {
      typename Y::V z = Y::load(Z + j * c + l), z2 = Y::zero();
      for (int r = 0; r < R; r += 2) z = Y::fmadd(mv[r], yb[r][j], z);
      for (int r = 1; r < R; r += 2) z2 = Y::fmadd(mv[r], yb[r][j], z2);
      Y::store(Z + j * c + l, Y::add(z, z2));
    }
  }
  for (; l < c; ++l)
    for (int j = 0; j < B; ++j) {
      T s = Z[j * c + l];
      for (int r = 0; r < R; ++r) s += m[r * ld + l] * y[r * B + j];
      Z[j * c + l] = s;
    }
}

// Rows per register tile: accumulators R*B plus R row vectors fit the 16 ymm registers.
template <int B>
constexpr int tile_rows() {
  return B <= 2 ? 4 : (B <= 5 ? 2 : 1);
}

// Z += M_p^T y for a panel (y row-major, rows x B).
template <class T, int B>
SPECDYN_AVX2 void transpose_panel(const T* M, int64_t ld, int64_t rows, int64_t c, const T* y, T* Z) {
  // The transpose update amortizes the Z loads and stores over 4 rows.
  constexpr int R2 = B <= 4 ? 4 : 2;
  int64_t i = 0;
  for (; i + R2 <= rows; i += R2) rows_transpose_update<T, R2, B>(M + i * ld, ld, c, y + i * B, Z);
  for (; i < rows; ++i) rows_transpose_update<T, 1, B>(M + i * ld, ld, c, y + i * B, Z);
}

template <class T, int B>
SPECDYN_AVX2 void panel_kernel(const T* M, int64_t ld, int64_t rows, int64_t c, const T* X, T* y, T* Z) {
  constexpr int R1 = tile_rows<B>();
  int64_t i = 0;
  for (; i + R1 <= rows; i += R1) rows_times_block<T, R1, B>(M + i * ld, ld, c, X, y + i * B);
  for (; i < rows; ++i) rows_times_block<T, 1, B>(M + i * ld, ld, c, X, y + i * B);
  transpose_panel<T, B>(M, ld, rows, c, y, Z);
}

// kernel(std::integral_constant<int, b>{}) for a block width b in 1..8; false for wider blocks.
template <class F, int... Bs>
bool for_block_width(int b, F&& kernel, std::integer_sequence<int, Bs...>) {
  bool done = false;
  ((b == Bs + 1 ? (kernel(std::integral_constant<int, Bs + 1>{}), done = true) : false), ...);
  return done;
}
template <class F>
bool for_block_width(int b, F&& kernel) {
  return for_block_width(b, kernel, std::make_integer_sequence<int, 8>{});
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
};

// Sum of the lanes in a fixed pairwise order (GCC 12 warns spuriously inside _mm512_reduce_add_*).
template <class T>
SPECDYN_AVX512 T lane_sum(typename Zmm<T>::V v) {
  T x[Zmm<T>::kLanes];
  Zmm<T>::store(x, v);
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
SPECDYN_AVX512 void transpose_panel_512(const T* M, int64_t ld, int64_t rows, int64_t c, const T* y, T* Z) {
  constexpr int R2 = B <= 4 ? 8 : (B <= 8 ? 4 : 2);
  int64_t i = 0;
  for (; i + R2 <= rows; i += R2) rows_transpose_update_512<T, R2, B>(M + i * ld, ld, c, y + i * B, Z);
  for (; i < rows; ++i) rows_transpose_update_512<T, 1, B>(M + i * ld, ld, c, y + i * B, Z);
}

template <class T, int B>
SPECDYN_AVX512 void panel_kernel_512(const T* M, int64_t ld, int64_t rows, int64_t c, const T* X, T* y, T* Z) {
  constexpr int R1 = tile_rows_512<B>();
  int64_t i = 0;
  for (; i + R1 <= rows; i += R1) rows_times_block_512<T, R1, B>(M + i * ld, ld, c, X, y + i * B);
  for (; i < rows; ++i) rows_times_block_512<T, 1, B>(M + i * ld, ld, c, X, y + i * B);
  transpose_panel_512<T, B>(M, ld, rows, c, y, Z);
}

bool use_avx512() {
  static const bool on = __builtin_cpu_supports("avx512f") && std::getenv("SPECDYN_NO_AVX512") == nullptr;
  return on;
}

// AVX-512, else AVX2/FMA, for b <= 8; false (nothing done) otherwise.
template <class T>
bool fused_panel_any(const T* M, int64_t ld, int64_t rows, int64_t c, const T* X, int b, T* y, T* Z) {
  if (use_avx512())
    return for_block_width(b, [&](auto B) { panel_kernel_512<T, B()>(M, ld, rows, c, X, y, Z); });
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok && for_block_width(b, [&](auto B) { panel_kernel<T, B()>(M, ld, rows, c, X, y, Z); });
}

// Z += M^T y only (AVX-512, else AVX2/FMA), b <= 8; false otherwise.
template <class T>
bool transpose_panel_any(const T* M, int64_t ld, int64_t rows, int64_t c, const T* y, int b, T* Z) {
  if (use_avx512())
    return for_block_width(b, [&](auto B) { transpose_panel_512<T, B()>(M, ld, rows, c, y, Z); });
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok && for_block_width(b, [&](auto B) { transpose_panel<T, B()>(M, ld, rows, c, y, Z); });
}

}  // namespace

bool transpose_panel_f64(const double* M, int64_t ld, int64_t rows, int64_t c, const double* y, int b, double* Z) {
  return transpose_panel_any(M, ld, rows, c, y, b, Z);
}

bool transpose_panel_f32(const float* M, int64_t ld, int64_t rows, int64_t c, const float* y, int b, float* Z) {
  return transpose_panel_any(M, ld, rows, c, y, b, Z);
}

bool fused_panel_f64(const double* M, int64_t ld, int64_t rows, int64_t c, const double* X, int b, double* y,
                     double* Z) {
  return fused_panel_any(M, ld, rows, c, X, b, y, Z);
}

bool fused_panel_f32(const float* M, int64_t ld, int64_t rows, int64_t c, const float* X, int b, float* y, float* Z) {
  return fused_panel_any(M, ld, rows, c, X, b, y, Z);
}

#else
bool transpose_panel_f32(const float*, int64_t, int64_t, int64_t, const float*, int, float*) { return false; }
bool transpose_panel_f64(const double*, int64_t, int64_t, int64_t, const double*, int, double*) { return false; }
bool fused_panel_f32(const float*, int64_t, int64_t, int64_t, const float*, int, float*, float*) { return false; }
bool fused_panel_f64(const double*, int64_t, int64_t, int64_t, const double*, int, double*, double*) { return false; }
#endif

}  // namespace specdyn::lanczos::detail
