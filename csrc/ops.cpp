// All operator schemas of t2i_fast._C, in one place. The CPU kernels (csrc/cpu/) and the CUDA
// kernels (csrc/cuda/) register implementations of these schemas for their dispatch keys; the
// Python layer (t2i_fast/ops/) wraps them in autograd-aware custom ops.
//
// Conventions shared by every implementation (see t2i_fast/ops/*.py for the reference math):
//   * N = H*W pixels, T word slots, R regions; mask is bool (B, T), true = padded slot.
//   * Optional outputs that were not requested are returned as empty tensors.
//   * lse holds float32 per-row log-sum-exp statistics for backward; a row with every slot
//     masked stores +inf so that exp(s - lse) = 0 there.
#include "common.h"

#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

TORCH_LIBRARY(t2i_fast_C, m) {
  // The dynamic-memory family. With key/value: attention read o = softmax(scale*h^T k) v.
  // Without key/value: o is given (response gate only). With gate_weight (2C)/gate_bias (1):
  // g = sigmoid(w_h.h + w_o.o + b), out = h*(1-g) + g*o; else out = o.
  // Returns (out (B,Cout,H,W), lse (B,N) f32, attn (B,T,H,W), gate (B,1,H,W)).
  m.def("dynamic_memory_forward(Tensor h, Tensor? o, Tensor? key, Tensor? value, Tensor? mask, "
        "Tensor? gate_weight, Tensor? gate_bias, float scale, bool mask_compat, "
        "bool return_attn, bool return_gate) -> (Tensor, Tensor, Tensor, Tensor)");
  // Returns (dh, do, dkey, dvalue, dgate_weight, dgate_bias); entries for absent inputs are empty.
  m.def("dynamic_memory_backward(Tensor grad_out, Tensor? grad_attn, Tensor? grad_gate, Tensor h, "
        "Tensor? o, Tensor? key, Tensor? value, Tensor? mask, Tensor? gate_weight, "
        "Tensor? gate_bias, Tensor lse, float scale, bool mask_compat) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // The word-region family. regions (Bi,D,R), words (Bc,D,T), cap_lens (Bc,) int64; the
  // kernels clamp each length into [0, T] (the ops accept 1..T).
  // Returns (S (Bi,Bc), lse (Bi,Bc,T) f32: log-sum-exp over regions of gamma1*a per word).
  m.def("word_region_similarity_forward(Tensor regions, Tensor words, Tensor cap_lens, "
        "float gamma1, float gamma2) -> (Tensor, Tensor)");
  // Returns (d_regions, d_words).
  m.def("word_region_similarity_backward(Tensor grad_s, Tensor regions, Tensor words, "
        "Tensor cap_lens, Tensor lse, float gamma1, float gamma2) -> (Tensor, Tensor)");
  // Index-paired: words (B,D,T), regions (B,D,R), word_mask (B,T) or None.
  // Returns (context (B,D,T), attn (B,T,R), lse (B,T) f32).
  m.def("word_region_attention_forward(Tensor words, Tensor regions, Tensor? word_mask, "
        "float gamma1) -> (Tensor, Tensor, Tensor)");
  // Returns (d_words, d_regions).
  m.def("word_region_attention_backward(Tensor grad_context, Tensor? grad_attn, Tensor words, "
        "Tensor regions, Tensor? word_mask, Tensor lse, float gamma1) -> (Tensor, Tensor)");
}

static pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                          std::to_string(TORCH_VERSION_MINOR) + "." +
                          std::to_string(TORCH_VERSION_PATCH);
#ifdef T2I_FAST_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  // The CUDA kernels' limits, for the backend table (t2i_fast/backends.py).
  info["cuda_max_slots"] = t2i_fast::kCudaMaxSlots;
  info["cuda_max_batch"] = t2i_fast::kCudaMaxBatch;
  return info;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "t2i_fast C++/CUDA kernels; the ops are registered under torch.ops.t2i_fast_C";
  m.def("build_info", &build_info, "How this extension was built");
}
