"""Tiny ColPali-family vision retrievers (ColQwen2, ColQwen2.5, ColPali) built offline for tests.

Real architectures and processors with random float32 weights, saved as a Hub repository would be.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import (
        GemmaTokenizer,
        PreTrainedModel,
        ProcessorMixin,
        Qwen2Tokenizer,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

# A fixed corpus: enough words for a few hundred merges, nothing random.
CORPUS: list[str] = [
    "The quarterly report shows revenue growth in every region.",
    "Figure 3 plots the loss curve against the number of training steps.",
    "Table 2 lists the invoice number, the date and the total amount due.",
    "Scanned pages of a technical manual describe how to replace the filter.",
    "The chart compares energy consumption across industrial sectors.",
    "What is the maximum operating temperature of the pump?",
    "Which page explains the safety instructions for the battery?",
    "A diagram of the network topology with routers and switches.",
    "Summary: the committee approved the budget for the next fiscal year.",
    "Contact information, opening hours and the address of the office.",
    "Describe the image.",
    "user\nassistant\nsystem\n",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz",
    "0123456789 %$€ (a) [b] {c} - _ + = / \\ | ; : ' \" , . ! ? @ # & *",
]

QWEN2_VL_SPECIALS: list[str] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
GEMMA_SPECIALS: list[str] = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]

# Qwen2-VL geometry: 14-pixel patches, 2x2 spatial merge, 2 temporal frames per patch.
QWEN_PATCH, QWEN_MERGE, QWEN_TEMPORAL = 14, 2, 2
QWEN_TEXT_HIDDEN = 32  # the language model's width, which the vision merger must output
QWEN_MIN_PIXELS = (QWEN_PATCH * QWEN_MERGE) ** 2 * 4  # at least 4 merged image tokens
QWEN_MAX_PIXELS = (QWEN_PATCH * QWEN_MERGE) ** 2 * 16  # at most 16 merged image tokens

# Qwen3-VL geometry: 16-pixel patches, the same 2x2 merge, pixel bounds kept in `size` only.
QWEN3_PATCH = 16
QWEN3_MIN_PIXELS = (QWEN3_PATCH * QWEN_MERGE) ** 2 * 4
QWEN3_MAX_PIXELS = (QWEN3_PATCH * QWEN_MERGE) ** 2 * 16

# PaliGemma geometry: a fixed square image cut into a grid of 14-pixel patches.
PALI_PATCH, PALI_IMAGE = 14, 56  # a 4x4 grid: 16 image tokens


def _train_byte_level_bpe(
    vocab_size: int, specials: list[str] = QWEN2_VL_SPECIALS
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges of a byte-level BPE (GPT-2 / Qwen2 style), the specials first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return _vocab_and_merges(tokenizer)


def _vocab_and_merges(tokenizer: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tokenizer.to_str())["model"]
    merges = []
    for merge in model["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        merges.append((str(left), str(right)))
    return {str(piece): int(i) for piece, i in model["vocab"].items()}, merges


def _qwen2_tokenizer() -> Qwen2Tokenizer:
    # transformers 5: `Qwen2TokenizerFast` is an alias of `Qwen2Tokenizer` (tokenizers backend).
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_byte_level_bpe(vocab_size=600)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=QWEN2_VL_SPECIALS,
        model_max_length=32768,
        padding_side="left",  # ColQwen2Processor forces left anyway
    )
    return tokenizer


def _qwen2_vl_image_and_video_processors() -> tuple[Qwen2VLImageProcessor, Qwen2VLVideoProcessor]:
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    common: dict[str, Any] = {
        "min_pixels": QWEN_MIN_PIXELS,
        "max_pixels": QWEN_MAX_PIXELS,
        "patch_size": QWEN_PATCH,
        "temporal_patch_size": QWEN_TEMPORAL,
        "merge_size": QWEN_MERGE,
    }
    return Qwen2VLImageProcessor(**common), Qwen2VLVideoProcessor(**common)


def _qwen_text_config(tokenizer: Qwen2Tokenizer) -> dict[str, Any]:
    hidden, heads = QWEN_TEXT_HIDDEN, 2  # head_dim 16: mrope_section must sum to 8
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": heads,
        "num_key_value_heads": 1,
        "max_position_embeddings": 1024,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": [2, 3, 3],
        },
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    }


def _qwen_special_ids(tokenizer: Qwen2Tokenizer) -> dict[str, int]:
    names = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    return {key: int(tokenizer.convert_tokens_to_ids(token)) for key, token in names.items()}


def _save_float32(model: PreTrainedModel, processor: ProcessorMixin, out_dir: Path) -> Path:
    # `post_init` zeroes Linear biases. A trained head has a non-zero bias, and the real models
    # rely on it: under SDPA the hidden state at a padded position is exactly 0, so a zero bias
    # gives 0 / ||0|| = NaN there instead of the 0 that the attention-mask multiply should leave.
    with torch.no_grad():
        head = cast(torch.nn.Linear, model.custom_text_proj)
        head.bias.normal_(0.0, 0.02)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.float32).eval()
    model.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    return out_dir


def _build_tiny_qwen(
    out_dir: Path,
    seed: int,
    model_class: Any,
    processor_class: Any,
    config_class: Any,
    vision_config: dict[str, Any],
) -> Path:
    """The Qwen-VL family's shared recipe; only the backbone's vision tower differs."""
    tokenizer = _qwen2_tokenizer()
    image_processor, video_processor = _qwen2_vl_image_and_video_processors()
    processor = processor_class(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor
    )
    text_config = _qwen_text_config(tokenizer)
    config = config_class(
        text_config=text_config,
        vision_config={
            **vision_config,
            "patch_size": QWEN_PATCH,
            "spatial_merge_size": QWEN_MERGE,
            "temporal_patch_size": QWEN_TEMPORAL,
        },
        dtype="float32",
        **_qwen_special_ids(tokenizer),
    )
    torch.manual_seed(seed)
    return _save_float32(model_class(config), processor, out_dir)


def build_tiny_colqwen2(out_dir: Path, *, seed: int = 0) -> Path:
    """A ColQwen2 (Qwen2-VL backbone) that `ColQwen2.from_pretrained(out_dir)` loads; 128-dim vectors."""
    from colpali_engine.models import ColQwen2, ColQwen2Processor
    from transformers import Qwen2VLConfig

    vision = {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": QWEN_TEXT_HIDDEN,  # the merger's output width
        "mlp_ratio": 2,
        "num_heads": 2,
    }
    return _build_tiny_qwen(out_dir, seed, ColQwen2, ColQwen2Processor, Qwen2VLConfig, vision)


def build_tiny_colqwen2_5(out_dir: Path, *, seed: int = 0) -> Path:
    """A ColQwen2.5 (Qwen2.5-VL backbone, windowed vision attention) that `ColQwen2_5` loads."""
    from colpali_engine.models import ColQwen2_5, ColQwen2_5_Processor
    from transformers import Qwen2_5_VLConfig

    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": QWEN_TEXT_HIDDEN,
        "window_size": 56,  # 2x2 merged tokens per window
        "fullatt_block_indexes": [1],
    }
    return _build_tiny_qwen(
        out_dir, seed, ColQwen2_5, ColQwen2_5_Processor, Qwen2_5_VLConfig, vision
    )


def build_tiny_colqwen3(out_dir: Path, *, seed: int = 0) -> Path:
    """A ColQwen3 (Qwen3-VL backbone: 16-pixel patches, DeepStack) that `ColQwen3` loads.

    colpali-engine fixes its head at 320 dims (`self.dim = 320`), not 128.
    """
    from colpali_engine.models import ColQwen3, ColQwen3Processor
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLVideoProcessor

    tokenizer = _qwen2_tokenizer()
    # Qwen3-VL's preprocessor_config.json keeps only `size` as pixel bounds (no min/max_pixels).
    common: dict[str, Any] = {
        "size": {"shortest_edge": QWEN3_MIN_PIXELS, "longest_edge": QWEN3_MAX_PIXELS},
        "patch_size": QWEN3_PATCH,
        "temporal_patch_size": QWEN_TEMPORAL,
        "merge_size": QWEN_MERGE,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    processor = ColQwen3Processor(
        image_processor=Qwen2VLImageProcessor(**common),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(**common),
    )
    text_config = {
        **_qwen_text_config(tokenizer),
        "head_dim": 16,
        # Interleaved M-RoPE: each section * 3 must fit in head_dim / 2 = 8 frequencies.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        },
    }
    config = Qwen3VLConfig(
        text_config=text_config,
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": QWEN_TEXT_HIDDEN,
            "num_position_embeddings": 64,  # an 8x8 table, interpolated to each page's grid
            "deepstack_visual_indexes": [0],
            "patch_size": QWEN3_PATCH,
            "spatial_merge_size": QWEN_MERGE,
            "temporal_patch_size": QWEN_TEMPORAL,
        },
        dtype="float32",
        **_qwen_special_ids(tokenizer),
    )
    torch.manual_seed(seed)
    return _save_float32(ColQwen3(config), processor, out_dir)


def _gemma_tokenizer(
    named: dict[str, str] | None = None, extra: list[str] | None = None
) -> GemmaTokenizer:
    """A Gemma-style tokenizer (▁ for spaces, BPE with byte fallback), Gemma's special ids 0-4.

    `named` special tokens become attributes (`tokenizer.boi_token`), as Gemma 3's
    tokenizer_config.json names them; `extra` ones (chat turns) are kept whole too.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    # transformers 5: `GemmaTokenizerFast` is an alias of `GemmaTokenizer` (tokenizers backend).
    from transformers import GemmaTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    # Train pieces that never span punctuation or a newline, as Gemma's SentencePiece pieces.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Split("\n", behavior="isolated"),
        ]
    )
    trainer = trainers.BpeTrainer(vocab_size=500, min_frequency=1, show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    trained, merges = _vocab_and_merges(bpe)

    # Gemma's layout: the specials, then the 256 byte-fallback pieces, then the learned pieces.
    pieces = GEMMA_SPECIALS + [f"<0x{b:02X}>" for b in range(256)]
    pieces += sorted((p for p in trained if p not in pieces), key=trained.__getitem__)
    specials = [*(extra or []), *(named or {}).values()]
    pieces += specials
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=8192,
        padding_side="right",  # as ColPali's published tokenizer_config.json (v1.2 on) says
        **({"extra_special_tokens": named} if named else {}),
    )
    if extra:
        tokenizer.add_tokens(extra, special_tokens=True)
    return tokenizer


