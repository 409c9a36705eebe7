// The STMC step of a U-Net as one native call per chunk (see stmc/stream/native.py, which compiles and binds it).
//
// Per input frame: the compressed spectrum goes into layer 0's current-frame buffer; every layer gathers its
// shift register plus the current frame into one GEMM operand, runs one GEMM (libtorch_cpu's brgemm), adds
// bias and PReLU, zeroes frames outside each stream's [0, end) and writes the result straight into the next
// layer's current-frame buffer (and into the skip delay line or the decoder buffer it feeds); then the
// register shifts by one frame. The arithmetic is the PyTorch engine's (stmc/stream/engines.py); only the
// per-operator dispatch and allocation are gone. All buffers are owned and laid out by Python.
//
// The same code runs offline inference of a whole sequence (stmc.stream.native.NativeOffline, the benchmark's floor):
// its "batch" rows are then the sequence's frames, each layer reads its zero-padded input sequence (cur null,
// step 1) and there is nothing to shift.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <exception>
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define STMC_BF16_KERNELS 1
#else
#define STMC_BF16_KERNELS 0
#endif

// libtorch_cpu's small-GEMM entry: oneDNN's JIT batch-reduce GEMM micro-kernel where the CPU has AVX2 (cached
// per shape), else its BLAS. Row-major: C[M, N] = A[M, K] @ B[K, N] (+ C when add_C).
namespace c10 {
struct BFloat16;  // 16 bits; only passed through as a pointer type here
}  // namespace c10
namespace at::native::cpublas {
void brgemm(int64_t M, int64_t N, int64_t K, int64_t ld_a, int64_t ld_b, int64_t ld_c, bool add_C, const float* A,
            const float* B, float* C, bool is_vnni);
void brgemm(int64_t M, int64_t N, int64_t K, int64_t ld_a, int64_t ld_b, int64_t ld_c, bool add_C,
            const c10::BFloat16* A, const c10::BFloat16* B, float* C, bool is_vnni);
void brgemm_release(bool is_vnni);
}  // namespace at::native::cpublas

extern "C" {

// One temporal layer; mirrors stmc.stream.native.LayerSpec field for field.
struct LayerSpec {
  int64_t transposed;  // decoder (tSTMC) layer: transposed in frequency
  int64_t hist;        // frames in the shift register: past + future
  int64_t step;        // frames between consecutive rows' first frames in reg: hist (streams), 1 (a sequence)
  int64_t delay;       // output time = input time - delay (cumulative look-ahead up to this layer)
  int64_t kernel;      // frequency kernel (taps), zero-padded by kernel / 2 on both sides
  int64_t stride;      // frequency stride (of the convolution, or of the transposed one)
  int64_t in_bins, in_ch, out_bins, out_ch;
  const float* matrix;  // GEMM matrix: encoder rows (tap, freq tap, c); decoder rows (tap, c), columns (freq tap, cout)
  const void* packed;   // the same matrix for the bf16 GEMM (stmc_pack_bf16), or null: float32 GEMMs
  const float* bias;    // [out_ch]
  const float* prelu;   // [out_ch] or null (final layer)
  float* reg;           // streams: [B, hist, in_bins, in_ch]; a sequence: its padded input frames
  float* cur;           // streams: [B, in_bins, in_ch], the input frame being processed; a sequence: null
  float* dst;           // output rows go to channels [0, out_ch) of [B, out_bins, dst_ch]
  int64_t dst_ch;
  float* line;          // skip delay line [B, line_len, out_bins, out_ch], or null
  int64_t line_len;
  float* skip;          // skip destination: channels [skip_ch - out_ch, skip_ch) of [B, out_bins, skip_ch], or null
  int64_t skip_ch;
};

// The whole step; mirrors stmc.stream.native.StepSpec.
struct StepSpec {
  int64_t n_layers, batch, n_freq;
  int64_t compress;  // 0: the spectrum enters as is; 1: X * (|X|^2 + feature_eps)^exponent
  double exponent;
  double feature_eps;  // keeps the compression finite at |X| = 0
  double bound_eps;    // the mask bound's floor on |z|: z * tanh(|z|) / max(|z|, bound_eps)
  float* input;   // where the compressed spectrum goes: layer 0's current frame (or its first sequence frame)
  const LayerSpec* layers;
  float* cols;    // GEMM operand scratch, the largest layer's
  float* spread;  // decoder GEMM output before the overlap-add in frequency
  float* mask;    // [B, n_freq, 2]: the last layer's output, before the bound
  void* operand;  // bf16 GEMMs: the left operand rounded to bfloat16 (stmc_bf16_operand_bytes), else null
  int64_t macs;   // multiply-accumulates done so far (counted per GEMM)
};

}  // extern "C"

