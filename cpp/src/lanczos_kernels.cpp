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

#include "fused_panel.hpp"

namespace specdyn::lanczos::detail {

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))

namespace {

// The loops are written once (panel_loops.inc) and compiled once per instruction
// set, each copy in its own namespace under that set's target pragma: a single
// template carrying the AVX-512 target would let the compiler put EVEX code into
// the AVX2 instantiation, which an AVX2-only CPU cannot run.

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {

// 256-bit vectors: double (4 lanes) and float (8 lanes, accumulated in float like sgemm).
// The lanes are summed halves first: (x0 + x2) + (x1 + x3) for 4 lanes.
template <class T>
struct Vec;
template <>
struct Vec<double> {
  using V = __m256d;
  static constexpr int kLanes = 4;
  // The loops run on whole 32-byte vectors of a row that starts inside one
  // (see Vec in avx512): a 32-byte load at NumPy's 16-byte offset crosses a
  // cache line at every other load.
  static constexpr bool kLines = true;
  using Mask = __m256i;  // all ones in the lanes taken
  static Mask lanes_from(int s) { return _mm256_cmpgt_epi64(_mm256_setr_epi64x(1, 2, 3, 4), _mm256_set1_epi64x(s)); }
  static V maskz_load(Mask k, const double* p) { return _mm256_maskload_pd(p, k); }
  static void mask_store(double* p, Mask k, V v) { _mm256_maskstore_pd(p, k, v); }
  static V mask_fmadd(V a, V b, V c, Mask k) {  // c where not k
    return _mm256_blendv_pd(c, _mm256_fmadd_pd(a, b, c), _mm256_castsi256_pd(k));
  }
  // r[q] = v[(q + s) mod 4], as pairs of 32-bit lanes
  static V rotate(V v, int s) {
    const __m256i q = _mm256_and_si256(_mm256_add_epi32(_mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), _mm256_set1_epi32(s)),
                                       _mm256_set1_epi32(3));
    const __m256i idx = _mm256_add_epi32(_mm256_add_epi32(q, q), _mm256_setr_epi32(0, 1, 0, 1, 0, 1, 0, 1));
    return _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(v), idx));
  }
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V set1(double x) { return _mm256_set1_pd(x); }
  static double sum(V v);
};
template <>
struct Vec<float> {
  using V = __m256;
  static constexpr int kLanes = 8;
  static constexpr bool kLines = true;
  using Mask = __m256i;
  static Mask lanes_from(int s) {
    return _mm256_cmpgt_epi32(_mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8), _mm256_set1_epi32(s));
  }
  static V maskz_load(Mask k, const float* p) { return _mm256_maskload_ps(p, k); }
  static void mask_store(float* p, Mask k, V v) { _mm256_maskstore_ps(p, k, v); }
  static V mask_fmadd(V a, V b, V c, Mask k) {
    return _mm256_blendv_ps(c, _mm256_fmadd_ps(a, b, c), _mm256_castsi256_ps(k));
  }
  // r[q] = v[(q + s) mod 8]
  static V rotate(V v, int s) {
    return _mm256_permutevar8x32_ps(
        v, _mm256_and_si256(_mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(s)),
                            _mm256_set1_epi32(7)));
  }
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static float sum(V v);
};
template <class T>
T halves_first(typename Vec<T>::V v) {
  T x[Vec<T>::kLanes];
  Vec<T>::store(x, v);
  for (int w = Vec<T>::kLanes / 2; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) x[i] += x[i + w];
  return x[0];
}
inline double Vec<double>::sum(V v) { return halves_first<double>(v); }
inline float Vec<float>::sum(V v) { return halves_first<float>(v); }

