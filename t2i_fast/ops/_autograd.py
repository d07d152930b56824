"""Autograd helpers shared by the custom ops."""


def forbid_double_backward(backward_op, ops):
    """Make differentiating through `backward_op` raise a clear error instead of a wrong answer."""
    def refuse(ctx, *grads):
        raise RuntimeError(f"t2i_fast: double backward through {ops} is not supported; "
                           f"use impl='reference' for higher-order gradients")

    def setup(ctx, inputs, output):
        return None

    backward_op.register_autograd(refuse, setup_context=setup)
