#include "specdyn/blas.hpp"

#include <algorithm>
#include <map>
#include <mutex>
#include <vector>

#include <omp.h>
#include <pthread.h>

extern "C" {
int scipy_openblas_get_num_threads(void);
void scipy_openblas_set_num_threads(int);
char* scipy_openblas_get_config(void);
void scipy_dsyevd_(const char*, const char*, const int*, double*, const int*, double*, double*,
                   const int*, int*, const int*, int*, size_t, size_t);
void scipy_dgesdd_(const char*, const int*, const int*, double*, const int*, double*, double*,
                   const int*, double*, const int*, double*, const int*, int*, int*, size_t);
void scipy_dgeqrf_(const int*, const int*, double*, const int*, double*, double*, const int*, int*);
void scipy_dorgqr_(const int*, const int*, const int*, double*, const int*, const double*, double*,
                   const int*, int*);
void scipy_sgeqrf_(const int*, const int*, float*, const int*, float*, float*, const int*, int*);
void scipy_sorgqr_(const int*, const int*, const int*, float*, const int*, const float*, float*,
                   const int*, int*);
void scipy_dstev_(const char*, const int*, double*, double*, double*, const int*, double*, int*, size_t);
}

namespace specdyn::blas {

int get_num_threads() { return scipy_openblas_get_num_threads(); }
void set_num_threads(int n) { scipy_openblas_set_num_threads(n); }
const char* config() { return scipy_openblas_get_config(); }

namespace {

// The scopes of every thread (see ThreadScope): what each thread's innermost
// scope asks for, tallied under one lock.
struct Scopes {
  std::mutex mu;
  int open = 0;            // scopes open in the process
  int base = 0;            // the count before the first of them opened
  int one = 0;             // threads whose innermost scope asks for one thread
  std::map<int, int> more; // innermost requests for more: count -> threads
  void tally(int n, int delta) {
    if (n <= 1) {
      one += delta;
    } else if ((more[n] += delta) == 0) {
      more.erase(n);
    }
  }
  void apply() {
    const int want = open == 0 ? base : one > 0 ? 1 : more.empty() ? base : more.rbegin()->first;
    if (get_num_threads() != want) set_num_threads(want);
  }
};
thread_local std::vector<int> innermost;  // this thread's open scopes, innermost last

Scopes& scopes() {
  // (Leaked: scopes may close during static destruction.) A forked child has
  // only the forking thread: its tallies start again from that thread's scopes,
  // and the lock, held across the fork, is free in both processes.
  static Scopes* s = [] {
    auto* p = new Scopes;
    pthread_atfork([] { scopes().mu.lock(); }, [] { scopes().mu.unlock(); },
                   [] {
                     Scopes& c = scopes();
                     c.one = 0;
                     c.more.clear();
                     c.open = static_cast<int>(innermost.size());
                     if (!innermost.empty()) c.tally(innermost.back(), +1);
                     c.mu.unlock();
                   });
    return p;
  }();
  return *s;
}

}  // namespace

ThreadScope::ThreadScope(int n) {
  Scopes& s = scopes();
  std::lock_guard<std::mutex> lk(s.mu);
  if (s.open++ == 0) s.base = get_num_threads();
  if (!innermost.empty()) s.tally(innermost.back(), -1);
  innermost.push_back(std::max(1, n));
  s.tally(innermost.back(), +1);
  s.apply();
}

ThreadScope::~ThreadScope() {
  Scopes& s = scopes();
  std::lock_guard<std::mutex> lk(s.mu);
  s.tally(innermost.back(), -1);
  innermost.pop_back();
  if (!innermost.empty()) s.tally(innermost.back(), +1);
  --s.open;
  s.apply();
}

// Rows per block of gemm_fixed's default: about kFixedRows, an even number of
// blocks (two or four threads share them evenly), whole 32-row tiles; one block
// for a product too small to thread.
static int64_t fixed_block(int64_t len, bool threaded) {
  if (!threaded || len <= 32) return std::max<int64_t>(len, 1);
  const int64_t nb = std::max<int64_t>(2, 2 * ((len + kFixedRows) / (2 * kFixedRows)));
  return ((len + nb - 1) / nb + 31) / 32 * 32;
}

template <class T>
static void gemm_fixed_impl(Op ta, Op tb, blas_int m, blas_int n, blas_int k, T alpha, const T* A, blas_int lda,
                            const T* B, blas_int ldb, T beta, T* C, blas_int ldc, int64_t block,
                            int64_t parallel_work) {
  if (m <= 0 || n <= 0) return;
  const bool by_rows = m >= n;
  const int64_t len = by_rows ? m : n;
  // The blocks depend on the shape alone (never on whether a region is open),
  // so the bits do too.
  const bool big = int64_t(m) * n * k >= parallel_work;
  if (block <= 0) block = fixed_block(len, big);
  const int64_t nb = (len + block - 1) / block;
  ThreadScope one(1);
#pragma omp parallel for schedule(dynamic, 1) if (big && nb > 1 && !omp_in_parallel())
  for (int64_t c = 0; c < nb; ++c) {
    const int64_t i0 = c * block;
    const blas_int w = static_cast<blas_int>(std::min(block, len - i0));
    if (by_rows)  // rows i0.. of op(A) and of C
      gemm(ta, tb, w, n, k, alpha, ta == Op::N ? A + i0 : A + i0 * lda, lda, B, ldb, beta, C + i0, ldc);
    else          // columns i0.. of op(B) and of C
      gemm(ta, tb, m, w, k, alpha, A, lda, tb == Op::N ? B + i0 * ldb : B + i0, ldb, beta, C + i0 * ldc, ldc);
  }
}

void gemm_fixed(Op ta, Op tb, blas_int m, blas_int n, blas_int k, double alpha, const double* A, blas_int lda,
                const double* B, blas_int ldb, double beta, double* C, blas_int ldc, int64_t block,
                int64_t parallel_work) {
  gemm_fixed_impl(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, block, parallel_work);
}
void gemm_fixed(Op ta, Op tb, blas_int m, blas_int n, blas_int k, float alpha, const float* A, blas_int lda,
                const float* B, blas_int ldb, float beta, float* C, blas_int ldc, int64_t block,
                int64_t parallel_work) {
  gemm_fixed_impl(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, block, parallel_work);
}

int syevd(int n, double* A, int lda, double* w) {
  int info = 0, lwork = -1, liwork = -1, iwq = 0;
  double wq = 0;
  scipy_dsyevd_("V", "L", &n, A, &lda, w, &wq, &lwork, &iwq, &liwork, &info, 1, 1);
  lwork = std::max(1, static_cast<int>(wq));
  liwork = std::max(1, iwq);
  std::vector<double> work(lwork);
  std::vector<int> iwork(liwork);
  scipy_dsyevd_("V", "L", &n, A, &lda, w, work.data(), &lwork, iwork.data(), &liwork, &info, 1, 1);
  return info;
}

int gesdd(int m, int n, double* A, int lda, double* s, double* U, int ldu, double* VT, int ldvt) {
  int info = 0, lwork = -1;
  double wq = 0;
  std::vector<int> iwork(8 * std::min(m, n) + 1);
  scipy_dgesdd_("S", &m, &n, A, &lda, s, U, &ldu, VT, &ldvt, &wq, &lwork, iwork.data(), &info, 1);
  lwork = std::max(1, static_cast<int>(wq));
  std::vector<double> work(lwork);
  scipy_dgesdd_("S", &m, &n, A, &lda, s, U, &ldu, VT, &ldvt, work.data(), &lwork, iwork.data(), &info,
                1);
  return info;
}

template <class T, class Geqrf, class Orgqr>
static int qr_impl(int m, int n, T* A, int lda, T* R, int ldr, Geqrf geqrf, Orgqr orgqr) {
  if (n == 0) return 0;
  int info = 0, lwork = -1;
  std::vector<T> tau(n);
  T wq = 0;
  geqrf(&m, &n, A, &lda, tau.data(), &wq, &lwork, &info);
  lwork = std::max(1, static_cast<int>(wq));
  std::vector<T> work(lwork);
  geqrf(&m, &n, A, &lda, tau.data(), work.data(), &lwork, &info);
  if (info) return info;
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < n; ++i) R[i + static_cast<size_t>(j) * ldr] = i <= j ? A[i + static_cast<size_t>(j) * lda] : T(0);
  lwork = -1;
  orgqr(&m, &n, &n, A, &lda, tau.data(), &wq, &lwork, &info);
  lwork = std::max(1, static_cast<int>(wq));
  work.assign(lwork, T(0));
  orgqr(&m, &n, &n, A, &lda, tau.data(), work.data(), &lwork, &info);
  return info;
}

int qr_explicit(int m, int n, double* A, int lda, double* R, int ldr) {
  return qr_impl(m, n, A, lda, R, ldr, scipy_dgeqrf_, scipy_dorgqr_);
}
int qr_explicit(int m, int n, float* A, int lda, float* R, int ldr) {
  return qr_impl(m, n, A, lda, R, ldr, scipy_sgeqrf_, scipy_sorgqr_);
}

int stev(int n, double* d, double* e, double* Z, int ldz) {
  int info = 0;
  std::vector<double> work(std::max(1, 2 * n - 2));
  scipy_dstev_("V", &n, d, e, Z, &ldz, work.data(), &info, 1);
  return info;
}

}  // namespace specdyn::blas
