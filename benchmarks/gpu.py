"""GPU throughput against the physical limit: the embedders at real model sizes, random weights.

Text: a ColBERT-size encoder (BERT-base, 768 wide, 12 layers, 128-dim head; its WordPiece
trained here) exported to ONNX and run by colray's embedder on ONNX Runtime's CUDA provider.
Pages: ColQwen2-size (Qwen2-VL-2B) and ColPali-size (PaliGemma-3B at 448 px) models, built
from their real configurations with random weights, saved, and loaded by colray's own loader
in bf16. Each prints items/s and the fraction of the GPU's peak dense bf16 FLOP/s reached:
model FLOPs per item (counted by torch's FlopCounterMode on each item at its own length,
so padding is not counted as work) x items/s / peak.

    uv run python benchmarks/gpu.py                 # needs a CUDA GPU
    uv run python benchmarks/gpu.py --tiny          # the same code, tiny models, CPU (smoke run)
    uv run python benchmarks/gpu.py --cpu --docs 64 --pages 2 --page-batch 1  # real sizes, CPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from image_ingest import page_images  # benchmarks/ is on sys.path when run as a script
from torch.utils.flop_counter import FlopCounterMode

from colray.config import EmbedConfig, ImageConfig
from colray.demo import stdlib_docstrings
from colray.embed import load_embedder
from colray.embed.colpali import ColPaliFamilyEmbedder, describe_image_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny_models import build_tiny_colbert
from tiny_vision_models import build_tiny_colpali, build_tiny_colqwen2

# Dense bf16 tensor-core peaks from the vendors' datasheets (without sparsity), TFLOP/s.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0,
                    "L40S": 362.05, "L4": 121.0, "A10": 125.0}  # fmt: skip

COLBERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "intermediate_size": 3072, "max_position_embeddings": 512}  # fmt: skip
# Qwen2-VL-2B-Instruct's configuration (ColQwen2's backbone); 768 visual tokens at most.
QWEN2_VL_2B = {
    "text_config": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                    "num_attention_heads": 12, "num_key_value_heads": 2,
                    "max_position_embeddings": 32768, "max_window_layers": 28,
                    "layer_types": ["full_attention"] * 28,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                                        "mrope_section": [16, 24, 24]}},
    "vision_config": {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "mlp_ratio": 4,
                      "num_heads": 16},
}  # fmt: skip
QWEN_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 768 * 28 * 28}
# PaliGemma-3B at 448 px (ColPali v1.2/v1.3's backbone): SigLIP-So400m + Gemma-2B.
PALIGEMMA_3B_448 = {
    "hidden_size": 2048, "projection_dim": 2048,
    "text_config": {"hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
                    "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
                    "num_image_tokens": 1024, "max_position_embeddings": 8192},
    "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                      "num_attention_heads": 16, "image_size": 448, "projection_dim": 2048},
}  # fmt: skip


def peak_flops(device: str, override_tflops: float | None) -> tuple[str, float | None]:
    if device != "cuda":
        return "CPU", override_tflops and override_tflops * 1e12
    name = torch.cuda.get_device_name(0)
    if override_tflops:
        return name, override_tflops * 1e12
    for key, tflops in PEAK_BF16_TFLOPS.items():  # most specific names first
        if key in name:
            return name, tflops * 1e12
    return name, None


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        is_dict = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merge(base[key], value) if is_dict else value
    return merged


def resize_saved_model(directory: Path, dims: dict[str, Any], processor: dict[str, Any]) -> None:
    """Give a saved tiny model its real dimensions: new random weights of the real shapes."""
    import colpali_engine.models as colpali_models
    from transformers import AutoConfig

    config_file = directory / "config.json"
    config = _merge(json.loads(config_file.read_text()), dims)
    config_file.write_text(json.dumps(config))
    processor_file = directory / "processor_config.json"
    saved = json.loads(processor_file.read_text())
    saved["image_processor"] = _merge(saved["image_processor"], processor)
    processor_file.write_text(json.dumps(saved))
    model_class = getattr(colpali_models, config["architectures"][0])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # random init of billions of weights: on the GPU
        model = model_class(AutoConfig.from_pretrained(str(directory)))
    with torch.no_grad():
        model.custom_text_proj.bias.normal_(0.0, 0.02)  # as a trained head; see tiny builders
    for stale in directory.glob("*.safetensors*"):
        stale.unlink()
    model.to(torch.bfloat16).save_pretrained(str(directory))
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def timed_rate(count: int, fn: Callable[[], object]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def text_row(work: Path, tiny: bool, docs: int, batch: int, gpu: bool) -> dict[str, Any]:
    texts = [d["text"] for d in stdlib_docstrings(public_only=False)][:docs]
    doc_maxlen = 24 if tiny else 300
    colbert = build_tiny_colbert(
        texts[:2000], work / "colbert", dim=24 if tiny else 128, doc_maxlen=doc_maxlen,
        query_maxlen=32, encoder=None if tiny else COLBERT_BASE,
        vocab_size=400 if tiny else 8000,
    )  # fmt: skip
    embedder = load_embedder(
        EmbedConfig(model=str(colbert.directory), batch_size=batch, num_gpus=1 if gpu else 0),
        use_gpu=gpu,
    )
    provider = embedder.session.get_providers()[0]
    if gpu and embedder.io_device != "cuda":
        raise SystemExit(f"ONNX Runtime ran on {provider}, not CUDA: is onnxruntime-gpu usable?")
    embedder.embed_documents(texts[:batch])  # warm-up: CUDA context, cuDNN/cuBLAS autotuning

    def embed_all() -> None:
        for start in range(0, len(texts), 256):  # the pipeline's rows_per_call
            embedder.embed_documents(texts[start : start + 256])

    rate = timed_rate(len(texts), embed_all)
    # FLOPs of the same network in PyTorch, each document alone at its own length.
    sample = texts[:: max(1, len(texts) // 200)]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        for text in sample:
            ids = torch.tensor([embedder.tokenizer.encode(text).ids[:doc_maxlen]])
            colbert.linear(colbert.bert(input_ids=ids).last_hidden_state)
    flops = counter.get_total_flops() / len(sample)
    size = "tiny" if tiny else "real size"
    return {"model": f"ColBERT-size (BERT-base + 128-d head), {size}, ONNX Runtime {provider}",
            "unit": "docs", "rate": rate, "flops": flops, "batch": batch}  # fmt: skip


def page_row(work: Path, family: str, tiny: bool, pages: int, batch: int, gpu: bool) -> dict:
    directory = work / family
    if family == "colqwen2":
        build_tiny_colqwen2(directory)
        if not tiny:
            resize_saved_model(directory, QWEN2_VL_2B, {"size": QWEN_PIXELS})
    else:
        build_tiny_colpali(directory)
        if not tiny:
            resize_saved_model(directory, PALIGEMMA_3B_448,
                               {"size": {"height": 448, "width": 448}, "image_seq_length": 1024})  # fmt: skip
    info = describe_image_model(str(directory))
    embedder = ColPaliFamilyEmbedder(info, ImageConfig(model=str(directory), batch_size=batch),
                                     use_gpu=gpu)  # fmt: skip
    images = [
        page.resize(info.geometry.target_size(page.width, page.height))
        for page in page_images(pages)
    ]  # as decoding hands them over: already at the model's size
    embedder.embed_images(images[:batch])  # warm-up
    embedded: list = []
    rate = timed_rate(len(images), lambda: embedded.extend(embedder.embed_images(images)))
    vectors = round(float(np.mean([len(page.vectors) for page in embedded])))
    sample = images[:4]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        for image in sample:
            batch_inputs = embedder.processor.process_images([image]).to(embedder.device)
            batch_inputs.pop("labels", None)
            embedder.model(**batch_inputs)
    flops = counter.get_total_flops() / len(sample)
    size = "real size" if not tiny else "tiny"
    name = {"colqwen2": "ColQwen2-size (Qwen2-VL-2B)", "colpali": "ColPali-size (PaliGemma-3B)"}
    return {"model": f"{name[family]}, {size}, {embedder.model.dtype}".replace("torch.", ""),
            "unit": f"pages (~{vectors} vectors)", "rate": rate, "flops": flops, "batch": batch}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU: a smoke run")
    parser.add_argument("--cpu", action="store_true", help="real sizes on CPU (slow): a check")
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--pages", type=int, default=256)
    parser.add_argument("--text-batch", type=int, default=128)
    parser.add_argument("--page-batch", type=int, default=16)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the table")
    parser.add_argument("--only", default="text,colqwen2,colpali")
    args = parser.parse_args()
    gpu = not (args.tiny or args.cpu)
    if gpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: run with --tiny for a CPU smoke run")
    device_name, peak = peak_flops("cuda" if gpu else "cpu", args.peak_tflops)
    work = Path(tempfile.mkdtemp(prefix="colray-gpu-"))
    rows = []
    try:
        for what in args.only.split(","):
            if what == "text":
                rows.append(text_row(work, args.tiny, args.docs, args.text_batch, gpu))
            else:
                rows.append(page_row(work, what, args.tiny, args.pages, args.page_batch, gpu))
            shutil.rmtree(work / what, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"device: {device_name}; peak dense bf16: "
          f"{'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}")  # fmt: skip
    print("| model | batch | items/s | GFLOP per item | TFLOP/s | of peak |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    summary = []
    for row in rows:
        achieved = row["flops"] * row["rate"]
        share = "n/a" if peak is None else f"{achieved / peak:.1%}"
        print(f"| {row['model']} | {row['batch']} | {row['rate']:.3g} {row['unit']}/s | "
              f"{row['flops'] / 1e9:.3g} | {achieved / 1e12:.2f} | {share} |")  # fmt: skip
        key = row["model"].split("-size")[0].split(" ")[0].lower()
        summary.append(f"{key}_per_s={row['rate']:.3g}")
        if peak is not None:
            summary.append(f"{key}_of_peak={achieved / peak:.3f}")
    print(" ".join(summary))


if __name__ == "__main__":
    main()