namespace {

// y[rows, cols] (row stride ldy) = x[rows, inner] (row stride ldx) @ w[inner, cols]
void gemm(int64_t rows, int64_t cols, int64_t inner, const float* x, int64_t ldx, const float* w, float* y,
          int64_t ldy, int64_t* macs) {
  at::native::cpublas::brgemm(rows, cols, inner, ldx, cols, ldy, false, x, w, y, false);
  *macs += rows * cols * inner;
}

// ---- bfloat16 GEMMs with float32 accumulation ----
// Operands are rounded to bfloat16 (round to nearest even); products and sums are float32. Where the compiler
// targets AVX512-BF16 (with AVX512BW/VL, for the masked 16-bit stores), the right operand is packed as [ceil(inner / 2)][cols rounded up to 16][2] bfloat16 pairs (the
// VNNI layout) and the product runs on libtorch_cpu's bf16 brgemm (oneDNN's JIT vdpbf16ps micro-kernel: 10 % faster
// than the hand-written one it replaced, same sums, docs/benchmarks.md); elsewhere the same rounded operands are
// stored as float32 and go through the float32 GEMM (the same numbers up to the order of the sums: bf16 x bf16
// products are exact in float32). On the kernels a layer's left operand (im2col rows) is written straight as
// bfloat16 (Bf16Rows), without a float32 copy between: ~10 us less per causal hop on Zen 4.

uint16_t to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN stays NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float rounded_bf16(float value) {
  const uint32_t bits = static_cast<uint32_t>(to_bf16(value)) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

constexpr int64_t LANES = 16;  // float32 lanes of a 512-bit register: the packed matrix's column block

int64_t padded_cols(int64_t cols) { return (cols + LANES - 1) / LANES * LANES; }

#if STMC_BF16_KERNELS
// n floats as n bfloat16 values (round to nearest even), written from out[0] on.
void bf16_run(const float* x, int64_t n, uint16_t* out) {
  int64_t k = 0;
  for (; k + LANES <= n; k += LANES)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + k)));
  if (k < n) {
    const auto part = static_cast<__mmask16>((1u << (n - k)) - 1);
    _mm256_mask_storeu_epi16(out + k, part, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(part, x + k)));
  }
}
#endif

// Bytes of the left-operand scratch of a bf16 GEMM with `rows` x `inner` operands.
int64_t bf16_operand_bytes(int64_t rows, int64_t inner) {
  return STMC_BF16_KERNELS ? rows * ((inner + 1) / 2) * 4 : rows * inner * 4;
}

// Bytes of a packed inner x cols matrix.
int64_t bf16_packed_bytes(int64_t inner, int64_t cols) {
  return STMC_BF16_KERNELS ? (inner + 1) / 2 * padded_cols(cols) * 4 : inner * cols * 4;
}

void pack_bf16(int64_t inner, int64_t cols, const float* w, void* packed) {
#if STMC_BF16_KERNELS
  const int64_t ld = padded_cols(cols), pairs = (inner + 1) / 2;
  auto* out = static_cast<uint16_t*>(packed);
  std::memset(out, 0, pairs * ld * 2 * sizeof(uint16_t));
  for (int64_t k = 0; k < inner; ++k)
    for (int64_t n = 0; n < cols; ++n) out[((k / 2) * ld + n) * 2 + k % 2] = to_bf16(w[k * cols + n]);
#else
  auto* out = static_cast<float*>(packed);
  for (int64_t i = 0; i < inner * cols; ++i) out[i] = rounded_bf16(w[i]);
#endif
}

// The left operand of a GEMM, written run by run into row-major rows: float32 rows, or bfloat16 rows (each
// padded to whole pairs, the VNNI layout's unit) that the bf16 kernels read.
struct Float32Rows {
  float* data;
  int64_t ld;
  void copy(int64_t r, int64_t k, const float* x, int64_t n) { std::memcpy(data + r * ld + k, x, n * sizeof(float)); }
  void zero(int64_t r, int64_t k, int64_t n) { std::memset(data + r * ld + k, 0, n * sizeof(float)); }
};

