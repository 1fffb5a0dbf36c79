// CPU logprob_gather: logits tile by tile with an online logsumexp, never an [N, V] buffer.
//
// Forward: the logits are cut into tiles of kRowBlock rows x kVocabChunk vocabulary columns,
// each one task of a single parallel loop (OpenMP, through at::parallel_for). A task computes
// its tile with at::mm in the input dtype (BLAS speed and the reference's rounding; BLAS runs
// single-threaded inside the parallel region), then folds it, in the statistics dtype (float32,
// float64 for float64 inputs), into per-(chunk, row) softmax statistics while the tile is still
// in cache. The statistics are merged in chunk order.
// Backward: see backward_impl.
//
// Every sum runs in a fixed order and no two tasks write one element, so results are
// bit-identical run to run. Extra memory: the forward holds a 1 MiB tile per thread plus
// softmax statistics of at most max(kStatsBudget, N) entries; the backward one chunk of
// gradient logits of at most kGradLogitsBudget elements (N * kMinGradCols when N > 4096).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"

namespace genssd {
namespace {

// Forward tiles: kRowBlock x kVocabChunk logits (1 MiB in float32) per thread.
constexpr int64_t kVocabChunk = 2048;
constexpr int64_t kRowBlock = 128;
// Forward: at most this many per-(vocabulary slice, row) statistics (12 MiB in float32), unless N
// itself is larger.
constexpr int64_t kStatsBudget = 1 << 20;
// Backward: the [N, cols] gradient logits of one vocabulary chunk (4 MiB in float32).
constexpr int64_t kGradLogitsBudget = 1 << 20;
constexpr int64_t kMinGradCols = 256;
constexpr int64_t kMinBackwardRows = 16;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The per-element loops below are compiled for AVX-512, AVX2 and baseline x86-64, and the
// loader picks the widest the CPU has (GCC function multiversioning): the extension is built
// without -march flags, so it runs on any x86-64 CPU but would otherwise use 4-wide SSE only.
// Loop results are bit-identical run to run on one machine.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define GENSSD_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GENSSD_SIMD_CLONES
#endif
// Inlined into every clone, so each clone vectorizes it at its own width (a call from an AVX
// clone to the baseline function would stay scalar).
#if defined(__GNUC__)
#define GENSSD_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define GENSSD_ALWAYS_INLINE inline
#endif

// exp for float32 written so the compiler vectorizes it inside `omp simd` loops (std::exp is
// a scalar libm call, and 16M of them dominated the forward). Cephes' expf: x = n ln2 + r with
// |r| <= ln2 / 2, a degree-5 polynomial for exp(r), and 2^n built in the exponent bits; relative
// error about 2e-7. Below -87.34 (exp < FLT_MIN) it returns 0: such a term is < 1e-37 of the
// largest term of the softmax sums it feeds. Valid for x <= 88; NaN stays NaN.
GENSSD_ALWAYS_INLINE float exp_simd(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  constexpr int32_t kRoundBits = 0x4B400000;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kMinArg = -87.33654f;
  constexpr float kMaxArg = 88.0f;
  const bool underflow = x < kMinArg;
  x = x < kMinArg ? kMinArg : x;
  x = x > kMaxArg ? kMaxArg : x;
  const float t = x * kLog2e + kRound;
  const float n = t - kRound;
  int32_t n_bits;
  std::memcpy(&n_bits, &t, sizeof(float));
  const int32_t exponent = (n_bits - kRoundBits + 127) << 23;
  float scale;
  std::memcpy(&scale, &exponent, sizeof(float));
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return underflow ? 0.0f : p * scale;
}

// float64 inputs are the accuracy path: keep libm's exp there.
GENSSD_ALWAYS_INLINE double exp_simd(double x) { return std::exp(x); }

// out [rows, cols] = hidden_block [rows, d] @ weight_chunk [cols, d].T in the statistics dtype
// (out is contiguous). For half-precision inputs at::mm writes `staging` (input dtype, at
// least rows * cols elements) first, so the logits get the reference's rounding.
void compute_logits(at::Tensor& out, const at::Tensor& hidden_block, const at::Tensor& weight_chunk,
                    const at::Tensor& staging) {
  if (out.scalar_type() == hidden_block.scalar_type()) {
    at::mm_out(out, hidden_block, weight_chunk.t());
    return;
  }
  at::Tensor low = staging.narrow(0, 0, out.numel()).view(out.sizes());
  at::mm_out(low, hidden_block, weight_chunk.t());
  out.copy_(low);
}

// A flat buffer of `numel` elements in the input dtype where it differs from `stat`, else undefined.
at::Tensor staging_buffer(const at::Tensor& like, at::ScalarType stat, int64_t numel) {
  return like.scalar_type() == stat ? at::Tensor() : at::empty({numel}, like.options());
}

// Softmax statistics of a set of logits z relative to their max m:
// s1 = sum exp(z - m), s2 = sum exp(z - m) * (z - m). Keeping s2 relative to m (rather than a
// sum of p * z) keeps the entropy log(s1) - s2 / s1 free of cancellation for large logits.
template <typename acc_t>
struct SoftmaxStats {
  acc_t m;
  acc_t s1;
  acc_t s2;
};

// Statistics of one row of a tile, z[0, cols) (raw logits, divided here by the temperature
// in place, exactly as the reference divides them).
template <typename acc_t>
GENSSD_SIMD_CLONES SoftmaxStats<acc_t> row_stats(acc_t* z, int64_t cols, acc_t temperature, bool with_entropy) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  if (temperature != acc_t(1)) {
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) z[j] /= temperature;
  }
  acc_t m = kNegInf;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < cols; ++j) m = z[j] > m ? z[j] : m;
  if (m == kNegInf) return {m, 0, 0};  // every logit is -inf (or NaN): the tile adds nothing

  acc_t s1 = 0, s2 = 0;
  if (with_entropy) {
#pragma omp simd reduction(+ : s1, s2)
    for (int64_t j = 0; j < cols; ++j) {
      const acc_t x = z[j] - m;
      const acc_t e = exp_simd(x);
      s1 += e;
      s2 += e > 0 ? e * x : acc_t(0);  // p log p -> 0 as p -> 0, also for x = -inf
    }
  } else {
#pragma omp simd reduction(+ : s1)
    for (int64_t j = 0; j < cols; ++j) s1 += exp_simd(z[j] - m);
  }
  return {m, s1, s2};
}

