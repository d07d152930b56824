"""OpenAI CLIP key names and shapes, written out independently of t2i_fast (for the loading
tests of the ResNet ITM and of the ViT used by CMD)."""


def resblock_shapes(prefix, width, layers):
    """{key: shape} of `layers` residual attention blocks of `width` under `prefix`."""
    keys = {}
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}"
        keys.update({f"{p}.attn.in_proj_weight": (3 * width, width),
                     f"{p}.attn.in_proj_bias": (3 * width,),
                     f"{p}.attn.out_proj.weight": (width, width),
                     f"{p}.attn.out_proj.bias": (width,),
                     f"{p}.ln_1.weight": (width,), f"{p}.ln_1.bias": (width,),
                     f"{p}.mlp.c_fc.weight": (4 * width, width),
                     f"{p}.mlp.c_fc.bias": (4 * width,),
                     f"{p}.mlp.c_proj.weight": (width, 4 * width),
                     f"{p}.mlp.c_proj.bias": (width,),
                     f"{p}.ln_2.weight": (width,), f"{p}.ln_2.bias": (width,)})
    return keys
