// The Autograd kernel of sfmp::linear_cpu.v2, in C++ so that a call that needs no gradient pays
// nothing for autograd.
//
// torch.library.register_autograd installs a Python kernel at the Autograd key: every call outside
// inference mode (HF generate runs under no_grad, not inference_mode) ran ~13-20 us of Python before
// reaching the C++ kernel, as much as a small layer's GEMV. Here, when grad mode is off or x does not
// require grad, the call goes straight below autograd to the CPU kernel (or, while a graph is traced,
// to the fake kernel). Otherwise a torch::autograd::Function records the frozen-weight backward:
// dX = dY @ W-hat (the weights are never trainable), computed by sfmp::linear_cpu_grad_input, a
// Python op (ops/cpu.py) so that AOT autograd traces the backward through its fake kernel.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using at::Tensor;

// sfmp::linear_cpu.v2 and its backward take the same arguments after their first tensor.
using PackedSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                         const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t, int64_t,
                         int64_t, int64_t);

const c10::TypedOperatorHandle<PackedSig>& forward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("sfmp::linear_cpu", "v2").typed<PackedSig>();
  return op;
}

// Looked up at the first backward: the op is defined from Python, after this library is loaded.
const c10::TypedOperatorHandle<PackedSig>& grad_input_op() {
  static const auto op = [] {
    auto handle = c10::Dispatcher::singleton().findOp({"sfmp::linear_cpu_grad_input", ""});
    TORCH_CHECK(handle.has_value(),
                "sfmp::linear_cpu: the backward op sfmp::linear_cpu_grad_input is not registered; "
                "import sfmp_compile.ops.cpu before differentiating through the CPU kernel");
    return handle->typed<PackedSig>();
  }();
  return op;
}

struct LinearCpu : public torch::autograd::Function<LinearCpu> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& qweight, const Tensor& bits,
                        const Tensor& block_offset, const Tensor& group_order, const Tensor& segment_ptr,
                        const Tensor& scales, const Tensor& zeros, const Tensor& row_perm, const Tensor& col_perm,
                        int64_t out_features, int64_t in_features, int64_t block_rows, int64_t group_size,
                        int64_t flags) {
    ctx->save_for_backward({qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm, col_perm});
    ctx->saved_data["meta"] = std::vector<int64_t>{out_features, in_features, block_rows, group_size, flags};
    at::AutoDispatchBelowADInplaceOrView below;
    return forward_op().call(x, qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm,
                             col_perm, out_features, in_features, block_rows, group_size, flags);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(15);  // one per forward argument; only x gets a gradient (frozen weights)
    if (!grads[0].defined()) return out;
    const auto s = ctx->get_saved_variables();
    const auto m = ctx->saved_data["meta"].toIntVector();
    out[0] = grad_input_op().call(grads[0], s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], m[0], m[1], m[2],
                                  m[3], m[4]);
    return out;
  }
};

Tensor linear_cpu_autograd(const Tensor& x, const Tensor& qweight, const Tensor& bits, const Tensor& block_offset,
                           const Tensor& group_order, const Tensor& segment_ptr, const Tensor& scales,
                           const Tensor& zeros, const Tensor& row_perm, const Tensor& col_perm, int64_t out_features,
                           int64_t in_features, int64_t block_rows, int64_t group_size, int64_t flags) {
  if (!at::GradMode::is_enabled() || !x.requires_grad()) {
    at::AutoDispatchBelowADInplaceOrView below;
    return forward_op().call(x, qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm,
                             col_perm, out_features, in_features, block_rows, group_size, flags);
  }
  return LinearCpu::apply(x, qweight, bits, block_offset, group_order, segment_ptr, scales, zeros, row_perm, col_perm,
                          out_features, in_features, block_rows, group_size, flags);
}

}  // namespace

TORCH_LIBRARY_IMPL(sfmp, Autograd, m) {
  m.impl("linear_cpu.v2", &linear_cpu_autograd);
}