#if STMC_BF16_KERNELS
struct Bf16Rows {
  uint16_t* data;
  int64_t ld;  // inner rounded up to even
  void copy(int64_t r, int64_t k, const float* x, int64_t n) { bf16_run(x, n, data + r * ld + k); }
  void zero(int64_t r, int64_t k, int64_t n) { std::memset(data + r * ld + k, 0, n * sizeof(uint16_t)); }
};

// y[rows, cols] = A @ packed on libtorch_cpu's bf16 brgemm, float32 sums; fill(a) writes A[rows, inner] as
// bfloat16 through the Bf16Rows a over `operand`.
template <class Fill>
void bf16_product(int64_t rows, int64_t cols, int64_t inner, Fill&& fill, const void* packed, void* operand,
                  float* y, int64_t ldy, int64_t* macs) {
  Bf16Rows a{static_cast<uint16_t*>(operand), (inner + 1) / 2 * 2};
  fill(a);
  if (a.ld > inner)
    for (int64_t r = 0; r < rows; ++r) a.zero(r, inner, 1);
  at::native::cpublas::brgemm(rows, cols, a.ld, a.ld, padded_cols(cols), ldy, false,
                              reinterpret_cast<const c10::BFloat16*>(a.data), static_cast<const c10::BFloat16*>(packed),
                              y, true);
  at::native::cpublas::brgemm_release(true);  // frees AMX tile state where oneDNN used it; nothing elsewhere
  *macs += rows * cols * inner;
}
#endif

// y[rows, cols] = bf16(x[rows, inner]) @ packed, float32 sums; `operand` is the scratch for bf16(x).
void gemm_bf16(int64_t rows, int64_t cols, int64_t inner, const float* x, int64_t ldx, const void* packed,
               void* operand, float* y, int64_t ldy, int64_t* macs) {
#if STMC_BF16_KERNELS
  auto fill = [&](Bf16Rows& a) {
    for (int64_t r = 0; r < rows; ++r) a.copy(r, 0, x + r * ldx, inner);
  };
  bf16_product(rows, cols, inner, fill, packed, operand, y, ldy, macs);
#else
  auto* a = static_cast<float*>(operand);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < inner; ++k) a[r * inner + k] = rounded_bf16(x[r * ldx + k]);
  gemm(rows, cols, inner, a, inner, static_cast<const float*>(packed), y, ldy, macs);
#endif
}

// y[rows, cols] = A @ the layer's matrix, in the layer's precision. fill(a) writes A[rows, inner] through the
// sink a, a Float32Rows or Bf16Rows: on the bf16 kernels straight as bfloat16, with no float32 copy between.
// `direct`, if not null, is A already in memory as float32 rows of stride `inner`, read in place by a float32 GEMM.
template <class Fill>
void layer_product(const LayerSpec& L, StepSpec& S, int64_t rows, int64_t cols, int64_t inner, Fill&& fill,
                   const float* direct, float* y, int64_t ldy) {
#if STMC_BF16_KERNELS
  if (L.packed != nullptr) return bf16_product(rows, cols, inner, fill, L.packed, S.operand, y, ldy, &S.macs);
#endif
  if (direct == nullptr) {
    Float32Rows a{S.cols, inner};
    fill(a);
    direct = S.cols;
  }
#if !STMC_BF16_KERNELS
  if (L.packed != nullptr)  // bf16 without the kernels: the rounded operand through the float32 GEMM
    return gemm_bf16(rows, cols, inner, direct, inner, L.packed, S.operand, y, ldy, &S.macs);
#endif
  gemm(rows, cols, inner, direct, inner, L.matrix, y, ldy, &S.macs);
}

// Frame `tap` (0 = oldest) of row b: a register slot, or the current frame for a stream's newest tap.
const float* frame(const LayerSpec& L, int64_t b, int64_t tap) {
  const int64_t size = L.in_bins * L.in_ch;
  return tap < L.hist || L.cur == nullptr ? L.reg + (b * L.step + tap) * size : L.cur + b * size;
}