// Rows per register tile: accumulators R*B plus R row vectors fit the 16 ymm registers.
template <int B>
constexpr int tile_rows() {
  return B <= 2 ? 4 : (B <= 5 ? 2 : 1);
}
// The transpose update amortizes the Z loads and stores over 4 rows.
template <int B>
constexpr int update_rows() {
  return B <= 4 ? 4 : 2;
}
#include "panel_loops.inc"

}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f")
namespace avx512 {

// 512-bit vectors and 32 registers, for double (8 lanes) and float (16 lanes,
// accumulated in float like sgemm): blocks up to 8; wider ones measured slower
// than OpenBLAS. The lanes are summed in pairs: ((x0 + x1) + (x2 + x3)) + ...
// (GCC 12 warns spuriously inside _mm512_reduce_add_*).
template <class T>
struct Vec;
template <>
struct Vec<double> {
  using V = __m512d;
  static constexpr int kLanes = 8;
  // A vector is a 64-byte cache line: the loops can run on whole lines of a
  // row that starts inside one (see over_columns in panel_loops.inc), with
  // masked loads at its two ends and the lanes rotated back before the sum.
  static constexpr bool kLines = true;
  using Mask = __mmask8;
  static Mask lanes_from(int s) { return static_cast<Mask>(0xFFu << s); }  // lanes s .. 7
  static V maskz_load(Mask k, const double* p) { return _mm512_maskz_loadu_pd(k, p); }
  static void mask_store(double* p, Mask k, V v) { _mm512_mask_storeu_pd(p, k, v); }
  static V mask_fmadd(V a, V b, V c, Mask k) { return _mm512_mask3_fmadd_pd(a, b, c, k); }  // c where not k
  // r[q] = v[(q + s) mod 8]
  static V rotate(V v, int s) {
    const __m512i idx =
        _mm512_and_si512(_mm512_add_epi64(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), _mm512_set1_epi64(s)),
                         _mm512_set1_epi64(7));
    return _mm512_mask_permutexvar_pd(v, 0xFF, idx, v);  // (all lanes; the unmasked form warns spuriously)
  }
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V set1(double x) { return _mm512_set1_pd(x); }
  static double sum(V v);
};
template <>
struct Vec<float> {
  using V = __m512;
  static constexpr int kLanes = 16;
  static constexpr bool kLines = true;
  using Mask = __mmask16;
  static Mask lanes_from(int s) { return static_cast<Mask>(0xFFFFu << s); }  // lanes s .. 15
  static V maskz_load(Mask k, const float* p) { return _mm512_maskz_loadu_ps(k, p); }
  static void mask_store(float* p, Mask k, V v) { _mm512_mask_storeu_ps(p, k, v); }
  static V mask_fmadd(V a, V b, V c, Mask k) { return _mm512_mask3_fmadd_ps(a, b, c, k); }
  // r[q] = v[(q + s) mod 16]
  static V rotate(V v, int s) {
    const __m512i idx = _mm512_and_si512(
        _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(s)),
        _mm512_set1_epi32(15));
    return _mm512_mask_permutexvar_ps(v, 0xFFFF, idx, v);
  }
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static float sum(V v);
};
template <class T>
T in_pairs(typename Vec<T>::V v) {
  T x[Vec<T>::kLanes];
  Vec<T>::store(x, v);
  for (int w = 1; w < Vec<T>::kLanes; w *= 2)
    for (int i = 0; i < Vec<T>::kLanes; i += 2 * w) x[i] += x[i + w];
  return x[0];
}
inline double Vec<double>::sum(V v) { return in_pairs<double>(v); }
inline float Vec<float>::sum(V v) { return in_pairs<float>(v); }

// Up to b = 6, four product rows (24 accumulators) and eight update rows (the
// broadcasts spill, still faster): the update then reads and writes Z once per
// eight rows of the panel, and the product reads X once per four. With 3 and 4
// rows before, a pass of b = 5 over a 2048 x 2048 float32 matrix took 0.88 ms
// and one of b = 6 1.05 ms; now 0.70 and 0.79 (b = 4: 0.60).
template <int B>
constexpr int tile_rows() {
  return B <= 2 ? 8 : (B <= 6 ? 4 : (B <= 12 ? 2 : 1));
}
template <int B>
constexpr int update_rows() {
  return B <= 6 ? 8 : (B <= 8 ? 4 : 2);
}
#include "panel_loops.inc"

}  // namespace avx512
#pragma GCC pop_options

// kernel(std::integral_constant<int, b>{}) for a block width b in 1..8; false for wider blocks.
template <class F, int... Bs>
bool for_block_width(int b, F&& kernel, std::integer_sequence<int, Bs...>) {
  bool done = false;
  ((b == Bs + 1 ? (kernel(std::integral_constant<int, Bs + 1>{}), done = true) : false), ...);
  return done;
}

bool use_avx512() {
  static const bool on = __builtin_cpu_supports("avx512f") && std::getenv("SPECDYN_NO_AVX512") == nullptr;
  return on;
}

