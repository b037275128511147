// Thin, type-generic access to the BLAS/LAPACK of scipy-openblas32.
// Every dense kernel of the core goes through here, so the library and its
// symbol prefix are named in one place. Matrices are column-major unless a
// function says otherwise; row-major NumPy arrays are passed as transposes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cblas.h>

namespace specdyn::blas {

using blas_int = int;  // scipy-openblas32: 32-bit integers

enum class Op { N, T };

inline CBLAS_TRANSPOSE cb(Op op) { return op == Op::N ? CblasNoTrans : CblasTrans; }

// C (m x n) = alpha * op(A) op(B) + beta * C, column-major.
inline void gemm(Op ta, Op tb, blas_int m, blas_int n, blas_int k, double alpha, const double* A,
                 blas_int lda, const double* B, blas_int ldb, double beta, double* C, blas_int ldc) {
  scipy_cblas_dgemm(CblasColMajor, cb(ta), cb(tb), m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm(Op ta, Op tb, blas_int m, blas_int n, blas_int k, float alpha, const float* A,
                 blas_int lda, const float* B, blas_int ldb, float beta, float* C, blas_int ldc) {
  scipy_cblas_sgemm(CblasColMajor, cb(ta), cb(tb), m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

// gemm with the same bits at any OpenMP or OpenBLAS thread count. OpenBLAS
// cuts a threaded product by its thread count, and its edge kernels round
// differently from its main ones: a 1030 x 8 x 1030 dgemm, or a 500 x 8 x 500
// one, differs between 1 and 2 threads (1024 and 2048 agree). Here C is cut
// into blocks of rows (or of columns, when C is wider than tall), fixed by the
// shape alone, each one single-threaded BLAS call; the blocks are handed out
// to OpenMP threads when the product has at least `parallel_work`
// multiply-adds and no parallel region is open. `block` rows per block, or
// 0: about kFixedRows, in an even number of blocks (at least 2 when threaded).
// Each block repacks the other operand, so smaller blocks cost more: against
// threaded OpenBLAS, an N = 2048 float32 training step took 13% longer with
// 256-row blocks, 7% with 512 and 2% with 1024. The price is a cap on threads:
// a 2048-row product uses at most two.
constexpr int64_t kFixedRows = 1024;
constexpr int64_t kFixedParallelWork = int64_t(1) << 22;  // below, thread wake-ups cost more than they save
void gemm_fixed(Op ta, Op tb, blas_int m, blas_int n, blas_int k, double alpha, const double* A, blas_int lda,
                const double* B, blas_int ldb, double beta, double* C, blas_int ldc, int64_t block = 0,
                int64_t parallel_work = kFixedParallelWork);
void gemm_fixed(Op ta, Op tb, blas_int m, blas_int n, blas_int k, float alpha, const float* A, blas_int lda,
                const float* B, blas_int ldb, float beta, float* C, blas_int ldc, int64_t block = 0,
                int64_t parallel_work = kFixedParallelWork);

// y = alpha * op(A) x + beta * y, column-major A (m x n).
inline void gemv(Op ta, blas_int m, blas_int n, double alpha, const double* A, blas_int lda,
                 const double* x, double beta, double* y) {
  scipy_cblas_dgemv(CblasColMajor, cb(ta), m, n, alpha, A, lda, x, 1, beta, y, 1);
}
inline void gemv(Op ta, blas_int m, blas_int n, float alpha, const float* A, blas_int lda,
                 const float* x, float beta, float* y) {
  scipy_cblas_sgemv(CblasColMajor, cb(ta), m, n, alpha, A, lda, x, 1, beta, y, 1);
}

// A += alpha * x y^T, column-major A (m x n).
inline void ger(blas_int m, blas_int n, double alpha, const double* x, const double* y, double* A,
                blas_int lda) {
  scipy_cblas_dger(CblasColMajor, m, n, alpha, x, 1, y, 1, A, lda);
}
inline void ger(blas_int m, blas_int n, float alpha, const float* x, const float* y, float* A,
                blas_int lda) {
  scipy_cblas_sger(CblasColMajor, m, n, alpha, x, 1, y, 1, A, lda);
}

inline double dot(blas_int n, const double* x, const double* y) { return scipy_cblas_ddot(n, x, 1, y, 1); }
inline float dot(blas_int n, const float* x, const float* y) { return scipy_cblas_sdot(n, x, 1, y, 1); }
inline double nrm2(blas_int n, const double* x) { return scipy_cblas_dnrm2(n, x, 1); }
inline float nrm2(blas_int n, const float* x) { return scipy_cblas_snrm2(n, x, 1); }
inline void axpy(blas_int n, double a, const double* x, double* y) { scipy_cblas_daxpy(n, a, x, 1, y, 1); }
inline void axpy(blas_int n, float a, const float* x, float* y) { scipy_cblas_saxpy(n, a, x, 1, y, 1); }
inline void scal(blas_int n, double a, double* x) { scipy_cblas_dscal(n, a, x, 1); }
inline void scal(blas_int n, float a, float* x) { scipy_cblas_sscal(n, a, x, 1); }

// OpenBLAS thread control (its own pthread pool, separate from OpenMP).
int get_num_threads();
void set_num_threads(int n);
const char* config();

// Asks for an OpenBLAS thread count for a scope (also left on an exception).
// Solvers that run their own threads hold OpenBLAS at one thread: its workers
// spin after each call, and on few cores they would steal the next region's
// cores. One thread also fixes the bits of the small LAPACK problems (syevd's
// depend on the count).
//
// The count is one per process, so scopes on concurrent threads share it: while
// any thread's innermost scope asks for one thread, the count is 1 for all;
// otherwise it is the largest count asked for by an innermost scope; after the
// last scope closes, it is the count found before the first one opened. (Each
// scope saving and restoring the count itself let one caller's exit give
// another's small problems two threads, with other bits, and left the process
// at one thread.)
class ThreadScope {
 public:
  explicit ThreadScope(int n);
  ~ThreadScope();
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;
};

// LAPACK (column-major, double only unless noted; small problems inside the
// solvers run in double whatever the matrix dtype).
// Symmetric eigen-decomposition: A (n x n) overwritten by eigenvectors, w ascending.
// Returns LAPACK info.
int syevd(int n, double* A, int lda, double* w);
// Thin SVD of a column-major m x n matrix: A = U diag(s) VT. U is m x min, VT is min x n.
int gesdd(int m, int n, double* A, int lda, double* s, double* U, int ldu, double* VT, int ldvt);
// Householder QR, explicit Q (m x n, m >= n) overwriting A; R (n x n, upper) into R.
int qr_explicit(int m, int n, double* A, int lda, double* R, int ldr);
int qr_explicit(int m, int n, float* A, int lda, float* R, int ldr);
// Eigen-decomposition of a symmetric tridiagonal matrix (d: diagonal n, e: off-diagonal n-1);
// d overwritten by ascending eigenvalues, Z (n x n) by eigenvectors.
int stev(int n, double* d, double* e, double* Z, int ldz);

}  // namespace specdyn::blas
