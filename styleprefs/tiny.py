"""Tiny SD1.5-, SDXL-, InstructPix2Pix-, Prompt-Diffusion- and CLIP-shaped models with random weights.

Each builder writes the same on-disk layout as the real Hub repository (diffusers pipeline folders,
transformers model folders, safetensors weights), so code that loads `--model ID_OR_PATH` runs
offline on CPU. Images are 64x64 (UNet sample size 8, VAE scale factor 8).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import string
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from styleprefs.io import honour_umask

Module = TypeVar("Module", bound=torch.nn.Module)

VERSION = "v1"
MAX_LENGTH = 77
VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
IMAGE_SIZE = 64
CROSS_ATTENTION_DIM = 32
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1}


@lru_cache(maxsize=1)
def _bpe() -> tuple[dict[str, int], tuple[str, ...]]:
    """The OpenAI CLIP vocabulary and merges, as in open_clip's SimpleTokenizer."""
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    n_merges = VOCAB_SIZE - 2 * 256 - 2  # 256 bytes, 256 bytes + </w>, 2 special tokens
    merges = tuple(lines[1 : 1 + n_merges])
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def bpe_tokenizer(pad_token: str = EOS) -> CLIPTokenizer:
    """The OpenAI CLIP tokenizer (77 tokens), built offline from open_clip's BPE merges."""
    vocab, merges = _bpe()
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges],
                         pad_token=pad_token, model_max_length=MAX_LENGTH)


def _ship_bpe_files(folder: Path) -> None:
    """Like the real SD repositories, ship vocab.json + merges.txt instead of the 3.7 MB tokenizer.json."""
    vocab, merges = _bpe()
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def clip_tokenizer(path: Path, *, pad_token: str = EOS) -> CLIPTokenizer:
    """Write the real CLIP tokenizer (vocab.json, merges.txt, tokenizer_config.json) to `path`.

    SD1.5 and SDXL's first tokenizer pad with <|endoftext|>; SDXL's tokenizer_2 pads with "!".
    """
    tokenizer = bpe_tokenizer(pad_token)
    tokenizer.save_pretrained(path)
    _ship_bpe_files(Path(path))
    return tokenizer


def _text_config(hidden: int, projection_dim: int = 16) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
                          projection_dim=projection_dim, hidden_act="quick_gelu",
                          bos_token_id=VOCAB_SIZE - 2, eos_token_id=VOCAB_SIZE - 1, pad_token_id=VOCAB_SIZE - 1)


def _seeded(seed: int, build: Callable[[], Module]) -> Module:
    torch.manual_seed(seed)
    return build()


def _vae(seed: int, scaling_factor: float = 0.18215, force_upcast: bool = False) -> AutoencoderKL:
    return _seeded(seed, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32), norm_num_groups=8, sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor, force_upcast=force_upcast))


def _unet(seed: int, in_channels: int = 4) -> UNet2DConditionModel:
    """SD1.5-shaped: cross-attention in the high-resolution block, 8 heads."""
    return _seeded(seed, lambda: UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8))


def _sdxl_unet(seed: int, cross_attention_dim: int, pooled_dim: int) -> UNet2DConditionModel:
    """SDXL-shaped: linear projections, text_time added embedding (6 time ids + pooled text)."""
    time_dim = 8
    return _seeded(seed, lambda: UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + pooled_dim))


def _save(pipe: DiffusionPipeline, path: Path) -> Path:
    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        config = path / name / "tokenizer_config.json"
        if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class", "").startswith("CLIP"):
            _ship_bpe_files(path / name)
    return path


