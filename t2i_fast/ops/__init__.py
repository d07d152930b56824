"""Public ops of t2i_fast. Each takes `impl=` ('reference', 'cpu', 'triton', 'cuda', 'auto').

    memory_read(query, key, value, mask=None, *, scale=1.0, mask_compat=False, return_attn=False)
    response_gate(h, o, weight, bias, *, return_gate=False)
    dynamic_memory(h, key, value, mask, gate_weight, gate_bias, *, mask_compat=False,
                   return_attn=False)
    word_region_attention(words, regions, gamma1, word_mask=None)
    word_region_similarity(regions, words, cap_lens, gamma1=4.0, gamma2=5.0)
    damsm_word_loss(regions, words, cap_lens, class_ids=None, *, gamma1, gamma2, gamma3)
    damsm_sentence_loss(image_code, sent_code, class_ids=None, *, gamma3, eps)

Drop-in modules with the upstream names: Memory, GlobalAttentionGeneral, func_attention,
words_loss, sent_loss.
"""
from t2i_fast.backends import BackendUnavailable, use_backend
from t2i_fast.ops.damsm import damsm_sentence_loss, damsm_word_loss
from t2i_fast.ops.dynamic_memory import (dynamic_memory, dynamic_memory_reference, memory_read,
                                         memory_read_reference, response_gate,
                                         response_gate_reference)
from t2i_fast.ops.modules import (GlobalAttentionGeneral, Memory, func_attention, sent_loss,
                                  words_loss)
from t2i_fast.ops.word_region import (word_region_attention, word_region_attention_reference,
                                      word_region_similarity, word_region_similarity_reference)

__all__ = [
    "memory_read", "response_gate", "dynamic_memory", "word_region_attention",
    "word_region_similarity", "damsm_word_loss", "damsm_sentence_loss",
    "memory_read_reference", "response_gate_reference", "dynamic_memory_reference",
    "word_region_attention_reference", "word_region_similarity_reference",
    "Memory", "GlobalAttentionGeneral", "func_attention", "words_loss", "sent_loss",
    "use_backend", "BackendUnavailable",
]
