// Times the one-frame GEMMs of a streamed hop with two kernels libtorch_cpu carries: the BLAS sgemm_ behind
// torch.mm (MKL in the x86 wheels) and the native STMC step's own gemm (at::native::cpublas::brgemm, oneDNN's
// JIT micro-kernel on AVX2 CPUs), compiled in from its source so that there is one declaration of it. Driven by
// scripts/gemm_kernels.py (shapes from the model, compiled by stmc.stream.native.build).
#include "../stmc/stream/native_step.cpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc);

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

extern "C" {

// shapes: n rows of (M, K, N), row-major C[M, N] = A[M, K] @ B[K, N]. Rounds alternate the kernels over the
// whole chain; per_shape[2 * i + kernel] and chain[kernel] get medians in seconds (kernel 0: sgemm_, 1: brgemm).
void time_gemms(int64_t n, const int64_t* shapes, int64_t rounds, double* per_shape, double* chain) {
  std::mt19937 gen(0);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<std::vector<float>> a(n), b(n), c(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t M = shapes[3 * i], K = shapes[3 * i + 1], N = shapes[3 * i + 2];
    a[i].resize(M * K);
    b[i].resize(K * N);
    c[i].resize(M * N);
    for (float& x : a[i]) x = uniform(gen);
    for (float& x : b[i]) x = uniform(gen);
  }
  auto run = [&](int kernel, int64_t i) {
    const int64_t M = shapes[3 * i], K = shapes[3 * i + 1], N = shapes[3 * i + 2];
    if (kernel == 1) {
      int64_t macs = 0;
      gemm(M, N, K, a[i].data(), K, b[i].data(), c[i].data(), N, &macs);
      return;
    }
    const int m = static_cast<int>(N), nn = static_cast<int>(M), k = static_cast<int>(K);
    const float one = 1.0f, zero = 0.0f;
    sgemm_("N", "N", &m, &nn, &k, &one, b[i].data(), &m, a[i].data(), &k, &zero, c[i].data(), &m);
  };
  std::vector<std::vector<double>> times(2 * n), totals(2);
  for (int64_t r = 0; r < rounds + 10; ++r) {  // the first 10 rounds warm up (JIT, caches)
    for (int kernel = 0; kernel < 2; ++kernel) {
      const double start = now();
      for (int64_t i = 0; i < n; ++i) {
        const double t = now();
        run(kernel, i);
        if (r >= 10) times[2 * i + kernel].push_back(now() - t);
      }
      if (r >= 10) totals[kernel].push_back(now() - start);
    }
  }
  for (int64_t i = 0; i < 2 * n; ++i) per_shape[i] = median(times[i]);
  for (int kernel = 0; kernel < 2; ++kernel) chain[kernel] = median(totals[kernel]);
}

}  // extern "C"