// Encoder GEMM rows (b, m): each tap's frequency window around output bin m, zeros outside the input bins.
template <class Rows>
void encoder_rows(const LayerSpec& L, const StepSpec& S, Rows& a) {
  const int64_t taps = L.hist + 1, C = L.in_ch, width = L.kernel * C, pad = L.kernel / 2;
  for (int64_t b = 0; b < S.batch; ++b) {
    for (int64_t m = 0; m < L.out_bins; ++m) {
      const int64_t r = b * L.out_bins + m, lo = m * L.stride - pad;
      for (int64_t tap = 0; tap < taps; ++tap) {
        const float* src = frame(L, b, tap);
        if (lo >= 0 && lo + L.kernel <= L.in_bins) {
          a.copy(r, tap * width, src + lo * C, width);
          continue;
        }
        for (int64_t df = 0; df < L.kernel; ++df) {
          const int64_t pos = lo + df;
          if (pos >= 0 && pos < L.in_bins)
            a.copy(r, tap * width + df * C, src + pos * C, C);
          else
            a.zero(r, tap * width + df * C, C);
        }
      }
    }
  }
}

void encoder_layer(const LayerSpec& L, StepSpec& S) {
  const int64_t K = (L.hist + 1) * L.kernel * L.in_ch;
  layer_product(L, S, S.batch * L.out_bins, L.out_ch, K, [&](auto& a) { encoder_rows(L, S, a); }, nullptr, L.dst,
                L.dst_ch);
}

// Decoder GEMM rows (b, m): input bin m of each tap.
template <class Rows>
void decoder_rows(const LayerSpec& L, const StepSpec& S, Rows& a) {
  const int64_t taps = L.hist + 1, C = L.in_ch;
  for (int64_t b = 0; b < S.batch; ++b)
    for (int64_t m = 0; m < L.in_bins; ++m)
      for (int64_t tap = 0; tap < taps; ++tap) a.copy(b * L.in_bins + m, tap * C, frame(L, b, tap) + m * C, C);
}

void decoder_layer(const LayerSpec& L, StepSpec& S) {
  const int64_t taps = L.hist + 1, C = L.in_ch, K = taps * C, N = L.kernel * L.out_ch, pad = L.kernel / 2;
  const float* direct = taps == 1 ? (L.cur != nullptr ? L.cur : L.reg) : nullptr;  // one tap: rows are the frame
  layer_product(L, S, S.batch * L.in_bins, N, K, [&](auto& a) { decoder_rows(L, S, a); }, direct, S.spread, N);
  const int64_t co = L.out_ch;
  for (int64_t b = 0; b < S.batch; ++b) {
    float* out = L.dst + b * L.out_bins * L.dst_ch;
    for (int64_t f = 0; f < L.out_bins; ++f) std::memset(out + f * L.dst_ch, 0, co * sizeof(float));
    for (int64_t m = 0; m < L.in_bins; ++m) {
      const float* taps_of_m = S.spread + (b * L.in_bins + m) * N;
      for (int64_t df = 0; df < L.kernel; ++df) {
        const int64_t f = m * L.stride + df - pad;
        if (f < 0 || f >= L.out_bins) continue;
        float* y = out + f * L.dst_ch;
        const float* s = taps_of_m + df * co;
        for (int64_t c = 0; c < co; ++c) y[c] += s[c];
      }
    }
  }
}

// Bias and PReLU on the output rows; rows of a stream whose output time is outside [0, end) become zeros.
void activate(const LayerSpec& L, const StepSpec& S, const int64_t* time, const int64_t* end, int64_t i) {
  const int64_t co = L.out_ch;
  for (int64_t b = 0; b < S.batch; ++b) {
    const int64_t t = time[b] + i - L.delay;
    const bool valid = t >= 0 && (end == nullptr || t < end[b]);
    float* out = L.dst + b * L.out_bins * L.dst_ch;
    for (int64_t f = 0; f < L.out_bins; ++f) {
      float* y = out + f * L.dst_ch;
      if (!valid) {
        std::memset(y, 0, co * sizeof(float));
      } else if (L.prelu != nullptr) {
        for (int64_t c = 0; c < co; ++c) {
          const float v = y[c] + L.bias[c];
          y[c] = v >= 0.0f ? v : L.prelu[c] * v;
        }
      } else {
        for (int64_t c = 0; c < co; ++c) y[c] += L.bias[c];
      }
    }
  }
}