def _sd_components(seed: int, in_channels: int = 4) -> dict[str, Any]:
    return {"vae": _vae(seed), "unet": _unet(seed, in_channels),
            "text_encoder": _seeded(seed, lambda: CLIPTextModel(_text_config(CROSS_ATTENTION_DIM))),
            "tokenizer": bpe_tokenizer(),
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def build_tiny_sd(path: Path, *, sdxl: bool = False, seed: int = 0) -> Path:
    """Tiny SD1.5 (PNDM, like the real repo) or, with `sdxl`, tiny SDXL (Euler, two text encoders)."""
    if sdxl:
        return _build_tiny_sdxl(path, seed)
    scheduler = PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False)
    return _save(StableDiffusionPipeline(**_sd_components(seed), scheduler=scheduler), path)


def _build_tiny_sdxl(path: Path, seed: int) -> Path:
    # Encoders of different widths (like SDXL's 768 + 1280) so code that mixes them up fails.
    hidden_1, hidden_2, pooled_dim = 16, 32, 32
    text_encoder_2 = _seeded(seed, lambda: CLIPTextModelWithProjection(_text_config(hidden_2, pooled_dim)))
    pipe = StableDiffusionXLPipeline(
        vae=_vae(seed, scaling_factor=0.13025, force_upcast=True),
        text_encoder=_seeded(seed, lambda: CLIPTextModel(_text_config(hidden_1))),
        text_encoder_2=text_encoder_2,
        tokenizer=bpe_tokenizer(),
        tokenizer_2=bpe_tokenizer(pad_token="!"),
        unet=_sdxl_unet(seed, hidden_1 + hidden_2, pooled_dim),
        scheduler=EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    return _save(pipe, path)


def build_tiny_instruct_pix2pix(path: Path, seed: int = 0) -> Path:
    """Tiny InstructPix2Pix: UNet with 8 input channels (noise + image latent), Euler ancestral."""
    pipe = StableDiffusionInstructPix2PixPipeline(
        **_sd_components(seed, in_channels=8), scheduler=EulerAncestralDiscreteScheduler(**SD_BETAS))
    return _save(pipe, path)


def build_tiny_prompt_diffusion(path: Path, seed: int = 0) -> Path:
    """Tiny SD1.5 plus a Prompt Diffusion ControlNet in `controlnet/`.

    The ControlNet config is a plain ControlNetModel's with conditioning_channels=6 (the example
    pair); its weights also hold the query-image embedding `controlnet_query_cond_embedding.*`,
    as the real checkpoint does, for styleprefs' Prompt Diffusion model class to load.
    """
    components = _sd_components(seed)
    torch.manual_seed(seed)
    # Four channel stages = three stride-2 convs, taking the 64 px condition to the 8x8 latent grid.
    embedding_channels = (8, 16, 16, 32)
    controlnet = ControlNetModel.from_unet(components["unet"], conditioning_channels=6,
                                           conditioning_embedding_out_channels=embedding_channels)
    controlnet.controlnet_query_cond_embedding = ControlNetConditioningEmbedding(
        conditioning_embedding_channels=controlnet.config.block_out_channels[0],
        block_out_channels=embedding_channels, conditioning_channels=3)
    # Real ControlNets start with zero convs; random ones let tests see the conditions change the output.
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                 controlnet.controlnet_cond_embedding.conv_out, controlnet.controlnet_query_cond_embedding.conv_out]:
        torch.nn.init.normal_(conv.weight, std=0.02)
    scheduler = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False)
    return _save(StableDiffusionControlNetPipeline(**components, controlnet=controlnet, scheduler=scheduler), path)


# A few words as whole pieces, then single characters: any caption tokenizes, the common words in one piece each.
_T5_WORDS = ("a", "an", "the", "of", "in", "on", "and", "with", "photo", "painting", "house", "houses", "snow",
             "winter", "summer", "night", "day", "red", "blue", "green", "yellow", "white", "cat", "dog", "tree")
_T5_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
T5_MAX_LENGTH = 512


