"""Convert a LongCLIP release (``longclip-B.pt``, ``longclip-L.pt``) to a Hugging Face ``CLIPModel`` folder.

    python tools/convert_longclip.py longclip-L.pt --tokenizer CLIP_TOKENIZER_DIR --out longclip-L-hf
    clipalign words photo.jpg "<a long caption>" --model longclip-L-hf

A LongCLIP release is a ``state_dict`` in OpenAI CLIP's layout (``transformer.resblocks.N.attn.*``,
``visual.*``, ``text_projection``, ``logit_scale``...) whose text positions are 248 rows kept in two
tables: ``positional_embedding`` for the first 20 positions (OpenAI CLIP's, kept as trained) and
``positional_embedding_res`` for the rest (LongCLIP adds the two under masks). The HF model has one table,
so row i is taken from the first table below 20 and from the second from 20 on. A plain OpenAI CLIP ViT
state dict (77 positions, one table) converts too.

The output holds ``config.json`` (``max_position_embeddings`` = the release's positions, quick-GELU, heads
= width / 64 unless given), ``model.safetensors`` (fp32), the CLIP tokenizer files from ``--tokenizer``
(with ``model_max_length`` set to the model's context) and a ``preprocessor_config.json`` for the
release's image size (OpenAI CLIP's resize, centre crop and normalisation, as LongCLIP uses).

The release is read with ``torch.load(..., weights_only=True)``: tensors only, no code runs.
``--allow-unsafe-pickle`` reads it as a full pickle, which runs whatever code the file holds: only for a
file from a source you trust that weights-only loading refuses.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessorPil, CLIPModel

LONGCLIP_KEPT_POSITIONS = 20
"""LongCLIP keeps the first 20 positions of ``positional_embedding``; the rest come from ``..._res``."""
IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size")
"""Scalars some OpenAI CLIP releases carry beside the weights."""
HEAD_WIDTH = 64
"""OpenAI CLIP's attention heads are 64 wide: heads = width / 64."""
BLOCK_KEYS = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
"""A residual block's OpenAI names → HF ``CLIPEncoderLayer`` names (both with ``.weight``/``.bias``)."""


class ConversionError(ValueError):
    """The file is not an OpenAI-layout CLIP ViT state dict this tool can convert."""


