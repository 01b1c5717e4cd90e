"""Tiny models of real architectures, built offline for tests: random weights, real layouts.

A tiny ColBERT: a BERT encoder plus a linear head, its WordPiece tokenizer trained here,
exported to ONNX and saved as answerai-colbert-small-v1 / colbertv2.0 repositories are.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import torch

from colray.embed.onnx_text import export_module_to_onnx

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}  # fmt: skip
BERT_SPECIALS = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class TinyColbert:
    directory: Path
    bert: torch.nn.Module
    linear: torch.nn.Linear
    query_maxlen: int
    doc_maxlen: int


def train_wordpiece(corpus: list[str], out_dir: Path, vocab_size: int = 400) -> Path:
    """A BERT-style uncased WordPiece tokenizer with BERT's special-token ids."""
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator(
        corpus + list(string.punctuation),
        vocab_size=vocab_size,
        special_tokens=BERT_SPECIALS,
        min_frequency=1,
    )
    from tokenizers.processors import TemplateProcessing

    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_model(str(out_dir))  # vocab.txt
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True})
    )
    return out_dir


def build_tiny_colbert(
    corpus: list[str],
    out_dir: Path,
    *,
    onnx_name: str = "vespa_colbert.onnx",
    dim: int = 24,
    query_maxlen: int = 16,
    doc_maxlen: int = 24,
    seed: int = 0,
    encoder: dict | None = None,
    vocab_size: int = 400,
) -> TinyColbert:
    """`encoder` overrides the BERT config (benchmarks build a ColBERT-size one this way)."""
    from transformers import BertConfig, BertModel

    train_wordpiece(corpus, out_dir, vocab_size)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len((out_dir / "vocab.txt").read_text().splitlines()),
        **(encoder or TINY_BERT),
    )
    bert = BertModel(config, add_pooling_layer=False).eval()
    linear = torch.nn.Linear(config.hidden_size, dim, bias=False).eval()
    config.save_pretrained(str(out_dir))

    class ColbertHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert, self.linear = bert, linear

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.linear(hidden)

    onnx_path = out_dir / onnx_name
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    export_module_to_onnx(ColbertHead(), onnx_path, output_name="contextual")
    (out_dir / "artifact.metadata").write_text(
        json.dumps(
            {
                "query_maxlen": query_maxlen,
                "doc_maxlen": doc_maxlen,
                "query_token_id": "[unused0]",
                "doc_token_id": "[unused1]",
                "attend_to_mask_tokens": False,
                "mask_punctuation": True,
                "dim": dim,
            }
        )
    )
    return TinyColbert(out_dir, bert, linear, query_maxlen, doc_maxlen)