def t5_tokenizer() -> T5TokenizerFast:
    """A small T5-style (sentencepiece unigram) tokenizer built offline: <pad> 0, </s> 1, <unk> 2, appends </s>."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + word, -2.0) for word in _T5_WORDS] + [(c, -5.0) for c in _T5_CHARS + "\u2581"]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _t5_encoder(seed: int, d_model: int) -> T5EncoderModel:
    config = T5Config(vocab_size=len(t5_tokenizer()), d_model=d_model, d_ff=2 * d_model, d_kv=8, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0)
    return _seeded(seed, lambda: T5EncoderModel(config))


def _flow_vae(seed: int, scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    """16 latent channels with a shift factor, like SD3's and FLUX.1's VAEs (x -> (x - shift) * scale)."""
    return _seeded(seed, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32), norm_num_groups=8, sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False,
        force_upcast=False))


def build_tiny_sd3(path: Path, seed: int = 0, *, t5: bool = True) -> Path:
    """Tiny Stable Diffusion 3 (MMDiT, patch 2): two CLIP encoders with projection of different widths, an
    optional T5, a 16-channel VAE with SD3's scaling and shift, the flow-matching Euler scheduler (shift 3)."""
    hidden_1, hidden_2, t5_dim = 16, 24, 48  # widths differ, so code that mixes the encoders up fails
    encoder_1 = _seeded(seed, lambda: CLIPTextModelWithProjection(_text_config(hidden_1, hidden_1)))
    encoder_2 = _seeded(seed + 1, lambda: CLIPTextModelWithProjection(_text_config(hidden_2, hidden_2)))
    transformer = _seeded(seed, lambda: SD3Transformer2DModel(
        sample_size=IMAGE_SIZE // 8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=t5_dim,
        pooled_projection_dim=hidden_1 + hidden_2, pos_embed_max_size=16))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_flow_vae(seed, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=encoder_1, tokenizer=bpe_tokenizer(), text_encoder_2=encoder_2, tokenizer_2=bpe_tokenizer(),
        text_encoder_3=_t5_encoder(seed, t5_dim) if t5 else None, tokenizer_3=t5_tokenizer() if t5 else None)
    return _save(pipe, path)


def build_tiny_flux(path: Path, seed: int = 0) -> Path:
    """Tiny FLUX.1-dev: CLIP (pooled) + T5, a transformer with double and single blocks and a guidance embedding
    over 2x2-packed 16-channel latents, FLUX.1's VAE factors and its dynamically shifted flow scheduler."""
    return _save(FluxPipeline(**_flux_components(seed)), path)


def _flux_components(seed: int) -> dict[str, Any]:
    """The components of tiny FLUX.1-dev (``build_tiny_flux``), shared by tiny FLUX.1 Kontext."""
    clip_hidden, t5_dim = 32, 48
    transformer = _seeded(seed, lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=64, out_channels=None, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=t5_dim, pooled_projection_dim=clip_hidden, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8)))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return {"transformer": transformer, "scheduler": scheduler,
            "vae": _flow_vae(seed, scaling_factor=0.3611, shift_factor=0.1159),
            "text_encoder": _seeded(seed, lambda: CLIPTextModel(_text_config(clip_hidden))),
            "tokenizer": bpe_tokenizer(), "text_encoder_2": _t5_encoder(seed, t5_dim), "tokenizer_2": t5_tokenizer()}


def build_tiny_clip(path: Path, seed: int = 0) -> Path:
    """Tiny CLIPModel (32 px images, patch 8, projection 16) and its CLIPProcessor."""
    path = Path(path)
    vision = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_act": "quick_gelu"}
    config = CLIPConfig(text_config=_text_config(32).to_dict(), vision_config=vision, projection_dim=16)
    model = _seeded(seed, lambda: CLIPModel(config))
    model.save_pretrained(path, safe_serialization=True)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=bpe_tokenizer()).save_pretrained(path)
    _ship_bpe_files(path)
    return path


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "tiny": build_tiny_sd,
    "tiny-sdxl": lambda path: build_tiny_sd(path, sdxl=True),
    "tiny-ip2p": build_tiny_instruct_pix2pix,
    "tiny-clip": build_tiny_clip,
    "tiny-prompt-diffusion": build_tiny_prompt_diffusion,
    "tiny-sd3": build_tiny_sd3,
    "tiny-flux": build_tiny_flux,
}