def build_tiny_colpali(out_dir: Path, *, seed: int = 0) -> Path:
    """A ColPali (PaliGemma: SigLIP + Gemma) that `ColPali.from_pretrained(out_dir)` loads; 128-dim vectors."""
    from colpali_engine.models import ColPali, ColPaliProcessor
    from transformers import PaliGemmaConfig, SiglipImageProcessor

    tokenizer = _gemma_tokenizer()
    grid = PALI_IMAGE // PALI_PATCH
    image_processor = SiglipImageProcessor(
        size={"height": PALI_IMAGE, "width": PALI_IMAGE},
        resample=3,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        image_seq_length=grid * grid,
    )
    # The processor adds <image> and the 1,152 <locNNNN>/<segNNN> tokens to the tokenizer, as
    # PaliGemma's own tokenizer holds them: size the embeddings after it.
    processor = ColPaliProcessor(image_processor=image_processor, tokenizer=tokenizer)
    tokenizer = processor.tokenizer
    vocab_size = len(tokenizer)
    hidden = 32
    config = PaliGemmaConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": PALI_IMAGE,
            "patch_size": PALI_PATCH,
            "vision_use_head": False,
        },
        text_config={
            "model_type": "gemma",
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 1024,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vocab_size=vocab_size,
        projection_dim=hidden,
        hidden_size=hidden,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    return _save_float32(ColPali(config), processor, out_dir)


# Gemma 3 geometry: a fixed square page, SigLIP's 8x8 patches average-pooled to a 4x4 grid.
GEMMA3_PATCH, GEMMA3_IMAGE, GEMMA3_TOKENS = 14, 112, 16
GEMMA3_NAMED = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}
GEMMA3_TURNS = ["<start_of_turn>", "<end_of_turn>"]
# Gemma 3's chat layout, trimmed to what ColGemmaProcessor3 sends: text and image parts.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def build_tiny_colgemma3(out_dir: Path, *, seed: int = 0) -> Path:
    """A ColGemma3 (Gemma 3: SigLIP, pooled image tokens, Gemma 3 text) that `ColGemma3` loads.

    A page is resized to a fixed square and becomes GEMMA3_TOKENS image tokens in one block
    (`<start_of_image>` + a row-major 4x4 grid + `<end_of_image>`), after the turn's opening.
    """
    from colpali_engine.models import ColGemma3, ColGemmaProcessor3
    from transformers import Gemma3Config, Gemma3ImageProcessor

    tokenizer = _gemma_tokenizer(GEMMA3_NAMED, GEMMA3_TURNS)
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    image_processor = Gemma3ImageProcessor(
        size={"height": GEMMA3_IMAGE, "width": GEMMA3_IMAGE},
        resample=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pan_and_scan=False,
    )
    processor = ColGemmaProcessor3(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=GEMMA3_TOKENS,
    )
    hidden = 32
    config = Gemma3Config(
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": GEMMA3_IMAGE,
            "patch_size": GEMMA3_PATCH,
            "vision_use_head": False,
        },
        text_config={
            "model_type": "gemma3_text",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"],
            "max_position_embeddings": 1024,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        mm_tokens_per_image=GEMMA3_TOKENS,
        boi_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_NAMED["boi_token"]),
        eoi_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_NAMED["eoi_token"]),
        image_token_index=tokenizer.convert_tokens_to_ids(GEMMA3_NAMED["image_token"]),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = ColGemma3(config)
    with torch.no_grad():
        # Gemma 3 zero-initialises the image projection; a trained one is not zero.
        model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.02)
    return _save_float32(model, processor, out_dir)


