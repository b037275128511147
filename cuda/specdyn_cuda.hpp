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
