// CUDA branch_prune: one thread block per group, one launch, no host synchronization.
//
// Block p handles group p = scores[group_offsets[p] : group_offsets[p + 1]]:
//   1. the mean of its finite scores: per-thread double sums over a fixed stride, then a fixed
//      shared-memory tree (deterministic; no atomics), rounded to float;
//   2. survivors: score > -inf, score >= mean - margin (float), score >= min_score (NaN fails);
//   3. each survivor's rank = the number of survivors ahead of it (higher score, or equal score
//      and lower index), counted against shared-memory tiles of the group. Ranks are unique, so
//      the survivors of rank < k write kept_idx[p, rank] with no conflicts, and the block fills
//      the remaining slots with -1. Ranking costs O(n^2 / threads) per group of n candidates,
//      cheap for the tens to thousands of candidates of a search round.
// Every output element is written by the kernel (keep_mask included), so no memset precedes it
// and the op is a single launch, usable inside CUDA graphs. With check_values a small kernel
// checks group_offsets first, on the device (check_offsets_kernel): still no host synchronization.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "../checks.h"

// Older torch headers have no message variant: the message then shows in the asserted expression.
#ifndef CUDA_KERNEL_ASSERT_MSG
#define CUDA_KERNEL_ASSERT_MSG(cond, msg) CUDA_KERNEL_ASSERT((cond) && msg)
#endif

namespace genssd {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 1024;  // candidates per shared-memory tile in the ranking pass
constexpr int kCheckThreads = 256;

// The value check of check_values: thread p checks the pair lo = offsets[p], hi = offsets[p + 1]:
// 0 <= lo <= hi <= C, the first lo 0 and the last hi C (every pair valid <=> the offsets valid).
// A bad pair ends in a device-side assert that names the op and the argument; the error surfaces
// at the next synchronizing point. A kernel of its own, not a check inside branch_prune_kernel:
// the assert's call costs a kernel 8 more registers a thread (40 instead of 32 on sm_90), which
// would leave 6 resident blocks an SM instead of 8.
template <typename index_t>
__global__ void __launch_bounds__(kCheckThreads)
    check_offsets_kernel(const index_t* __restrict__ offsets, int64_t offset_stride, int64_t num_groups,
                         int64_t num_scores) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kCheckThreads + threadIdx.x;
  if (p >= num_groups) return;
  const int64_t lo = static_cast<int64_t>(offsets[p * offset_stride]);
  const int64_t hi = static_cast<int64_t>(offsets[(p + 1) * offset_stride]);
  const bool valid = lo >= 0 && hi >= lo && hi <= num_scores && (p != 0 || lo == 0) &&
                     (p != num_groups - 1 || hi == num_scores);
  CUDA_KERNEL_ASSERT_MSG(valid,
                         "genssd_kernels.branch_prune: group_offsets must start at 0, end at C (the number "
                         "of scores) and be non-decreasing");
}

// Deterministic block-wide sum: a fixed tree over kThreads shared slots.
template <typename T>
__device__ T block_sum(T value, T* shared) {
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const T total = shared[0];
  __syncthreads();  // the slots are reused by the next call
  return total;
}

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

__device__ __forceinline__ bool survives(float score, float threshold, float min_score) {
  // NaN compares false everywhere, so it fails like -inf.
  return score > -INFINITY && score >= threshold && score >= min_score;
}