// Folds the statistics b of further columns into a (both relative to their own max).
template <typename acc_t>
void merge_stats(SoftmaxStats<acc_t>& a, const SoftmaxStats<acc_t>& b) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  if (b.m == kNegInf) return;
  if (a.m == kNegInf) {
    a = b;
    return;
  }
  if (b.m > a.m) {
    const acc_t shift = a.m - b.m, scale = std::exp(shift);
    a.s2 = scale * (a.s2 + shift * a.s1) + b.s2;
    a.s1 = scale * a.s1 + b.s1;
    a.m = b.m;
  } else {
    const acc_t shift = b.m - a.m, scale = std::exp(shift);
    a.s2 += scale * (b.s2 + shift * b.s1);
    a.s1 += scale * b.s1;
  }
}

void check_targets(const int64_t* targets, int64_t n, int64_t vocab, int64_t ignore_index) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = targets[i];
    TORCH_CHECK(t == ignore_index || (t >= 0 && t < vocab), "genssd: target ", t, " at row ", i,
                " is outside [0, ", vocab, ") and is not ignore_index=", ignore_index);
  }
}

// Mean of the valid log-probs of each segment, summed sequentially in double; -inf when empty.
template <typename acc_t>
at::Tensor segment_means(const at::Tensor& token_logprobs, const int64_t* targets, int64_t ignore_index,
                         const at::Tensor& cu_seqlens) {
  const at::Tensor offsets = cu_seqlens.to(at::kLong).contiguous();
  const int64_t* o = offsets.data_ptr<int64_t>();
  const int64_t num_segments = offsets.numel() - 1;
  TORCH_CHECK(o[0] == 0 && o[num_segments] == token_logprobs.size(0), "genssd: cu_seqlens must start at 0 and end at ",
              token_logprobs.size(0));
  for (int64_t s = 0; s < num_segments; ++s) TORCH_CHECK(o[s + 1] >= o[s], "genssd: cu_seqlens must be non-decreasing");

  at::Tensor means = at::empty({num_segments}, token_logprobs.options());
  const acc_t* lp = token_logprobs.data_ptr<acc_t>();
  acc_t* out = means.data_ptr<acc_t>();
  at::parallel_for(0, num_segments, 64, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      double sum = 0;
      int64_t count = 0;
      for (int64_t i = o[s]; i < o[s + 1]; ++i) {
        if (targets[i] == ignore_index) continue;
        sum += static_cast<double>(lp[i]);
        ++count;
      }
      out[s] = count > 0 ? static_cast<acc_t>(sum / static_cast<double>(count))
                         : -std::numeric_limits<acc_t>::infinity();
    }
  });
  return means;
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_impl(
    const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets_in,
    const std::optional<at::Tensor>& cu_seqlens, double temperature, int64_t ignore_index, bool return_entropy) {
  const int64_t n = hidden.size(0), vocab = weight.size(0);
  const at::ScalarType stat = stat_dtype(hidden.scalar_type());
  const auto stat_options = hidden.options().dtype(stat);
  const at::Tensor targets = targets_in.contiguous();
  const int64_t* tgt = targets.data_ptr<int64_t>();
  check_targets(tgt, n, vocab, ignore_index);
  const acc_t temp = static_cast<acc_t>(temperature);

  // The vocabulary chunks are grouped into slices; a task is (slice, row block) and folds its
  // slice's chunks in order into slice_stats[slice][row]. With few rows every chunk is its own
  // slice (the most tasks); with many, fewer slices keep slice_stats within kStatsBudget. The
  // grouping depends on N and V only, never on the thread count.
  const int64_t num_chunks = ceil_div(vocab, kVocabChunk), num_blocks = ceil_div(n, kRowBlock);
  const int64_t chunks_per_slice =
      ceil_div(num_chunks, std::clamp<int64_t>(kStatsBudget / std::max<int64_t>(n, 1), 1, num_chunks));
  const int64_t num_slices = ceil_div(num_chunks, chunks_per_slice);
  std::vector<SoftmaxStats<acc_t>> slice_stats(static_cast<size_t>(num_slices * n),
                                               {-std::numeric_limits<acc_t>::infinity(), 0, 0});
  at::Tensor target_logit = at::zeros({n}, stat_options);
  acc_t* target_out = target_logit.data_ptr<acc_t>();

  // Tasks run slice-major, so a thread's consecutive tasks share weight chunks. OpenMP workers
  // do not inherit the caller's dispatch state (autograd is already handled above this kernel),
  // so each restores it before calling ATen ops.
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, num_slices * num_blocks, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard state_guard(caller_state);
    at::Tensor tile_buffer = at::empty({kRowBlock * kVocabChunk}, stat_options);
    const at::Tensor staging = staging_buffer(hidden, stat, kRowBlock * kVocabChunk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t slice = task / num_blocks, r0 = (task % num_blocks) * kRowBlock;
      const int64_t rows = std::min(kRowBlock, n - r0);
      const int64_t last_chunk = std::min(num_chunks, (slice + 1) * chunks_per_slice);
      for (int64_t c = slice * chunks_per_slice; c < last_chunk; ++c) {
        const int64_t v0 = c * kVocabChunk, cols = std::min(kVocabChunk, vocab - v0);
        at::Tensor tile = tile_buffer.narrow(0, 0, rows * cols).view({rows, cols});
        compute_logits(tile, hidden.narrow(0, r0, rows), weight.narrow(0, v0, cols), staging);
        acc_t* z = tile.data_ptr<acc_t>();
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = r0 + r;
          acc_t* zr = z + r * cols;
          merge_stats(slice_stats[slice * n + i], row_stats<acc_t>(zr, cols, temp, return_entropy));
          const int64_t target_col = tgt[i] - v0;
          if (tgt[i] != ignore_index && target_col >= 0 && target_col < cols) target_out[i] = zr[target_col];
        }
      }
    }
  });

  at::Tensor token_logprobs = at::empty({n}, stat_options);
  at::Tensor lse = at::empty({n}, hidden.options().dtype(at::kDouble));
  at::Tensor entropy = at::empty({return_entropy ? n : 0}, stat_options);
  acc_t* lp = token_logprobs.data_ptr<acc_t>();
  double* lse_out = lse.data_ptr<double>();
  acc_t* ent = entropy.data_ptr<acc_t>();
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      SoftmaxStats<acc_t> row = slice_stats[i];
      for (int64_t slice = 1; slice < num_slices; ++slice) merge_stats(row, slice_stats[slice * n + i]);
      const acc_t log_sum = std::log(row.s1);
      // In double: the backward's exp(z - lse) would otherwise inherit lse's float rounding, an
      // error that grows with the size of the logits.
      lse_out[i] = static_cast<double>(row.m) + std::log(static_cast<double>(row.s1));
      // (z - max) - log(sum) is log_softmax's own formula: exact for huge logits, unlike z - lse.
      lp[i] = tgt[i] == ignore_index ? acc_t(0) : (target_out[i] - row.m) - log_sum;
      if (return_entropy) ent[i] = log_sum - row.s2 / row.s1;
    }
  });

  at::Tensor means = cu_seqlens.has_value() ? segment_means<acc_t>(token_logprobs, tgt, ignore_index, *cu_seqlens)
                                            : at::empty({0}, stat_options);
  return {token_logprobs, lse, entropy, means};
}

