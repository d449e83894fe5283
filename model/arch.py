"""The architectures memlm trains, built from the `model:` section or from a saved model config."""
from __future__ import annotations

from model.config import ModelConfig
from model.gpt import GPT, GPTConfig, TiedHeadLM
from model.rnn import RNNAttentionLM, RNNConfig


def config_from_dict(data: dict) -> GPTConfig | RNNConfig:
    return RNNConfig(**data) if data.get("arch") == "rnn-attention" else GPTConfig(**data)


def config_for(model_cfg: ModelConfig, vocab_size: int) -> GPTConfig | RNNConfig:
    """The architecture's own config from the `model:` section and the tokenizer's vocabulary."""
    if model_cfg.arch == "rnn-attention":
        return RNNConfig(vocab_size=vocab_size, block_size=model_cfg.block_size, n_layer=model_cfg.n_layer,
                         n_embd=model_cfg.n_embd, cell=model_cfg.cell, dropout=model_cfg.dropout)
    return GPTConfig(vocab_size=vocab_size, block_size=model_cfg.block_size, n_layer=model_cfg.n_layer,
                     n_head=model_cfg.n_head, n_embd=model_cfg.n_embd, dropout=model_cfg.dropout, bias=model_cfg.bias)


def build_model(config: GPTConfig | RNNConfig) -> TiedHeadLM:
    return RNNAttentionLM(config) if isinstance(config, RNNConfig) else GPT(config)
