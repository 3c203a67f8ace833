"""What armt knows about one model family (:class:`Family`), and the config fields every family
shares that do not change a decoder layer's maths."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

#: config fields of every Hugging Face model that leave the decoder layers' maths alone: names,
#: token ids, output switches, initialisation, the vocabulary and the head's tying (the weights are
#: used as they are); dropout is checked separately (the wavefront refuses training-mode dropout)
SHARED_INERT_FIELDS = frozenset({
    "architectures", "add_cross_attention", "chunk_size_feed_forward", "classifier_dropout", "cross_attention_hidden_size",
    "dtype", "finetuning_task", "id2label", "initializer_range", "is_decoder", "is_encoder_decoder", "label2id",
    "max_position_embeddings", "model_type", "num_hidden_layers", "output_attentions", "output_hidden_states",
    "prefix", "problem_type", "return_dict", "task_specific_params", "tie_word_embeddings", "tokenizer_class",
    "torch_dtype", "torchscript", "transformers_version", "use_cache", "use_return_dict", "vocab_size",
})


@dataclass(frozen=True)
class Family:
    """One family of decoder models, as armt needs to know it.

    Attributes:
        name: the family's name (its first model type).
        model_types: the ``config.model_type`` values it covers (Llama's layer also serves
            Mistral and Qwen2).
        layers_path: dotted path of the decoder layers in the ``*ForCausalLM`` class.
        layer_classes: the decoder layer classes whose maths :attr:`stacked` writes down.
        positions: ``"learned"`` (a position table added to the input) or ``"rotary"``.
        dropout_fields: config fields holding the family's dropout probabilities.
        followed_fields: config fields that change the layers' maths and that :attr:`stacked`
            implements (any value is fine).
        refused_fields: fields it does not implement, with why; refused when not at their default.
        stacked: the wavefront's layer: ``stacked(causal_lm, layers)`` holds the weights of
            ``layers`` stacked; ``.embed(x)`` prepares a segment's input; ``(h, sl)`` runs the
            layers ``sl``; ``.final_norm`` is the norm before the head.
        tiny: ``tiny(model_type, layers=, hidden=, heads=, kv_heads=, vocab=, max_positions=,
            intermediate=)`` a small config for tests, demos and benchmarks.
    """

    name: str
    model_types: tuple[str, ...]
    layers_path: str
    layer_classes: tuple[str, ...]
    positions: str
    dropout_fields: tuple[str, ...]
    followed_fields: frozenset[str]
    stacked: Callable
    tiny: Callable
    refused_fields: Mapping[str, str] = field(default_factory=dict)
