// Host-callable entry points of the CUDA kernels (no CUDA types in the signatures,
// so the pybind11 module compiles with the host compiler).
#pragma once

namespace specdyn::cuda {
int device_count();  // -1 when the driver is unusable
const char* error_string(int code);
int synchronize();
// Device pointer `out` of n elements; returns a cudaError_t code (0 = success).
int normal_fill(double* out, unsigned long long n, unsigned long long seed, unsigned long long stream, double sigma);
int normal_fill(float* out, unsigned long long n, unsigned long long seed, unsigned long long stream, double sigma);
// Fill on the device, copy into host memory (tests and checks without CuPy).
int normal_fill_to_host(double* host, unsigned long long n, unsigned long long seed, unsigned long long stream,
                        double sigma);
}  // namespace specdyn::cuda

// ---------------------------------------------------------------------------
// Device Krylov solvers (cuda/lanczos.cu, cuda/lanczos_rng.cu): the building
// blocks the device backend (specdyn/krylov/device_backend.hpp) calls. All pointers
// are device pointers unless named host; every function returns a cudaError_t
// code (0 = success). M is a row-major r x c view with leading dimension ld;
// blocks of vectors are column-major. Kernels run on the legacy default stream.
namespace specdyn::cuda::krylov {
int alloc(void** ptr, unsigned long long bytes);
int release(void* ptr);
int to_host(void* host, const void* dev, unsigned long long bytes);
int to_device(void* dev, const void* host, unsigned long long bytes);
int device_copy(void* dst, const void* src, unsigned long long bytes);
int multiprocessors(int* count);
// Y (r x nb, ldy) = M X for X (c x nb, ldx), 1 <= nb <= 16.
int mx(const float* M, long long ld, long long r, long long c, const float* X, long long ldx, int nb, float* Y,
       long long ldy);
int mx(const double* M, long long ld, long long r, long long c, const double* X, long long ldx, int nb, double* Y,
       long long ldy);
// Z (c x nb, ldz) = M^T Y for Y (r x nb, ldy), 1 <= nb <= 16; partial holds slabs * c * nb elements.
int mty(const float* M, long long ld, long long r, long long c, const float* Y, long long ldy, int nb, float* Z,
        long long ldz, long long slabs, float* partial);
int mty(const double* M, long long ld, long long r, long long c, const double* Y, long long ldy, int nb, double* Z,
        long long ldz, long long slabs, double* partial);
// C (nq x nb, ld nq) = Q^T W for Q (d x nq, ldq) and W (d x nb, ldw).
int dots(long long d, const double* Q, long long ldq, int nq, const double* W, long long ldw, int nb, double* C);
// W (d x nb, ldw) = alpha Q C + beta W for C (nq x nb, ldc); beta == 0 never reads W.
int combine(long long d, int nq, int nb, double alpha, const double* Q, long long ldq, const double* C, int ldc,
            double beta, double* W, long long ldw);
int scale(long long n, double s, double* x);
int convert(const double* x, float* y, long long n);
int convert(const float* x, double* y, long long n);
// Element offset + i of the Gaussian stream (seed, stream) into out[i], as rng::normal_fill.
int normal_fill_offset(double* out, unsigned long long n, unsigned long long seed, unsigned long long stream,
                       unsigned long long offset);
// max |M_ij| (NaN or inf when an entry is not finite) and max |M_ij - M_ji| (square M), to the host.
int abs_max(const float* M, long long ld, long long r, long long c, double* host_result);
int abs_max(const double* M, long long ld, long long r, long long c, double* host_result);
int asymmetry(const float* M, long long ld, long long n, double* host_result);
int asymmetry(const double* M, long long ld, long long n, double* host_result);
// M += U W^T (rank q; U r x q, W c x q, column-major doubles): spiked test matrices.
int add_low_rank(float* M, long long ld, long long r, long long c, const double* U, const double* W, int q);
int add_low_rank(double* M, long long ld, long long r, long long c, const double* U, const double* W, int q);
int synchronize();
}  // namespace specdyn::cuda::krylov
