// Native benchmark of the top_singular kernel without Python in the loop.
// Build: tools/dev_build.sh -DSPECDYN_NATIVE_BENCH=ON  (binary build/dev/lanczos_native)
// Run:   build/dev/lanczos_native [--quick]
// Prints the memory read bandwidth, the fused-sweep throughput per block size,
// and cold / warm top-k times for spiked N x N float64 matrices.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "specdyn/blas.hpp"
#include "specdyn/lanczos.hpp"
#include "specdyn/rng.hpp"

using namespace specdyn;
using Clock = std::chrono::steady_clock;

template <class F>
static double best_of(int reps, F&& f) {
  double best = 1e300;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

// Read bandwidth: an OpenMP sum over a 512 MiB array (n is a multiple of 8).
static double read_bandwidth() {
  const size_t n = size_t(1) << 26;
  std::vector<double> a(n);
#pragma omp parallel for
  for (size_t i = 0; i < n; ++i) a[i] = 1.0 + 1e-9 * static_cast<double>(i & 1023);
  volatile double sink = 0;
  const double t = best_of(5, [&] {
    // Eight partial sums per thread so the loop is bound by loads, not by the add latency.
    double s = 0;
#pragma omp parallel reduction(+ : s)
    {
      double p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma omp for
      for (size_t i = 0; i < n; i += 8)
        for (int u = 0; u < 8; ++u) p[u] += a[i + u];
      for (int u = 0; u < 8; ++u) s += p[u];
    }
    sink = s;
  });
  (void)sink;
  return n * sizeof(double) / t;
}

// Row-major spiked matrix: Gaussian / sqrt(n) plus 10 outliers 6 ... 2.5.
static std::vector<double> spiked(int n, uint64_t seed) {
  std::vector<double> A(size_t(n) * n);
  rng::normal_fill(A.data(), A.size(), seed, rng::kUser, 1.0 / std::sqrt(double(n)));
  const int q = 10;
  std::vector<double> U(size_t(n) * q), V(size_t(n) * q), R(q * q);
  rng::normal_fill(U.data(), U.size(), seed, rng::kSpikes, 1.0);
  rng::normal_fill(V.data(), V.size(), seed, rng::kSpikes + 1, 1.0);
  blas::qr_explicit(n, q, U.data(), n, R.data(), q);
  blas::qr_explicit(n, q, V.data(), n, R.data(), q);
  for (int j = 0; j < q; ++j) blas::scal(n, 6.0 - 3.5 * j / (q - 1), U.data() + size_t(j) * n);
  // Row-major A (n x n) is column-major A^T: A^T += V U^T.
  blas::gemm(blas::Op::N, blas::Op::T, n, n, q, 1.0, V.data(), n, U.data(), n, 1.0, A.data(), n);
  return A;
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const std::vector<int> sizes = quick ? std::vector<int>{1024, 2048} : std::vector<int>{1024, 2048, 4096};
  const int reps = quick ? 2 : 5;
  const double bw = read_bandwidth();
  std::printf("threads: OpenMP %d, OpenBLAS %d\nmemory read bandwidth: %.1f GB/s\n", omp_get_max_threads(),
              blas::get_num_threads(), bw / 1e9);
  {
    const int n = sizes.back();
    auto A = spiked(n, 1);
    for (int b : {1, 2, 4, 8, 16}) {
      std::vector<double> X(size_t(n) * b, 1.0), Z(size_t(n) * b);
      const double t = best_of(reps, [&] { lanczos::gram_sweep<double>(A.data(), n, n, n, X.data(), b, nullptr, Z.data()); });
      std::printf("fused sweep N=%d b=%2d: %7.2f ms  %6.1f GB/s  (%3.0f%% of bandwidth)\n", n, b, t * 1e3,
                  A.size() * 8 / t / 1e9, 100 * A.size() * 8 / t / bw);
    }
  }
  std::printf("%6s %3s %10s %7s %12s %10s\n", "N", "k", "cold ms", "passes", "max resid", "GB/s read");
  for (int n : sizes) {
    auto A = spiked(n, 2);
    for (int k : {1, 5, 10}) {
      lanczos::Options opt;
      opt.tol = 1e-10;
      lanczos::Triplets<double> t;
      const double sec = best_of(reps, [&] { t = lanczos::top_singular<double>(A.data(), n, n, true, k, opt); });
      const double res = *std::max_element(t.info.residuals.begin(), t.info.residuals.end()) / t.s[0];
      std::printf("%6d %3d %10.2f %7lld %12.2e %10.1f%s\n", n, k, sec * 1e3, (long long)t.info.matrix_passes, res,
                  t.info.matrix_passes * A.size() * 8 / sec / 1e9, t.info.converged ? "" : "  NOT CONVERGED");
    }
  }
  {
    // Warm start after a relative perturbation of 1e-2 (in Frobenius norm of a Gaussian).
    const int n = sizes.back(), k = 10;
    auto A = spiked(n, 3);
    lanczos::Options opt;
    auto t0 = lanczos::top_singular<double>(A.data(), n, n, true, k, opt);
    std::vector<double> E(A.size());
    rng::normal_fill(E.data(), E.size(), 9, rng::kUser, 1e-2 * t0.s[0] / (2.0 * std::sqrt(double(n))));
    for (size_t i = 0; i < A.size(); ++i) A[i] += E[i];
    lanczos::Triplets<double> cold, warm;
    const double tc = best_of(reps, [&] { cold = lanczos::top_singular<double>(A.data(), n, n, true, k, opt); });
    const double tw =
        best_of(reps, [&] { warm = lanczos::top_singular<double>(A.data(), n, n, true, k, opt, t0.V.data(), k); });
    std::printf("warm start N=%d k=%d: cold %.2f ms (%lld passes), warm %.2f ms (%lld passes), speedup %.2f\n", n, k,
                tc * 1e3, (long long)cold.info.matrix_passes, tw * 1e3, (long long)warm.info.matrix_passes, tc / tw);
  }
  return 0;
}