// Turns a logits row z [cols] into the gradient of g * logprob in the logits, in place:
//   grad_logits = (g / T) * (onehot(target) - exp(z / T - lse)),  zero on ignored rows.
// lse = lse_hi + lse_lo (a double split in two acc_t): z / T - lse_hi is exact where it matters
// (near the row max), so exp's argument is as accurate as the logits themselves.
template <typename acc_t>
GENSSD_SIMD_CLONES void logits_grad_row(acc_t* z, int64_t cols, acc_t temperature, acc_t coef, acc_t lse_hi,
                                        acc_t lse_lo, int64_t target_col) {
  if (coef == acc_t(0)) {
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) z[j] = 0;
    return;
  }
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) z[j] = -coef * exp_simd((z[j] / temperature - lse_hi) - lse_lo);
  if (target_col >= 0 && target_col < cols) z[target_col] += coef;
}

// Gradient of sum_i g_i * logprob_i, one vocabulary chunk c of `cols` columns at a time:
//   G = grad_logits[:, c]             [N, cols], in parallel over row blocks b, each of which also
//   grad_hidden[b] += G[b] @ W[c]     adds its rows' share (its own rows: no race);
//   grad_weight[c]  = G.T @ hidden    one multi-threaded matmul once G is complete.
// Sums run in a fixed order, and the gradient matmuls run in the statistics dtype so that
// grad_logits is never rounded to half precision. G bounds the extra memory: cols shrinks as N
// grows so G stays within kGradLogitsBudget elements (down to kMinGradCols columns).
template <typename acc_t>
std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad_logprobs, const at::Tensor& hidden,
                                                 const at::Tensor& weight, const at::Tensor& targets_in,
                                                 const at::Tensor& lse_in, double temperature,
                                                 int64_t ignore_index) {
  const int64_t n = hidden.size(0), d = hidden.size(1), vocab = weight.size(0);
  const at::ScalarType stat = stat_dtype(hidden.scalar_type());
  const bool same_dtype = hidden.scalar_type() == stat;
  const auto stat_options = hidden.options().dtype(stat);
  const at::Tensor targets = targets_in.contiguous();
  const at::Tensor grad = grad_logprobs.to(stat).contiguous();
  const at::Tensor lse = lse_in.to(at::kDouble).contiguous();
  const int64_t* tgt = targets.data_ptr<int64_t>();
  const acc_t* g = grad.data_ptr<acc_t>();
  const double* row_lse = lse.data_ptr<double>();
  check_targets(tgt, n, vocab, ignore_index);
  const acc_t temp = static_cast<acc_t>(temperature);

  const int64_t chunk = std::clamp(kGradLogitsBudget / std::max<int64_t>(n, 1), kMinGradCols, kVocabChunk);
  // Smaller row blocks when N is small, so every thread gets a block.
  const int64_t block = std::clamp(ceil_div(n, at::get_num_threads()), kMinBackwardRows, kRowBlock);
  const int64_t num_blocks = ceil_div(n, block);
  const int64_t chunk_numel = n * std::min(chunk, vocab);
  at::Tensor grad_logits = at::empty({chunk_numel}, stat_options);
  const at::Tensor staging = staging_buffer(hidden, stat, chunk_numel);
  const at::Tensor hidden_stat = hidden.to(stat);
  at::Tensor weight_scratch = same_dtype ? at::Tensor() : at::empty({std::min(chunk, vocab), d}, stat_options);
  at::Tensor grad_hidden = at::zeros({n, d}, stat_options);
  at::Tensor grad_weight = at::empty({vocab, d}, weight.options());
  const at::ThreadLocalState caller_state;

  for (int64_t v0 = 0; v0 < vocab; v0 += chunk) {
    const int64_t cols = std::min(chunk, vocab - v0);
    const at::Tensor weight_chunk = weight.narrow(0, v0, cols);
    const at::Tensor weight_chunk_stat =
        same_dtype ? weight_chunk : weight_scratch.narrow(0, 0, cols).copy_(weight_chunk);
    at::Tensor chunk_grad = grad_logits.narrow(0, 0, n * cols).view({n, cols});
    at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard state_guard(caller_state);
      for (int64_t b = begin; b < end; ++b) {
        const int64_t r0 = b * block, rows = std::min(block, n - r0);
        at::Tensor tile = chunk_grad.narrow(0, r0, rows);
        compute_logits(tile, hidden.narrow(0, r0, rows),
                       weight_chunk, staging.defined() ? staging.narrow(0, r0 * cols, rows * cols) : staging);
        acc_t* z = tile.data_ptr<acc_t>();
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = r0 + r;
          const acc_t coef = tgt[i] == ignore_index ? acc_t(0) : g[i] / temp;
          const acc_t lse_hi = static_cast<acc_t>(row_lse[i]);
          const acc_t lse_lo = static_cast<acc_t>(row_lse[i] - static_cast<double>(lse_hi));
          logits_grad_row<acc_t>(z + r * cols, cols, temp, coef, lse_hi, lse_lo, tgt[i] - v0);
        }
        grad_hidden.narrow(0, r0, rows).addmm_(tile, weight_chunk_stat);
      }
    });
    at::Tensor grad_weight_chunk = grad_weight.narrow(0, v0, cols);
    if (same_dtype) {
      at::mm_out(grad_weight_chunk, chunk_grad.t(), hidden_stat);
    } else {
      grad_weight_chunk.copy_(at::mm(chunk_grad.t(), hidden_stat));
    }
  }
  return {same_dtype ? grad_hidden : grad_hidden.to(hidden.scalar_type()), grad_weight};
}

