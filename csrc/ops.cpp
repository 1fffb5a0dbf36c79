// The genssd operator library: every op schema, and the Python module genssd_kernels._C.
//
// Kernels are registered per dispatch key elsewhere (csrc/cpu: CPU, csrc/cuda: CUDA). Fake
// (meta) implementations and the autograd formula live in Python, in genssd_kernels/cpp.py,
// which set_python_module names so torch can find them.
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#define GENSSD_STR_(x) #x
#define GENSSD_STR(x) GENSSD_STR_(x)

TORCH_LIBRARY(genssd, m) {
  m.set_python_module("genssd_kernels.cpp");
  // Returns (token_logprobs [N], lse [N], entropy [N] or [0], segment_mean [S] or [0]): float32
  // statistics (float64 for float64 inputs), and lse, the row's logsumexp of logits / temperature
  // kept for the backward, always float64 so that exp(z - lse) stays exact for large logits.
  m.def(
      "logprob_gather_fwd(Tensor hidden, Tensor weight, Tensor targets, Tensor? cu_seqlens, "
      "float temperature, int ignore_index, bool return_entropy) -> (Tensor, Tensor, Tensor, Tensor)");
  // Gradients of sum(grad_logprobs * token_logprobs) in hidden [N, d] and weight [V, d].
  m.def(
      "logprob_gather_bwd(Tensor grad_logprobs, Tensor hidden, Tensor weight, Tensor targets, Tensor lse, "
      "float temperature, int ignore_index) -> (Tensor, Tensor)");
  // linear_cross_entropy's row step: losses [R] (float32; float64 for float64 logits) of the rows
  // of logits [R, V], which are overwritten with scale * (softmax - onehot(target)); zero rows
  // (and loss 0) where the target is ignore_index. scale: a one-element float tensor.
  m.def("cross_entropy_rows_(Tensor(a!) logits, Tensor targets, Tensor scale, int ignore_index) -> Tensor");
  // Returns (keep_mask [C] bool, kept_idx [P, k] int64, kept_count [P] int32, group_mean [P] float32).
  // check_values: on CUDA a small kernel asserts on the device that group_offsets is valid (no
  // host sync); the CPU kernel checks them always, on the host.
  m.def(
      "branch_prune(Tensor scores, Tensor group_offsets, float margin, int k, float min_score, "
      "bool check_values=True) -> (Tensor, Tensor, Tensor, Tensor)");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef GENSSD_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["torch"] = GENSSD_STR(TORCH_VERSION_MAJOR) "." GENSSD_STR(TORCH_VERSION_MINOR) "." GENSSD_STR(
      TORCH_VERSION_PATCH);
#ifdef __VERSION__
  info["compiler"] = __VERSION__;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "genssd compiled kernels; importing this module registers the torch.ops.genssd operators";
  m.def("build_info", &build_info,
        "dict: cuda (CUDA kernels compiled in), openmp, torch (the version built against), compiler");
}
