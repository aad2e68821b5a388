// y = x @ W.T + bias for a few rows of x, W read from a blocked copy: the matrix products of a decoding
// step at batch 1 to 8, which read every weight once and are bound by memory bandwidth.
//
// The copy is W (out, in) as (ceil(out / 16), in, 16): block j holds outputs 16j..16j+15 for every input,
// so a thread streams its blocks front to back, one 64-byte line per input, and keeps the 16 sums of each
// row in two AVX registers. lmkit.nn.gemv builds this file (with -mavx2 -mfma) and documents the layout
// and the measurements.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

// at::parallel_for is a template whose OpenMP pragmas are compiled here, not in libtorch: built without
// -fopenmp it runs every block on one thread, silently (it did, until lmkit.nn.gemv passed the flag).
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "torch parallelizes with OpenMP: build this kernel with -fopenmp"
#endif

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kGroup = 4;  // rows sharing each loaded line: 8 sums, within AVX2's 16 registers
// How far ahead of the line being summed to ask for the weights (floats): 1 KiB. Measured on 3072 x 768
// at 2 rows: 26.5 GB/s with it, 25.4 without, at one row no gain (measured while the kernel still ran
// on one thread).
constexpr int64_t kPrefetch = 256;

typedef float v8 __attribute__((vector_size(32)));

inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store(const v8& low, const v8& high, float* y, int64_t lanes, const float* bias) {
  float sums[kLanes];
  std::memcpy(sums, &low, sizeof low);
  std::memcpy(sums + 8, &high, sizeof high);
  for (int64_t lane = 0; lane < lanes; ++lane) y[lane] = sums[lane] + (bias ? bias[lane] : 0.f);
}

// One row: the inputs taken two at a time, so four sums are in flight rather than two.
void one_row(const float* x, const float* w, int64_t K, float* y, int64_t lanes, const float* bias) {
  v8 a0 = {}, a1 = {}, b0 = {}, b1 = {};
  int64_t k = 0;
  for (; k + 1 < K; k += 2) {
    const float* line = w + k * kLanes;
    a0 += x[k] * load8(line);
    a1 += x[k] * load8(line + 8);
    b0 += x[k + 1] * load8(line + kLanes);
    b1 += x[k + 1] * load8(line + kLanes + 8);
  }
  if (k < K) {
    a0 += x[k] * load8(w + k * kLanes);
    a1 += x[k] * load8(w + k * kLanes + 8);
  }
  store(a0 + b0, a1 + b1, y, lanes, bias);
}

// Two to four rows: each line of weights, once loaded, is multiplied by every row (2 x rows sums in flight).
template <int R>
void row_group(const float* x, int64_t ldx, const float* w, int64_t K, float* y, int64_t ldy, int64_t lanes,
               const float* bias) {
  v8 low_sums[R] = {}, high_sums[R] = {};
  for (int64_t k = 0; k < K; ++k) {
    const float* line = w + k * kLanes;
    __builtin_prefetch(line + kPrefetch, 0, 0);
    const v8 low = load8(line), high = load8(line + 8);
    for (int r = 0; r < R; ++r) {
      low_sums[r] += x[r * ldx + k] * low;
      high_sums[r] += x[r * ldx + k] * high;
    }
  }
  for (int r = 0; r < R; ++r) store(low_sums[r], high_sums[r], y + r * ldy, lanes, bias);
}

at::Tensor blocked_linear(const at::Tensor& x, const at::Tensor& blocked, const c10::optional<at::Tensor>& bias,
                          int64_t out_features) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu() && x.stride(1) == 1,
              "x must be (rows, in_features) float32 on the CPU with contiguous rows");
  const int64_t rows = x.size(0), K = x.size(1), blocks = (out_features + kLanes - 1) / kLanes;
  TORCH_CHECK(rows >= 1, "at least one row");
  TORCH_CHECK(blocked.scalar_type() == at::kFloat && blocked.is_contiguous() && blocked.dim() == 3 &&
                  blocked.size(0) == blocks && blocked.size(1) == K && blocked.size(2) == kLanes,
              "the weight must be blocked as (ceil(out / 16), in, 16) float32 for these sizes");
  TORCH_CHECK(!bias.has_value() || (bias->is_contiguous() && bias->scalar_type() == at::kFloat &&
                                    bias->numel() == out_features),
              "bias must be (out_features,) float32");
  auto y = at::empty({rows, out_features}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = blocked.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t ldx = x.stride(0);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t lanes = std::min(kLanes, out_features - j * kLanes);
      const float* block = wp + j * K * kLanes;
      const float* block_bias = bp ? bp + j * kLanes : nullptr;
      // Rows four at a time: a block (in x 64 bytes, 192 KiB at in = 3072) comes from memory for the
      // first four and from the core's L2 cache for the rest.
      for (int64_t r = 0; r < rows; r += kGroup) {
        const float* x_r = xp + r * ldx;
        float* y_r = yp + r * out_features + j * kLanes;
        switch (std::min(kGroup, rows - r)) {
          case 1: one_row(x_r, block, K, y_r, lanes, block_bias); break;
          case 2: row_group<2>(x_r, ldx, block, K, y_r, out_features, lanes, block_bias); break;
          case 3: row_group<3>(x_r, ldx, block, K, y_r, out_features, lanes, block_bias); break;
          default: row_group<4>(x_r, ldx, block, K, y_r, out_features, lanes, block_bias); break;
        }
      }
    }
  });
  return y;
}

// How many of torch's threads run a chunk of a parallel_for over `range` items, as blocked_linear's is
// split: the tests' check that the kernel runs on the thread pool and not on one thread.
int64_t threads_used(int64_t range) {
  std::vector<char> used(at::get_num_threads(), 0);
  at::parallel_for(0, range, 1, [&](int64_t begin, int64_t end) {
    if (begin < end) used[at::get_thread_num()] = 1;
  });
  return std::count(used.begin(), used.end(), 1);
}

}  // namespace

TORCH_LIBRARY(lmkit_gemv, m) {
  m.def("blocked_linear(Tensor x, Tensor blocked, Tensor? bias, int out_features) -> Tensor", &blocked_linear);
  m.def("threads_used(int range) -> int", &threads_used);
}