// linear_cross_entropy's row step (genssd_kernels.fused_loss): each row's loss from its logits,
// which are then overwritten with scale * (softmax - onehot(target)), zero on ignored rows. Rows
// run in parallel; 16-bit rows are widened into a per-thread float row and rounded back once.
template <typename scalar_t, typename acc_t>
at::Tensor cross_entropy_rows_impl(at::Tensor& logits, const at::Tensor& targets_in, double scale,
                                   int64_t ignore_index) {
  const int64_t rows = logits.size(0), cols = logits.size(1), stride = logits.stride(0);
  const at::Tensor targets = targets_in.contiguous();
  const int64_t* tgt = targets.data_ptr<int64_t>();
  check_targets(tgt, rows, cols, ignore_index);
  at::Tensor losses = at::empty({rows}, logits.options().dtype(stat_dtype(logits.scalar_type())));
  acc_t* loss = losses.data_ptr<acc_t>();
  scalar_t* base = logits.data_ptr<scalar_t>();
  constexpr bool kWiden = !std::is_same_v<scalar_t, acc_t>;
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> widened(kWiden ? cols : 0);
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* row = base + r * stride;
      acc_t* z = kWiden ? widened.data() : reinterpret_cast<acc_t*>(row);
      if constexpr (kWiden) {
        for (int64_t j = 0; j < cols; ++j) z[j] = static_cast<acc_t>(row[j]);
      }
      const bool valid = tgt[r] != ignore_index;
      const SoftmaxStats<acc_t> stats = row_stats<acc_t>(z, cols, acc_t(1), false);
      // lse in double, split in two acc_t as the backward does, so exp(z - lse) stays accurate.
      const double lse = static_cast<double>(stats.m) + std::log(static_cast<double>(stats.s1));
      const acc_t lse_hi = static_cast<acc_t>(lse), lse_lo = static_cast<acc_t>(lse - static_cast<double>(lse_hi));
      loss[r] = valid ? (stats.m - z[tgt[r]]) + static_cast<acc_t>(std::log(static_cast<double>(stats.s1))) : acc_t(0);
      // logits_grad_row writes coef * (onehot - p): coef = -scale gives scale * (p - onehot).
      logits_grad_row<acc_t>(z, cols, acc_t(1), valid ? static_cast<acc_t>(-scale) : acc_t(0), lse_hi, lse_lo,
                             valid ? tgt[r] : -1);
      if constexpr (kWiden) {
        for (int64_t j = 0; j < cols; ++j) row[j] = static_cast<scalar_t>(z[j]);
      }
    }
  });
  return losses;
}

