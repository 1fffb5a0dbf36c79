// CPU branch_prune: groups in parallel (OpenMP via at::parallel_for), each group sequential.
//
// Per group: the mean of the finite scores (summed in double, rounded to float), the float
// threshold mean - margin, the survivors (score > -inf, >= threshold, >= min_score; NaN counts
// as -inf), and the best k survivors by (score descending, index ascending). Groups write
// disjoint slices of the outputs, so there are no races and the result does not depend on
// the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../checks.h"

namespace genssd {
namespace {

constexpr int64_t kGroupGrain = 16;  // groups per parallel task

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> branch_prune_cpu(const at::Tensor& scores_in,
                                                                             const at::Tensor& group_offsets,
                                                                             double margin, int64_t k,
                                                                             double min_score,
                                                                             bool /*check_values*/) {
  check_prune_args(scores_in, group_offsets, margin, k);
  // The offsets are checked whatever check_values says: this kernel indexes with them unclamped,
  // and on the host the check costs no synchronization.
  const at::Tensor scores = scores_in.contiguous();
  const at::Tensor offsets = group_offsets.to(at::kLong).contiguous();
  const int64_t num_scores = scores.size(0);
  const int64_t num_groups = offsets.size(0) - 1;
  const int64_t* off = offsets.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[num_groups] == num_scores, "genssd: group_offsets must start at 0 and end at ",
              num_scores);
  for (int64_t p = 0; p < num_groups; ++p) {
    TORCH_CHECK(off[p + 1] >= off[p], "genssd: group_offsets must be non-decreasing");
  }

  at::Tensor keep_mask = at::zeros({num_scores}, scores.options().dtype(at::kBool));
  at::Tensor kept_idx = at::full({num_groups, k}, -1, scores.options().dtype(at::kLong));
  at::Tensor kept_count = at::empty({num_groups}, scores.options().dtype(at::kInt));
  at::Tensor group_mean = at::empty({num_groups}, scores.options());
  const float* s = scores.data_ptr<float>();
  bool* mask = keep_mask.data_ptr<bool>();
  int64_t* idx = kept_idx.data_ptr<int64_t>();
  int32_t* count_out = kept_count.data_ptr<int32_t>();
  float* mean_out = group_mean.data_ptr<float>();
  // The reference forms these in float32 too: every backend draws the same line.
  const float margin_f = static_cast<float>(margin);
  const float min_score_f = static_cast<float>(min_score);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  // Higher score first, ties to the lower index: a strict total order on survivors.
  const auto ranks_before = [s](int64_t a, int64_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); };

  at::parallel_for(0, num_groups, kGroupGrain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> survivors;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t lo = off[p], hi = off[p + 1];
      double sum = 0;
      int64_t finite = 0;
      for (int64_t i = lo; i < hi; ++i) {
        if (std::isfinite(s[i])) {
          sum += static_cast<double>(s[i]);
          ++finite;
        }
      }
      const float mean = finite > 0 ? static_cast<float>(sum / static_cast<double>(finite)) : kNegInf;
      const float threshold = mean - margin_f;

      survivors.clear();
      for (int64_t i = lo; i < hi; ++i) {
        const float x = s[i];  // NaN fails every comparison below, as -inf would
        if (x > kNegInf && x >= threshold && x >= min_score_f) survivors.push_back(i);
      }
      const int64_t kept = std::min<int64_t>(k, static_cast<int64_t>(survivors.size()));
      std::partial_sort(survivors.begin(), survivors.begin() + kept, survivors.end(), ranks_before);
      for (int64_t r = 0; r < kept; ++r) {
        idx[p * k + r] = survivors[r];
        mask[survivors[r]] = true;
      }
      count_out[p] = static_cast<int32_t>(kept);
      mean_out[p] = mean;
    }
  });
  return {keep_mask, kept_idx, kept_count, group_mean};
}

}  // namespace
}  // namespace genssd

TORCH_LIBRARY_IMPL(genssd, CPU, m) { m.impl("branch_prune", &genssd::branch_prune_cpu); }