def read_release(path: Path, *, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The release's tensors by name: weights-only unless ``allow_unsafe_pickle`` (then with a warning)."""
    if allow_unsafe_pickle:
        warnings.warn(
            f"reading {path} as a full pickle (--allow-unsafe-pickle): any code it holds runs now",
            stacklevel=2,
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or OSError depending on the file
        hint = (
            ""
            if allow_unsafe_pickle
            else (
                " — weights-only loading refuses anything but tensors; if you trust the file's source, "
                "retry with --allow-unsafe-pickle"
            )
        )
        raise ConversionError(f"cannot read {path}: {str(exc).strip().splitlines()[0]}{hint}") from exc
    if isinstance(loaded, torch.nn.Module):
        loaded = loaded.state_dict()
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise ConversionError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return {str(k): v for k, v in loaded.items() if str(k) not in IGNORED_KEYS}


def _blocks(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many residual blocks ``prefix.resblocks.N`` the state dict holds."""
    return len({k[len(prefix) :].split(".")[1] for k in state if k.startswith(prefix + "resblocks.")})


def _heads(width: int, heads: int | None, tower: str) -> int:
    heads = heads if heads is not None else width // HEAD_WIDTH
    if heads < 1 or width % heads:
        raise ConversionError(f"the {tower} width {width} does not split into {heads} heads: pass the heads")
    return heads


def clip_config(
    state: Mapping[str, torch.Tensor],
    *,
    bos: int,
    eos: int,
    pad: int,
    text_heads: int | None = None,
    vision_heads: int | None = None,
) -> CLIPConfig:
    """The HF ``CLIPConfig`` of an OpenAI-layout ViT state dict, read from its tensor shapes."""
    if "visual.proj" not in state:
        raise ConversionError("not a ViT CLIP (no visual.proj): ResNet CLIPs have no HF CLIPModel form")
    text_width = state["ln_final.weight"].shape[0]
    vision_width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text = {
        "vocab_size": state["token_embedding.weight"].shape[0],
        "hidden_size": text_width,
        "intermediate_size": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": _blocks(state, "transformer."),
        "num_attention_heads": _heads(text_width, text_heads, "text"),
        "max_position_embeddings": state["positional_embedding"].shape[0],
        "hidden_act": "quick_gelu",
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }
    vision = {
        "hidden_size": vision_width,
        "intermediate_size": state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        "num_hidden_layers": _blocks(state, "visual.transformer."),
        "num_attention_heads": _heads(vision_width, vision_heads, "vision"),
        "image_size": grid * patch,
        "patch_size": patch,
        "hidden_act": "quick_gelu",
    }
    return CLIPConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=state["text_projection"].shape[1],
        logit_scale_init_value=float(state["logit_scale"]),
    )


def text_positions(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The one position table HF uses: LongCLIP's two tables merged (rows < 20 from the first), else the
    only table."""
    table = state["positional_embedding"]
    if "positional_embedding_res" not in state:
        return table
    extra = state["positional_embedding_res"]
    if extra.shape != table.shape:
        raise ConversionError(f"positional_embedding_res is {tuple(extra.shape)}, not {tuple(table.shape)}")
    return torch.cat([table[:LONGCLIP_KEPT_POSITIONS], extra[LONGCLIP_KEPT_POSITIONS:]])


def _block_weights(
    state: Mapping[str, torch.Tensor], src: str, dst: str, blocks: int
) -> dict[str, torch.Tensor]:
    """One tower's residual blocks in HF names: the fused attention input projection split into q, k, v."""
    out = {}
    for i in range(blocks):
        a, b = f"{src}resblocks.{i}.", f"{dst}encoder.layers.{i}."
        for name, param in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
            q, k, v = state[a + f"attn.{param}"].chunk(3)
            out |= {b + f"self_attn.q_proj.{name}": q, b + f"self_attn.k_proj.{name}": k}
            out[b + f"self_attn.v_proj.{name}"] = v
        for old, new in BLOCK_KEYS.items():
            for name in ("weight", "bias"):
                out[b + f"{new}.{name}"] = state[a + f"{old}.{name}"]
    return out


class _Tracked(dict[str, torch.Tensor]):
    """A state dict that remembers which tensors were read, so none is silently dropped."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        super().__init__(state)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        return super().__getitem__(key)


def hf_weights(release: Mapping[str, torch.Tensor], config: CLIPConfig) -> dict[str, torch.Tensor]:
    """The state dict in ``CLIPModel``'s names; every tensor of the release is used (else an error)."""
    state = _Tracked(release)
    out = {
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": text_positions(state),
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].t(),
        "logit_scale": state["logit_scale"].reshape(()),
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t(),
    }
    out |= _block_weights(state, "transformer.", "text_model.", config.text_config.num_hidden_layers)
    out |= _block_weights(
        state, "visual.transformer.", "vision_model.", config.vision_config.num_hidden_layers
    )
    if unused := sorted(set(state) - state.read):
        raise ConversionError(
            f"{len(unused)} tensors of the release map to nothing in CLIPModel: {unused[:3]}"
        )
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def convert(
    release: Path,
    tokenizer_dir: Path,
    out: Path,
    *,
    allow_unsafe_pickle: bool = False,
    text_heads: int | None = None,
    vision_heads: int | None = None,
) -> Path:
    """Write the HF folder for ``release`` to ``out``; the weights are checked to load into ``CLIPModel``
    with no tensor missing, left over or of the wrong shape before anything is written."""
    state = read_release(release, allow_unsafe_pickle=allow_unsafe_pickle)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    if None in ids:
        raise ConversionError(f"the tokenizer in {tokenizer_dir} lacks a start, end or pad token")
    bos, eos, pad = (int(i) for i in ids)
    try:
        config = clip_config(
            state, bos=bos, eos=eos, pad=pad, text_heads=text_heads, vision_heads=vision_heads
        )
        weights = hf_weights(state, config)
    except KeyError as exc:
        raise ConversionError(f"{release} lacks the tensor {exc.args[0]!r} of an OpenAI-layout CLIP") from exc
    model = CLIPModel(config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ConversionError(f"the converted weights do not fit CLIPModel: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.model_max_length = config.text_config.max_position_embeddings
    tokenizer.save_pretrained(out)
    size = config.vision_config.image_size
    CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("release", type=Path, help="the LongCLIP .pt file (OpenAI CLIP state-dict layout)")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        required=True,
        help="a folder with the CLIP tokenizer files (vocab.json, merges.txt...), e.g. a download of "
        "openai/clip-vit-base-patch16",
    )
    parser.add_argument("--out", type=Path, required=True, help="the HF checkpoint folder to write")
    parser.add_argument("--text-heads", type=int, help="text attention heads (default: width / 64)")
    parser.add_argument("--vision-heads", type=int, help="vision attention heads (default: width / 64)")
    parser.add_argument(
        "--allow-unsafe-pickle",
        action="store_true",
        help="read the release as a full pickle, which runs any code it holds (default: weights only)",
    )
    args = parser.parse_args(argv)
    try:
        out = convert(
            args.release,
            args.tokenizer,
            args.out,
            allow_unsafe_pickle=args.allow_unsafe_pickle,
            text_heads=args.text_heads,
            vision_heads=args.vision_heads,
        )
    except (ConversionError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}: load it with --model {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
