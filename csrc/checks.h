// Argument checks shared by the CPU and CUDA kernels.
//
// genssd_kernels.ops validates every argument (and raises ValueError) before it dispatches, so
// these checks only guard direct calls of torch.ops.genssd.*: they keep a wrong call from
// reading out of bounds. They read shapes and dtypes only, never device values.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace genssd {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

inline bool is_index_dtype(at::ScalarType t) { return t == at::kInt || t == at::kLong; }

// The dtype softmax statistics are kept in: float64 for float64 inputs, else float32.
inline at::ScalarType stat_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_gather_args(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                              double temperature) {
  TORCH_CHECK(hidden.dim() == 2, "genssd: hidden must be 2-D [N, d], got ", hidden.dim(), "-D");
  TORCH_CHECK(weight.dim() == 2, "genssd: weight must be 2-D [V, d], got ", weight.dim(), "-D");
  TORCH_CHECK(targets.dim() == 1, "genssd: targets must be 1-D [N], got ", targets.dim(), "-D");
  TORCH_CHECK(is_float_dtype(hidden.scalar_type()), "genssd: hidden must be a floating dtype, got ",
              hidden.scalar_type());
  TORCH_CHECK(weight.scalar_type() == hidden.scalar_type(), "genssd: weight dtype ", weight.scalar_type(),
              " differs from hidden dtype ", hidden.scalar_type());
  TORCH_CHECK(targets.scalar_type() == at::kLong, "genssd: targets must be int64, got ", targets.scalar_type());
  TORCH_CHECK(hidden.size(1) == weight.size(1), "genssd: hidden has d=", hidden.size(1), " but weight has d=",
              weight.size(1));
  TORCH_CHECK(targets.size(0) == hidden.size(0), "genssd: targets has ", targets.size(0), " rows but hidden has ",
              hidden.size(0));
  TORCH_CHECK(weight.size(0) >= 1, "genssd: weight must have at least one row");
  TORCH_CHECK(weight.device() == hidden.device() && targets.device() == hidden.device(),
              "genssd: hidden, weight and targets must be on one device");
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, "genssd: temperature must be finite and > 0, got ",
              temperature);
}

inline void check_prune_args(const at::Tensor& scores, const at::Tensor& group_offsets, double margin, int64_t k) {
  TORCH_CHECK(scores.dim() == 1, "genssd: scores must be 1-D [C], got ", scores.dim(), "-D");
  TORCH_CHECK(scores.scalar_type() == at::kFloat, "genssd: scores must be float32, got ", scores.scalar_type());
  TORCH_CHECK(group_offsets.dim() == 1 && group_offsets.size(0) >= 1,
              "genssd: group_offsets must be 1-D with at least one entry");
  TORCH_CHECK(is_index_dtype(group_offsets.scalar_type()), "genssd: group_offsets must be int32 or int64, got ",
              group_offsets.scalar_type());
  TORCH_CHECK(group_offsets.device() == scores.device(), "genssd: group_offsets and scores must be on one device");
  TORCH_CHECK(k >= 1, "genssd: k must be >= 1, got ", k);
  TORCH_CHECK(!std::isnan(margin) && margin >= 0, "genssd: margin must be >= 0, got ", margin);
}

}  // namespace genssd