template <typename index_t>
__global__ void __launch_bounds__(kThreads)
    branch_prune_kernel(const float* __restrict__ scores, int64_t score_stride, const index_t* __restrict__ offsets,
                        int64_t offset_stride, int64_t num_scores, float margin, float min_score, int64_t k,
                        bool* __restrict__ keep_mask, int64_t* __restrict__ kept_idx, int32_t* __restrict__ kept_count,
                        float* __restrict__ group_mean) {
  __shared__ double shared_sum[kThreads];
  __shared__ long long shared_count[kThreads];
  __shared__ float tile[kTile];

  const int64_t p = blockIdx.x;
  // Clamped so that offsets left unchecked (check_values=False) can never index out of bounds.
  const int64_t lo = min64(max64(static_cast<int64_t>(offsets[p * offset_stride]), 0), num_scores);
  const int64_t hi = min64(max64(static_cast<int64_t>(offsets[(p + 1) * offset_stride]), lo), num_scores);

  double sum = 0;
  long long finite = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) {
    const float s = scores[i * score_stride];
    if (isfinite(s)) {
      sum += static_cast<double>(s);
      ++finite;
    }
  }
  sum = block_sum(sum, shared_sum);
  finite = block_sum(finite, shared_count);
  const float mean = finite > 0 ? static_cast<float>(sum / static_cast<double>(finite)) : -INFINITY;
  const float threshold = mean - margin;

  // Each thread ranks the candidates lo + threadIdx.x + j * kThreads; all threads walk the
  // same number of rounds so that every __syncthreads() is reached by the whole block.
  long long my_survivors = 0;
  for (int64_t base = lo; base < hi; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const bool active = i < hi;
    const float s = active ? scores[i * score_stride] : NAN;
    const bool alive = active && survives(s, threshold, min_score);
    int64_t rank = 0;
    for (int64_t tile_start = lo; tile_start < hi; tile_start += kTile) {
      const int64_t tile_len = min64(kTile, hi - tile_start);
      __syncthreads();
      for (int64_t j = threadIdx.x; j < tile_len; j += kThreads) {
        const float other = scores[(tile_start + j) * score_stride];
        // Non-survivors become NaN, which never ranks ahead of anything.
        tile[j] = survives(other, threshold, min_score) ? other : NAN;
      }
      __syncthreads();
      if (alive) {
        for (int64_t j = 0; j < tile_len; ++j) {
          const float other = tile[j];
          rank += (other > s) || (other == s && tile_start + j < i);
        }
      }
    }
    if (active) {
      const bool kept = alive && rank < k;
      keep_mask[i] = kept;
      if (kept) kept_idx[p * k + rank] = i;
    }
    my_survivors += alive;
  }

  const long long survivors = block_sum(my_survivors, shared_count);
  const int64_t num_kept = min64(survivors, k);
  for (int64_t r = num_kept + threadIdx.x; r < k; r += kThreads) kept_idx[p * k + r] = -1;
  if (threadIdx.x == 0) {
    kept_count[p] = static_cast<int32_t>(num_kept);
    group_mean[p] = mean;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> branch_prune_cuda(const at::Tensor& scores,
                                                                              const at::Tensor& group_offsets,
                                                                              double margin, int64_t k,
                                                                              double min_score,
                                                                              bool check_values) {
  check_prune_args(scores, group_offsets, margin, k);
  const c10::cuda::CUDAGuard device_guard(scores.device());
  const int64_t num_scores = scores.size(0);
  const int64_t num_groups = group_offsets.size(0) - 1;
  TORCH_CHECK(num_groups < std::numeric_limits<int32_t>::max(), "genssd: too many groups for one launch");

  at::Tensor keep_mask = at::empty({num_scores}, scores.options().dtype(at::kBool));
  at::Tensor kept_idx = at::empty({num_groups, k}, scores.options().dtype(at::kLong));
  at::Tensor kept_count = at::empty({num_groups}, scores.options().dtype(at::kInt));
  at::Tensor group_mean = at::empty({num_groups}, scores.options());
  if (num_groups == 0) {
    // Valid offsets then cover no scores (C == 0); zero-fill in case they were not checked.
    keep_mask.zero_();
    return {keep_mask, kept_idx, kept_count, group_mean};
  }

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // The reference forms the threshold in float32 too: every backend draws the same line.
  const float margin_f = static_cast<float>(margin);
  const float min_score_f = static_cast<float>(min_score);
  AT_DISPATCH_INDEX_TYPES(group_offsets.scalar_type(), "genssd_branch_prune_cuda", [&] {
    if (check_values) {
      const auto blocks = static_cast<unsigned int>((num_groups + kCheckThreads - 1) / kCheckThreads);
      check_offsets_kernel<index_t><<<blocks, kCheckThreads, 0, stream>>>(
          group_offsets.data_ptr<index_t>(), group_offsets.stride(0), num_groups, num_scores);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    branch_prune_kernel<index_t><<<static_cast<unsigned int>(num_groups), kThreads, 0, stream>>>(
        scores.data_ptr<float>(), scores.stride(0), group_offsets.data_ptr<index_t>(), group_offsets.stride(0),
        num_scores, margin_f, min_score_f, k, keep_mask.data_ptr<bool>(), kept_idx.data_ptr<int64_t>(),
        kept_count.data_ptr<int32_t>(), group_mean.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {keep_mask, kept_idx, kept_count, group_mean};
}

}  // namespace
}  // namespace genssd

TORCH_LIBRARY_IMPL(genssd, CUDA, m) { m.impl("branch_prune", &genssd::branch_prune_cuda); }