// kernel(isa, B) with isa the Kernels of AVX-512, else of AVX2/FMA, and B the
// block width b <= 8 as a constant; false (nothing done) otherwise.
template <class F>
bool on_best_kernels(int b, F&& kernel) {
  auto widths = std::make_integer_sequence<int, 8>{};
  if (use_avx512()) return for_block_width(b, [&](auto B) { kernel(avx512::Kernels{}, B); }, widths);
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok && for_block_width(b, [&](auto B) { kernel(avx2::Kernels{}, B); }, widths);
}

template <class T>
bool fused_panel_any(const T* M, int64_t ld, int64_t rows, int64_t c, const T* X, int b, T* y, T* Z,
                     const T* ahead) {
  return on_best_kernels(
      b, [&](auto isa, auto B) { decltype(isa)::template fused<T, B()>(M, ld, rows, c, X, y, Z, ahead); });
}

template <class T>
bool pipelined_panel_any(const T* M, int64_t ld, int64_t rows, int64_t c, const T* X, int b, T* y, const T* P,
                         const T* yp, T* Z) {
  bool done = false;
  on_best_kernels(b, [&](auto isa, auto B) {
    done = decltype(isa)::template pipelined<T, B()>(M, ld, rows, c, X, y, P, yp, Z);
  });
  return done;
}

template <class T>
bool transpose_panel_any(const T* M, int64_t ld, int64_t rows, int64_t c, const T* y, int b, T* Z) {
  return on_best_kernels(b, [&](auto isa, auto B) { decltype(isa)::template transpose<T, B()>(M, ld, rows, c, y, Z); });
}

}  // namespace

int preferred_chunk_width() { return use_avx512() ? 6 : 4; }

bool pipelined_panel_supported(int b) {
  bool ok = false;
  on_best_kernels(b, [&](auto isa, auto B) { ok = decltype(isa)::template pipelines<B()>(); });
  return ok;
}

bool pipelined_panel_f64(const double* M, int64_t ld, int64_t rows, int64_t c, const double* X, int b, double* y,
                         const double* P, const double* yp, double* Z) {
  return pipelined_panel_any(M, ld, rows, c, X, b, y, P, yp, Z);
}

bool pipelined_panel_f32(const float* M, int64_t ld, int64_t rows, int64_t c, const float* X, int b, float* y,
                         const float* P, const float* yp, float* Z) {
  return pipelined_panel_any(M, ld, rows, c, X, b, y, P, yp, Z);
}

bool transpose_panel_f64(const double* M, int64_t ld, int64_t rows, int64_t c, const double* y, int b, double* Z) {
  return transpose_panel_any(M, ld, rows, c, y, b, Z);
}

bool transpose_panel_f32(const float* M, int64_t ld, int64_t rows, int64_t c, const float* y, int b, float* Z) {
  return transpose_panel_any(M, ld, rows, c, y, b, Z);
}

bool fused_panel_f64(const double* M, int64_t ld, int64_t rows, int64_t c, const double* X, int b, double* y,
                     double* Z, const double* ahead) {
  return fused_panel_any(M, ld, rows, c, X, b, y, Z, ahead);
}

bool fused_panel_f32(const float* M, int64_t ld, int64_t rows, int64_t c, const float* X, int b, float* y, float* Z,
                     const float* ahead) {
  return fused_panel_any(M, ld, rows, c, X, b, y, Z, ahead);
}

#else
int preferred_chunk_width() { return 4; }
bool pipelined_panel_supported(int) { return false; }
bool pipelined_panel_f64(const double*, int64_t, int64_t, int64_t, const double*, int, double*, const double*,
                         const double*, double*) {
  return false;
}
bool pipelined_panel_f32(const float*, int64_t, int64_t, int64_t, const float*, int, float*, const float*,
                         const float*, float*) {
  return false;
}
bool transpose_panel_f32(const float*, int64_t, int64_t, int64_t, const float*, int, float*) { return false; }
bool transpose_panel_f64(const double*, int64_t, int64_t, int64_t, const double*, int, double*) { return false; }
bool fused_panel_f32(const float*, int64_t, int64_t, int64_t, const float*, int, float*, float*, const float*) {
  return false;
}
bool fused_panel_f64(const double*, int64_t, int64_t, int64_t, const double*, int, double*, double*, const double*) {
  return false;
}
#endif

}  // namespace specdyn::lanczos::detail