at::Tensor cross_entropy_rows_cpu(at::Tensor& logits, const at::Tensor& targets, const at::Tensor& scale,
                                  int64_t ignore_index) {
  TORCH_CHECK(logits.dim() == 2 && logits.stride(1) == 1, "genssd: logits must be 2-D [R, V] with unit inner stride");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0) && targets.scalar_type() == at::kLong,
              "genssd: targets must be int64 [R] with R=", logits.size(0));
  TORCH_CHECK(scale.numel() == 1, "genssd: scale must hold one number");
  const double factor = scale.item<double>();  // a CPU tensor: no device sync
  switch (logits.scalar_type()) {
    case at::kDouble:
      return cross_entropy_rows_impl<double, double>(logits, targets, factor, ignore_index);
    case at::kFloat:
      return cross_entropy_rows_impl<float, float>(logits, targets, factor, ignore_index);
    case at::kBFloat16:
      return cross_entropy_rows_impl<c10::BFloat16, float>(logits, targets, factor, ignore_index);
    case at::kHalf:
      return cross_entropy_rows_impl<c10::Half, float>(logits, targets, factor, ignore_index);
    default:
      TORCH_CHECK(false, "genssd: logits must be a floating dtype, got ", logits.scalar_type());
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> logprob_gather_fwd_cpu(
    const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
    const std::optional<at::Tensor>& cu_seqlens, double temperature, int64_t ignore_index, bool return_entropy) {
  check_gather_args(hidden, weight, targets, temperature);
  if (cu_seqlens.has_value()) {
    TORCH_CHECK(cu_seqlens->dim() == 1 && cu_seqlens->numel() >= 1 && is_index_dtype(cu_seqlens->scalar_type()),
                "genssd: cu_seqlens must be a non-empty 1-D int32/int64 tensor");
    TORCH_CHECK(cu_seqlens->device() == hidden.device(), "genssd: cu_seqlens must be on the device of hidden");
  }
  if (hidden.scalar_type() == at::kDouble) {
    return forward_impl<double>(hidden, weight, targets, cu_seqlens, temperature, ignore_index, return_entropy);
  }
  return forward_impl<float>(hidden, weight, targets, cu_seqlens, temperature, ignore_index, return_entropy);
}

std::tuple<at::Tensor, at::Tensor> logprob_gather_bwd_cpu(const at::Tensor& grad_logprobs, const at::Tensor& hidden,
                                                          const at::Tensor& weight, const at::Tensor& targets,
                                                          const at::Tensor& lse, double temperature,
                                                          int64_t ignore_index) {
  check_gather_args(hidden, weight, targets, temperature);
  TORCH_CHECK(grad_logprobs.dim() == 1 && grad_logprobs.size(0) == hidden.size(0),
              "genssd: grad_logprobs must be [N] with N=", hidden.size(0));
  TORCH_CHECK(lse.dim() == 1 && lse.size(0) == hidden.size(0), "genssd: lse must be [N] with N=", hidden.size(0));
  if (hidden.scalar_type() == at::kDouble) {
    return backward_impl<double>(grad_logprobs, hidden, weight, targets, lse, temperature, ignore_index);
  }
  return backward_impl<float>(grad_logprobs, hidden, weight, targets, lse, temperature, ignore_index);
}

}  // namespace
}  // namespace genssd

TORCH_LIBRARY_IMPL(genssd, CPU, m) {
  m.impl("logprob_gather_fwd", &genssd::logprob_gather_fwd_cpu);
  m.impl("logprob_gather_bwd", &genssd::logprob_gather_bwd_cpu);
  m.impl("cross_entropy_rows_", &genssd::cross_entropy_rows_cpu);
}
