// Krylov methods for the top of a spectrum:
//  * block Golub-Kahan-Lanczos for the top-k singular triplets of a dense matrix,
//  * block Lanczos for the extreme eigenpairs of a symmetric operator (matvecs),
//  * stochastic Lanczos quadrature (SLQ) for spectral densities.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

namespace specdyn::lanczos {

struct Options {
  double tol = 1e-10;   // stop when every residual <= tol * (estimate of ||A||)
  int block = 0;        // block size; 0 chooses by measurement/heuristic
  int max_passes = 0;   // cap on passes over the matrix (A and A^T products); 0 = automatic
  int max_basis = 0;    // cap on Krylov basis columns before a restart; 0 = automatic
  uint64_t seed = 0;    // random start (counter-based stream rng::kProbes)
};

struct Info {
  int iterations = 0;          // block steps
  int restarts = 0;
  int64_t matrix_passes = 0;   // reads of the whole matrix
  bool converged = false;
  std::vector<double> residuals;  // final residual norm of each returned triplet
};

// Top-k singular triplets of the dense n x m matrix A (row-major when
// row_major, else column-major; no copy). s descending; U is n x k and V is
// m x k, both column-major. v0 (m x k0, column-major) warm-starts the right block.
template <class T>
struct Triplets {
  std::vector<double> s;
  std::vector<T> U, V;
  Info info;
};

template <class T>
Triplets<T> top_singular(const T* A, int64_t n, int64_t m, bool row_major, int k, const Options& opt,
                         const T* v0 = nullptr, int k0 = 0);

// Y (n x b, column-major) = Op X for a symmetric operator.
using MatMat = std::function<void(const double* X, double* Y, int b)>;

enum class Which { Largest, Both };

struct Eigs {
  std::vector<double> values;   // Largest: k descending. Both: k largest then k smallest ascending? see impl
  std::vector<double> vectors;  // n x (#values), column-major
  Info info;
};

Eigs top_eigs(const MatMat& op, int64_t n, int k, Which which, const Options& opt,
              const double* v0 = nullptr, int k0 = 0);

// Stochastic Lanczos quadrature of a symmetric operator: for each probe the
// Ritz values (nodes) and squared first components (weights, summing to 1).
struct Quadrature {
  std::vector<double> nodes, weights;  // probes x degree, row per probe
  int probes = 0, degree = 0;
};

Quadrature slq(const MatMat& op, int64_t n, int probes, int degree, uint64_t seed);

}  // namespace specdyn::lanczos