// The encoder output also feeds a decoder layer: now, or through its delay line.
void feed_skip(const LayerSpec& L, const StepSpec& S) {
  if (L.skip == nullptr) return;
  const int64_t co = L.out_ch, frame_size = L.out_bins * co, offset = L.skip_ch - co, bytes = co * sizeof(float);
  for (int64_t b = 0; b < S.batch; ++b) {
    const float* fresh = L.dst + b * L.out_bins * L.dst_ch;
    float* to = L.skip + b * L.out_bins * L.skip_ch + offset;
    if (L.line == nullptr) {
      for (int64_t f = 0; f < L.out_bins; ++f) std::memcpy(to + f * L.skip_ch, fresh + f * L.dst_ch, bytes);
      continue;
    }
    float* line = L.line + b * L.line_len * frame_size;
    for (int64_t f = 0; f < L.out_bins; ++f) std::memcpy(to + f * L.skip_ch, line + f * co, bytes);
    std::memmove(line, line + frame_size, (L.line_len - 1) * frame_size * sizeof(float));
    float* newest = line + (L.line_len - 1) * frame_size;
    for (int64_t f = 0; f < L.out_bins; ++f) std::memcpy(newest + f * co, fresh + f * L.dst_ch, bytes);
  }
}

void shift_register(const LayerSpec& L, const StepSpec& S) {
  if (L.hist == 0 || L.cur == nullptr) return;
  const int64_t size = L.in_bins * L.in_ch;
  for (int64_t b = 0; b < S.batch; ++b) {
    float* reg = L.reg + b * L.hist * size;
    std::memmove(reg, reg + size, (L.hist - 1) * size * sizeof(float));
    std::memcpy(reg + (L.hist - 1) * size, L.cur + b * size, size * sizeof(float));
  }
}

void features(const StepSpec& S, const float* spec, const int64_t* ss, int64_t i) {
  float* x = S.input;
  for (int64_t b = 0; b < S.batch; ++b)
    for (int64_t f = 0; f < S.n_freq; ++f) {
      const float* at = spec + b * ss[0] + f * ss[2] + i * ss[3];
      float re = at[0], im = at[ss[1]];
      if (S.compress) {
        const float scale = std::pow(re * re + im * im + static_cast<float>(S.feature_eps), static_cast<float>(S.exponent));
        re *= scale;
        im *= scale;
      }
      x[(b * S.n_freq + f) * 2] = re;
      x[(b * S.n_freq + f) * 2 + 1] = im;
    }
}

void bound(const StepSpec& S, float* out, const int64_t* os, int64_t i) {
  for (int64_t b = 0; b < S.batch; ++b)
    for (int64_t f = 0; f < S.n_freq; ++f) {
      const float re = S.mask[(b * S.n_freq + f) * 2], im = S.mask[(b * S.n_freq + f) * 2 + 1];
      const float magnitude = std::max(std::sqrt(re * re + im * im), static_cast<float>(S.bound_eps));
      const float scale = std::tanh(magnitude) / magnitude;
      float* at = out + b * os[0] + f * os[2] + i * os[3];
      at[0] = re * scale;
      at[os[1]] = im * scale;
    }
}

void run(StepSpec& S, const float* spec, const int64_t* ss, float* out, const int64_t* os, int64_t frames,
         const int64_t* time, const int64_t* end) {
  for (int64_t i = 0; i < frames; ++i) {
    features(S, spec, ss, i);
    for (int64_t k = 0; k < S.n_layers; ++k) {
      const LayerSpec& L = S.layers[k];
      if (L.transposed)
        decoder_layer(L, S);
      else
        encoder_layer(L, S);
      activate(L, S, time, end, i);
      feed_skip(L, S);
      shift_register(L, S);
    }
    bound(S, out, os, i);
  }
}

// Runs `body`, turning a C++ exception into its message (exceptions must not cross into the caller): null when
// it returned normally.
template <class Body>
const char* guarded(Body&& body) {
  static thread_local char message[512];
  try {
    body();
  } catch (const std::exception& error) {
    std::strncpy(message, error.what(), sizeof(message) - 1);
    return message;
  } catch (...) {
    return "unknown C++ exception";
  }
  return nullptr;
}

}  // namespace