def default_cache_dir() -> Path:
    """$STYLEPREFS_CACHE/tiny, else ~/.cache/styleprefs/tiny."""
    return Path(os.environ.get("STYLEPREFS_CACHE", "~/.cache/styleprefs")).expanduser() / "tiny"


def ensure_tiny(name: str, cache_dir: Path | None = None) -> Path:
    """Path of the tiny model `name` (see BUILDERS) in `cache_dir`, building it on first use."""
    if name not in BUILDERS:
        raise ValueError(f"unknown tiny model {name!r}; choose from {', '.join(BUILDERS)}")
    return ensure_built(name, BUILDERS[name], VERSION, cache_dir)


def ensure_built(name: str, build: Callable[[Path], Path], version: str, cache_dir: Path | None = None) -> Path:
    """``cache_dir/name-version``, written by ``build(folder)`` on first use.

    The model is built in a temporary folder beside the target and renamed into place, so a
    reader never sees a partial model and concurrent builders leave one complete copy.
    """
    target = Path(cache_dir or default_cache_dir()) / f"{name}-{version}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with _no_saving_bars():
            build(tmp)
        honour_umask(tmp)  # safetensors writes 0600 and mkdtemp makes 0700: readable as open() would make it
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextmanager
def _no_saving_bars() -> Iterator[None]:
    """transformers' "Writing model shards" bars off: a first use that builds a model prints nothing of its own."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename atomically; if another process got there first, keep its copy."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.exists():
            raise


# The tiny CLIP's vision tower (see build_tiny_clip).
_TINY_VISION = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_act": "quick_gelu"}
_SAFE_WORDS = ("an", "the", "of", "in", "on", "and", "with", "photo", "portrait", "painting", "cat", "dog",
               "woman", "man", "city", "forest")
TINY_UNSAFE_WORDS = ("nude", "nsfw", "sexy", "blood", "gore")


def build_tiny_safety_checker(path: Path, seed: int = 0) -> Path:
    """Tiny StableDiffusionSafetyChecker in the CompVis repository's layout (config.json, model.safetensors,
    preprocessor_config.json for 32 px images).

    Concept 0 points from a black image's embedding to a white image's, and its threshold is the cosine of
    their midpoint: bright images tend to be flagged and dark ones to pass; a solid white image is flagged and
    a solid black one is not. The other 16 concepts and the 3 special-care concepts are random and never fire
    (threshold 1)."""
    path = Path(path)
    config = CLIPConfig(text_config=_text_config(32).to_dict(), vision_config=_TINY_VISION, projection_dim=16)
    checker = _seeded(seed, lambda: StableDiffusionSafetyChecker(config))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with torch.no_grad():
        for embeds, thresholds in ((checker.concept_embeds, checker.concept_embeds_weights),
                                   (checker.special_care_embeds, checker.special_care_embeds_weights)):
            embeds.normal_()
            thresholds.fill_(1.0)
        solids = [Image.new("RGB", (32, 32), (value,) * 3) for value in (255, 0)]
        pixels = processor(images=solids, return_tensors="pt").pixel_values
        white, black = checker.visual_projection(checker.vision_model(pixels).pooler_output)
        checker.concept_embeds[0] = white - black
        checker.concept_embeds_weights[0] = torch.cosine_similarity(white + black, white - black, dim=0)
    checker.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


def build_tiny_text_classifier(path: Path, seed: int = 0) -> Path:
    """Tiny BertForSequenceClassification with labels {0: "safe", 1: "nsfw"}, like
    eliasalbouzidi/distilbert-nsfw-text-classifier, and a lowercasing WordPiece tokenizer whose vocabulary is
    letters, digits, punctuation and a few words (at most 64 tokens).

    It is fitted in a few seconds on made-up captions, so a text containing one of TINY_UNSAFE_WORDS as a word
    scores near 1 and other texts near 0.
    """
    path = Path(path)
    chars = string.ascii_lowercase + string.digits
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), *".,!?'-()",
              *_SAFE_WORDS, *TINY_UNSAFE_WORDS]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, model_max_length=64)
    config = BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        id2label={0: "safe", 1: "nsfw"}, label2id={"safe": 0, "nsfw": 1})
    model = _seeded(seed, lambda: BertForSequenceClassification(config))
    _fit_text_classifier(model, tokenizer, random.Random(seed))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _fit_text_classifier(model: BertForSequenceClassification, tokenizer: BertTokenizer, rng: random.Random,
                         steps: int = 60, batch_size: int = 16) -> None:
    """Fine-tune on balanced batches of made-up safe and unsafe captions (no dropout, so deterministic)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        labels = [(step + i) % 2 for i in range(batch_size)]
        captions = [_made_up_caption(rng, unsafe=bool(label)) for label in labels]
        batch = tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor(labels)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _made_up_caption(rng: random.Random, unsafe: bool) -> str:
    """Known words, random letter strings and punctuation; with ``unsafe``, one of TINY_UNSAFE_WORDS among the
    first words (long captions are cut at 64 tokens)."""
    words = [rng.choice(_SAFE_WORDS) if rng.random() < 0.5 else
             "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 6))) + rng.choice(("", "", ",", "!", "."))
             for _ in range(rng.randint(1, 30))]
    if unsafe:
        words.insert(rng.randint(0, min(len(words), 8)), rng.choice(TINY_UNSAFE_WORDS))
    return " ".join(words)