# Idefics3 geometry (SmolVLM / ColSmol): a page's longest edge is resized to IDEFICS3_LONGEST,
# cut into IDEFICS3_TILE squares (here at most 2x2) plus the whole page as a global tile; each
# tile's 4x4 patches are pixel-shuffled (2x2) into IDEFICS3_TOKENS image tokens.
IDEFICS3_PATCH, IDEFICS3_TILE, IDEFICS3_SCALE, IDEFICS3_LONGEST = 8, 32, 2, 64
IDEFICS3_TOKENS = (IDEFICS3_TILE // IDEFICS3_PATCH) ** 2 // IDEFICS3_SCALE**2
IDEFICS3_SPECIALS: list[str] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<end_of_utterance>",
    # Idefics3Processor looks up a 6x6 grid of tile tags, as SmolVLM's tokenizer holds them.
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
]


def build_tiny_colidefics3(out_dir: Path, *, seed: int = 0) -> Path:
    """A ColIdefics3 (Idefics3: SigLIP-style tiles, pixel shuffle, Llama text) that `ColIdefics3`
    loads; 128-dim vectors.

    A page becomes up to 2x2 tiles plus a global tile, each `<fake_token_around_image>` + a tag
    (`<row_R_col_C>` or `<global-img>`) + IDEFICS3_TOKENS `<image>` tokens: no single grid.
    """
    from colpali_engine.models import ColIdefics3, ColIdefics3Processor
    from transformers import GPT2Tokenizer, Idefics3Config, Idefics3ImageProcessor

    # SmolVLM's tokenizer: byte-level BPE (GPT-2 class), its specials kept whole.
    vocab, merges = _train_byte_level_bpe(vocab_size=600, specials=IDEFICS3_SPECIALS)
    tokenizer = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        extra_special_tokens=IDEFICS3_SPECIALS[3:],
        model_max_length=8192,
        padding_side="left",  # ColIdefics3Processor forces left anyway
    )
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": IDEFICS3_LONGEST},
        max_image_size={"longest_edge": IDEFICS3_TILE},
        resample=1,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_image_splitting=True,
    )
    processor = ColIdefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=IDEFICS3_TOKENS
    )
    tokenizer = processor.tokenizer
    hidden = 32
    config = Idefics3Config(
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IDEFICS3_TILE,
            "patch_size": IDEFICS3_PATCH,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 1024,
            "rms_norm_eps": 1e-5,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        scale_factor=IDEFICS3_SCALE,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = ColIdefics3(config)
    # _save_float32's recipe; colpali-engine names this head `linear`, not `custom_text_proj`.
    with torch.no_grad():
        model.linear.bias.normal_(0.0, 0.02)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.float32).eval()
    model.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    return out_dir