extern "C" {

// spec [B, 2, F, frames] and out [B, 2, F, frames] with element strides ss / os; time [B]: frames each stream
// has seen before this chunk; end [B] (or null): each stream's length, during flush. Returns null, or the
// message of an exception from the GEMM.
const char* stmc_step(StepSpec* S, const float* spec, const int64_t* ss, float* out, const int64_t* os,
                      int64_t frames, const int64_t* time, const int64_t* end) {
  return guarded([&] { run(*S, spec, ss, out, os, frames, time, end); });
}

// y[rows, cols] = x[rows, inner] @ w[inner, cols] through the step's own GEMM path, so that Python can check
// the kernel against torch.mm for each shape the step will use (stmc.stream.native.gemm_mismatch). Returns null or the
// message of an exception.
const char* stmc_gemm(int64_t rows, int64_t cols, int64_t inner, const float* x, const float* w, float* y) {
  int64_t macs = 0;
  return guarded([&] { gemm(rows, cols, inner, x, inner, w, y, cols, &macs); });
}

// The bf16 GEMM path (see gemm_bf16) for the same check: w is packed here, `scratch` holds the packed matrix and
// then the rounded left operand (stmc_bf16_packed_bytes + stmc_bf16_operand_bytes).
const char* stmc_gemm_bf16(int64_t rows, int64_t cols, int64_t inner, const float* x, const float* w, float* y,
                           char* scratch) {
  int64_t macs = 0;
  return guarded([&] {
    pack_bf16(inner, cols, w, scratch);
    gemm_bf16(rows, cols, inner, x, inner, scratch, scratch + bf16_packed_bytes(inner, cols), y, cols, &macs);
  });
}

// Packs a float32 inner x cols matrix for the bf16 GEMM into `packed` (stmc_bf16_packed_bytes bytes).
void stmc_pack_bf16(int64_t inner, int64_t cols, const float* w, void* packed) { pack_bf16(inner, cols, w, packed); }

int64_t stmc_bf16_packed_bytes(int64_t inner, int64_t cols) { return bf16_packed_bytes(inner, cols); }

int64_t stmc_bf16_operand_bytes(int64_t rows, int64_t inner) { return bf16_operand_bytes(rows, inner); }

// 1 where this library's bf16 GEMM runs on the CPU's bf16 instructions (AVX512-BF16), 0 where it emulates them.
int64_t stmc_bf16_kernels() { return STMC_BF16_KERNELS; }

// The layout of the structures Python fills, as text: "LayerSpec size=N transposed=0 hist=8 ...;StepSpec ...".
// stmc.stream.native checks its ctypes mirrors against it by field name at load, so that a field added, removed,
// retyped or reordered on one side is an error, not memory corruption.
const char* stmc_layout() {
#define STMC_FIELD(S, f) + " " #f "=" + std::to_string(offsetof(S, f))
  static const std::string text =
      std::string("LayerSpec size=") + std::to_string(sizeof(LayerSpec)) STMC_FIELD(LayerSpec, transposed)
      STMC_FIELD(LayerSpec, hist) STMC_FIELD(LayerSpec, step) STMC_FIELD(LayerSpec, delay)
      STMC_FIELD(LayerSpec, kernel) STMC_FIELD(LayerSpec, stride) STMC_FIELD(LayerSpec, in_bins)
      STMC_FIELD(LayerSpec, in_ch) STMC_FIELD(LayerSpec, out_bins) STMC_FIELD(LayerSpec, out_ch)
      STMC_FIELD(LayerSpec, matrix) STMC_FIELD(LayerSpec, packed) STMC_FIELD(LayerSpec, bias) STMC_FIELD(LayerSpec, prelu)
      STMC_FIELD(LayerSpec, reg) STMC_FIELD(LayerSpec, cur) STMC_FIELD(LayerSpec, dst)
      STMC_FIELD(LayerSpec, dst_ch) STMC_FIELD(LayerSpec, line) STMC_FIELD(LayerSpec, line_len)
      STMC_FIELD(LayerSpec, skip) STMC_FIELD(LayerSpec, skip_ch) + ";StepSpec size=" +
      std::to_string(sizeof(StepSpec)) STMC_FIELD(StepSpec, n_layers) STMC_FIELD(StepSpec, batch)
      STMC_FIELD(StepSpec, n_freq) STMC_FIELD(StepSpec, compress) STMC_FIELD(StepSpec, exponent)
      STMC_FIELD(StepSpec, feature_eps) STMC_FIELD(StepSpec, bound_eps) STMC_FIELD(StepSpec, input)
      STMC_FIELD(StepSpec, layers) STMC_FIELD(StepSpec, cols) STMC_FIELD(StepSpec, spread)
      STMC_FIELD(StepSpec, mask) STMC_FIELD(StepSpec, operand) STMC_FIELD(StepSpec, macs);
#undef STMC_FIELD
  return text.c_str();
}

}  // extern "C"