BUILDERS.update({
    "tiny-safety-checker": build_tiny_safety_checker,
    "tiny-text-classifier": build_tiny_text_classifier,
})


# Evaluation scorers (styleprefs.eval.rewards). The PickScore and CLIP-score stand-in is "tiny-clip" itself
# (a transformers CLIPModel folder with its CLIPProcessor, like yuvalkirstain/PickScore_v1 + its processor).
AESTHETIC_MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HPSV2_FILE = "HPS_v2_compressed.pt"


def build_tiny_aesthetic(path: Path, seed: int = 0) -> Path:
    """A LAION improved-aesthetic-predictor MLP over the tiny CLIP's 16-d image embedding, saved like the real
    ``sac+logos+ava1-l14-linearMSE.pth``: a state dict of ``layers.{0,2,4,6,7}.{weight,bias}`` (Linear layers,
    dropout between the first ones, no activations; the real one is 768-1024-128-64-16-1). The last bias is 5.0 so
    scores sit near the real predictor's range."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sizes = (16, 32, 16, 8, 4, 1)
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < 3:
            layers.append(torch.nn.Dropout(0.1))
    mlp = torch.nn.Sequential(*layers)
    with torch.no_grad():
        mlp[-1].bias.fill_(5.0)
    torch.save({f"layers.{k}": v for k, v in mlp.state_dict().items()}, path / AESTHETIC_MLP_FILE)
    return path


def build_tiny_hpsv2(path: Path, seed: int = 0) -> Path:
    """A tiny open_clip CLIP saved like an HPSv2 checkpoint: ``HPS_v2_compressed.pt`` = ``{"state_dict": ...}``,
    plus ``open_clip_config.json`` (``model_cfg``/``preprocess_cfg``, as open_clip Hub repos ship) naming the
    architecture, since the real checkpoint is read onto open_clip's registered ViT-H-14 instead."""
    from open_clip.model import CLIP

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model_cfg = {"embed_dim": 16,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
                 "text_cfg": {"context_length": MAX_LENGTH, "vocab_size": VOCAB_SIZE, "width": 32, "heads": 4,
                              "layers": 2}}
    model = _seeded(seed, lambda: CLIP(**model_cfg))
    preprocess = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                  "resize_mode": "longest", "interpolation": "bicubic", "fill_color": 0}
    (path / "open_clip_config.json").write_text(json.dumps(
        {"name": "tiny-hpsv2", "model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2), encoding="utf-8")
    torch.save({"state_dict": model.state_dict()}, path / HPSV2_FILE)
    return path


BUILDERS.update({
    "tiny-aesthetic": build_tiny_aesthetic,
    "tiny-hpsv2": build_tiny_hpsv2,
})


# Instruction editors (styleprefs.editors.instruction): FLUX.1 Kontext [dev] and Qwen-Image-Edit(-2509), in the
# layouts of black-forest-labs/FLUX.1-Kontext-dev and Qwen/Qwen-Image-Edit-2509.
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
_QWEN_HIDDEN = 16


def build_tiny_kontext(path: Path, seed: int = 0) -> Path:
    """Tiny FLUX.1 Kontext [dev]: tiny FLUX.1-dev's components (``build_tiny_flux``) as a ``FluxKontextPipeline``,
    as the real Kontext repository ships FLUX.1-dev-shaped components under that class."""
    from diffusers import FluxKontextPipeline

    return _save(FluxKontextPipeline(**_flux_components(seed)), path)


def qwen_tokenizer():
    """A small byte-level BPE Qwen2Tokenizer built offline: the 256 byte symbols, merges that make a few words
    whole tokens, then Qwen2.5-VL's special tokens (chat turns, vision start/end, image and video pads)."""
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    merges: list[tuple[str, str]] = []
    for word in _T5_WORDS:
        piece = "\u0120"  # a space before the word, in the byte-to-unicode map
        for char in word:
            if piece + char not in vocab:
                merges.append((piece, char))
                vocab[piece + char] = len(vocab)
            piece += char
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    return tokenizer


def _qwen_processor(tokenizer):
    """Qwen2VLProcessor (image processor, tokenizer, video processor); images of at most 112 x 112 px reach the
    tiny vision tower (the real one takes up to 12.8 MP)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    pixels = {"min_pixels": 28 * 28, "max_pixels": 112 * 112}
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                            video_processor=Qwen2VLVideoProcessor(**pixels))


def _qwen_vl(seed: int, tokenizer):
    """Tiny Qwen2.5-VL whose image/video/vision token ids are the tokenizer's."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": _QWEN_HIDDEN, "intermediate_size": 32,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                     "rope_theta": 1000000.0, "bos_token_id": tokenizer.eos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": _QWEN_HIDDEN, "fullatt_block_indexes": [1]},
        **ids)
    return _seeded(seed, lambda: Qwen2_5_VLForConditionalGeneration(config))


def build_tiny_qwen_image_edit(path: Path, seed: int = 0) -> Path:
    """Tiny Qwen-Image-Edit-2509 (``QwenImageEditPlusPipeline``): a tiny Qwen2.5-VL text encoder with its processor,
    a 16-channel ``AutoencoderKLQwenImage`` (8x, Qwen-Image's latent mean and std), an MMDiT over 2x2 patches and
    Qwen-Image's dynamically shifted flow scheduler."""
    from diffusers import AutoencoderKLQwenImage, QwenImageEditPlusPipeline, QwenImageTransformer2DModel

    tokenizer = qwen_tokenizer()
    transformer = _seeded(seed, lambda: QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=_QWEN_HIDDEN, guidance_embeds=False, axes_dims_rope=(8, 4, 4)))
    vae = _seeded(seed, lambda: AutoencoderKLQwenImage(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True]))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential")
    pipe = QwenImageEditPlusPipeline(transformer=transformer, vae=vae, scheduler=scheduler,
                                     text_encoder=_qwen_vl(seed, tokenizer), tokenizer=tokenizer,
                                     processor=_qwen_processor(tokenizer))
    return _save(pipe, path)


BUILDERS.update({
    "tiny-kontext": build_tiny_kontext,
    "tiny-qwen-image-edit": build_tiny_qwen_image_edit,
})
