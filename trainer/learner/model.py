"""Hugging Face config -> megatron-core `TransformerConfig` and `GPTModel` chunks.

Families: Qwen2 / Qwen2.5 (QKV bias), Qwen3 (QK RMSNorm, explicit head_dim) and Llama (optional
llama3 RoPE scaling). All use GQA, RoPE with the config's theta, RMSNorm and SwiGLU; embeddings may
be tied. Built from megatron-core's own modules (local spec) plus the two in `layers.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.enums import ModelType
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from forkrl.trainer.learner.arch import ModelArch
from forkrl.trainer.learner.attention import SDPACoreAttention, UnfusedCoreAttention
from forkrl.trainer.learner.config import LearnerSpec
from forkrl.trainer.learner.head import install_hidden_states_head
from forkrl.trainer.learner.layers import PositionRotaryEmbedding, RMSNorm


def transformer_config(arch: ModelArch, spec: LearnerSpec, has_gpu: bool) -> TransformerConfig:
    """The megatron `TransformerConfig` for this architecture under the spec's layout and dtype."""
    par = spec.parallel
    par.validate_for(arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.vocab_size)
    dtype = torch.bfloat16 if spec.resolved_dtype(has_gpu) == "bfloat16" else torch.float32
    recompute: dict[str, Any] = {}
    if spec.activation_recompute == "full":
        recompute = {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}
    elif spec.activation_recompute == "selective":
        recompute = {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_kv_heads,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=arch.init_std,
        tensor_model_parallel_size=par.tensor_parallel,
        pipeline_model_parallel_size=par.pipeline_parallel,
        virtual_pipeline_model_parallel_size=par.virtual_pipeline,
        sequence_parallel=par.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        attention_softmax_in_fp32=True,
        # The fused CUDA kernels come from apex/TE, which the learner does not require.
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        use_cpu_initialization=True,
        # Loss normalisation is done by the objective library against global counts.
        calculate_per_token_loss=True,
        deallocate_pipeline_outputs=True,
        # With PP = 2 a stage's previous and next rank coincide; batched isend/irecv then posts sends
        # in both directions to one peer on one gloo channel and they can pair with the wrong receive.
        # Unbatched p2p puts the two directions on different groups.
        batch_p2p_comm=has_gpu,
        **recompute,
    )


def layer_spec(arch: ModelArch, attention: str = "sdpa") -> ModuleSpec:
    """One decoder layer from megatron-core local modules, with the learner's RMSNorm and core attention
    (`sdpa`: torch's fused kernels, FlexAttention for packed rows on CUDA; `unfused`: megatron's
    DotProductAttention; both in attention.py)."""
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=RMSNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                # Causal by default; packed micro-batches pass their document ids as the mask (attention.py).
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=SDPACoreAttention if attention == "sdpa" else UnfusedCoreAttention,
                    linear_proj=RowParallelLinear,
                    q_layernorm=RMSNorm if arch.qk_norm else IdentityOp,
                    k_layernorm=RMSNorm if arch.qk_norm else IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=RMSNorm,
            mlp=ModuleSpec(
                module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)
            ),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def build_model_chunks(
    arch: ModelArch, config: TransformerConfig, max_sequence_length: int, perform_init: bool = True,
    hidden_states_head: bool = False, attention: str = "sdpa",
) -> list[GPTModel]:
    """This rank's model chunks (one per virtual pipeline stage), unwrapped, on the current device.

    Parallel state must be initialised. With `perform_init=False` weights are left uninitialised
    (they are about to be imported, or the model lives on the meta device). `hidden_states_head`: the last
    stage returns final hidden states for the fused loss head instead of logits (head.py).
    """
    config = dataclasses.replace(config, perform_initialization=perform_init)
    vpp = config.virtual_pipeline_model_parallel_size
    chunks: list[GPTModel] = []
    for vp in range(vpp or 1):
        vp_stage = vp if vpp else None
        block = TransformerBlockSubmodules(
            layer_specs=[layer_spec(arch, attention)] * get_num_layers_to_build(config, vp_stage=vp_stage),
            layer_norm=RMSNorm,
        )
        model = GPTModel(
            config=config,
            transformer_layer_spec=block,
            vocab_size=arch.vocab_size,
            max_sequence_length=max_sequence_length,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            parallel_output=True,
            share_embeddings_and_output_weights=arch.tie_embeddings,
            position_embedding_type="rope",
            rotary_base=arch.rope_theta,
            rope_scaling=arch.llama3_rope_factor is not None,
            rope_scaling_factor=arch.llama3_rope_factor or 8.0,
            vp_stage=vp_stage,
        )
        model.rotary_pos_emb = PositionRotaryEmbedding(
            kv_channels=arch.head_dim,
            rotary_percent=1.0,
            rotary_base=arch.rope_theta,
            rope_scaling=arch.llama3_rope_factor is not None,
            rope_scaling_factor=arch.llama3_rope_factor or 8.0,
            use_cpu_initialization=True,
        )
        model.model_type = ModelType.encoder_or_decoder
        if not perform_init:
            mark_tensor_parallel_params(model)
        if hidden_states_head:
            install_hidden_states_head(model)
        chunks.append(model)
    return chunks


def mark_tensor_parallel_params(model: torch.nn.Module) -> None:
    """Tag TP-sharded weights as megatron's initialisers would have.

    megatron sets `tensor_model_parallel` / `partition_dim` only while initialising weights; with
    `perform_initialization=False` (weights about to be imported) the tags are missing and the
    gradient norm would count every sharded weight as a replica present on TP-rank 0 only.
    """
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.nn.Parameter) or hasattr(weight, "tensor_model_parallel"):
            continue
        if isinstance(module, ColumnParallelLinear | VocabParallelEmbedding):
            set_tensor_model_parallel_attributes(weight, is_parallel=True, dim=0, stride=1)
        elif isinstance(module, RowParallelLinear):
            set_tensor_model_parallel_attributes(weight, is_parallel=True, dim=1, stride=1)


def global_layer_index(layer: torch.nn.Module) -> int:
    """0-based index of a megatron `TransformerLayer` in the full model (its `layer_number` is 1-based)."""
    return int(layer.layer_number) - 1
