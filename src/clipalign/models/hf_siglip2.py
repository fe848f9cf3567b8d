"""Adapter for Hugging Face ``Siglip2Model`` checkpoints: NaFlex SigLIP 2 (``google/siglip2-*-naflex``).

NaFlex feeds each image at its own resolution: resized, keeping its aspect ratio, to the largest size whose
sides are multiples of the patch size and whose patch count fits ``max_num_patches``, cut into patches
(a sequence of rows·cols patches, zero-padded to ``max_num_patches``), with the position embeddings
resized to that image's grid. The fixed-resolution SigLIP 2 checkpoints are ``SiglipModel`` and load
with :class:`~clipalign.models.hf_siglip.HFSiglipAdapter`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase, Siglip2ImageProcessorPil, Siglip2Model
from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches

from clipalign.images.geometry import ImageGeometry
from clipalign.models.hf_clip import _at_least_fp32, _fused_block
from clipalign.models.hf_siglip import SiglipTowers, _blocks

GRID_COLUMNS = 2
"""The last columns of NaFlex pixel values: the image's patch grid (rows, cols), in every row."""


class HFSiglip2Adapter(SiglipTowers[Siglip2Model]):
    """Wraps a HF ``Siglip2Model`` (NaFlex SigLIP 2) with its Gemma tokenizer and the PIL image processor.

    * **Text side**: as SigLIP's (:class:`~clipalign.models.hf_siglip.HFSiglipAdapter`): captions padded
      to the full context (64) with the pad token, no attention mask, pooled at the last position, then
      the linear head; the Gemma tokenizer as saved.
    * **Pixel values** are per image, so a batch can mix aspect ratios: (B, max_num_patches,
      C·p·p + 2), each row a patch as ``Siglip2ImageProcessorPil`` cuts it (zero on the padding), its
      last two columns the image's grid (rows, cols). ``image_embeddings`` reads the grid back: the
      position embeddings are resized to it and the padding is masked out of every attention and of the
      attention-pooling head, so an image's embedding does not depend on its batch-mates (tested).
    * **Geometry**: the processor resizes without cropping, keeping the aspect ratio up to rounding to
      whole patches; ``image_geometry`` computes that size with transformers' own function, and
      :meth:`patch_grid_for` the grid of an image of a given size.
    * **Interactions**: a NaFlex grid, and so the all-zero reference image, is per image, so this adapter
      is a :class:`~clipalign.models.base.PerImageGridAdapter`: :meth:`patch_grids` and
      :meth:`reference_pixels` instead of one ``patch_grid``, and ``image_states``/``image_head`` on
      the unpadded patches of images that share one grid (no mask needed in the generic JVPs).
    * **Scores**: the cosine of the two embeddings, as for CLIP and SigLIP (not the sigmoid logit).
    """

    model_class = Siglip2Model
    processor_class = Siglip2ImageProcessorPil
    family = "siglip2"

    def __init__(
        self,
        model: Siglip2Model,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Siglip2ImageProcessorPil,
        name: str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(model, tokenizer, image_processor, name, dtype)
        cfg = model.vision_model.config
        if not cfg.vision_use_head:
            raise ValueError("the vision tower has no attention-pooling head (vision_use_head=False)")
        if not image_processor.do_resize:
            raise ValueError(
                "the image processor must resize (do_resize): NaFlex sizes every image to its grid"
            )
        if image_processor.patch_size != cfg.patch_size:
            raise ValueError(
                f"the image processor cuts {image_processor.patch_size}-pixel patches, the model expects "
                f"{cfg.patch_size}"
            )
        self.patch_size = int(cfg.patch_size)
        self.max_num_patches = int(image_processor.max_num_patches)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, max_num_patches, C·p·p + 2) float32 on the CPU: per image, its patches as the PIL image
        processor cuts them, zero-padded, each row ending in the image's grid (rows, cols). Each image is
        processed on its own, so a batch equals its images processed one by one and stacked."""
        rows = []
        for image in images:
            out = self.image_processor(images=[image], return_tensors="pt")
            patches = out["pixel_values"][0].float()
            grid = out["spatial_shapes"][0].to(patches.dtype).expand(patches.shape[0], GRID_COLUMNS)
            rows.append(torch.cat([patches, grid], dim=-1))
        return torch.stack(rows)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.pixel_values(images)
        return pixels.to(self.device, self.weight_dtype, non_blocking=pixels.is_pinned())

    @staticmethod
    def unpack(pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """NaFlex pixel values → the model's inputs: patches (B, N, C·p·p), ``spatial_shapes`` (B, 2) int64
        and ``pixel_attention_mask`` (B, N) bool (true on each image's rows·cols patches)."""
        patches, grid = pixel_values[..., :-GRID_COLUMNS], pixel_values[:, 0, -GRID_COLUMNS:]
        shapes = grid.round().long()
        positions = torch.arange(patches.shape[1], device=patches.device)
        return patches, shapes, positions[None] < shapes.prod(-1, keepdim=True)

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The attention-pooling head's output over each image's patches, every block on fused attention
        with the padding masked; in half precision under autocast (matmuls in ``dtype``)."""
        vision = self._vision_model
        patches, shapes, mask = self.unpack(pixel_values)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != self.weight_dtype):
            hidden = vision.embeddings(patches, shapes)
            for block in _blocks(vision.encoder):
                hidden = _fused_block(block, hidden, causal=False, keys=mask[:, None, None, :])
            return _at_least_fp32(vision.head(vision.post_layernorm(hidden), mask.long()))

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the processor resizes a ``width``×``height`` image to: transformers' own
        search for the largest patch-multiple size within ``max_num_patches`` at the image's aspect ratio."""
        new_height, new_width = get_image_size_for_max_num_patches(
            height, width, self.patch_size, self.max_num_patches
        )
        return new_width, new_height

    def patch_grid_for(self, width: int, height: int) -> tuple[int, int]:
        """(rows, cols) of patches of a ``width``×``height`` image: ``spatial_shapes`` of its pixel values."""
        new_width, new_height = self.resized_size(width, height)
        return new_height // self.patch_size, new_width // self.patch_size

    def image_geometry(self, width: int, height: int) -> ImageGeometry:
        """The whole image resized to :meth:`resized_size` (no crop), every pixel of it in a patch."""
        resized = self.resized_size(width, height)
        return ImageGeometry((width, height), resized, (0, 0, *resized))

    # --- hidden states at a block and the rest of the network, for interaction attributions ---

    def patch_grids(self, pixel_values: torch.Tensor) -> list[tuple[int, int]]:
        """(rows, cols) of each image of a batch of NaFlex pixel values."""
        _, shapes, _ = self.unpack(pixel_values)
        return [(int(rows), int(cols)) for rows, cols in shapes.tolist()]

    def reference_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The all-zero image at each image's own grid: zero patches, the grid columns kept."""
        reference = torch.zeros_like(pixel_values)
        reference[..., -GRID_COLUMNS:] = pixel_values[..., -GRID_COLUMNS:]
        return reference

    def image_states(self, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states entering vision block ``layer`` (B, rows·cols, d) of images that share one grid:
        their patches only, row-major, without the padding (so no mask is needed from here on)."""
        grids = set(self.patch_grids(pixel_values))
        if len(grids) != 1:
            raise ValueError(f"image_states takes images of one patch grid, got {sorted(grids)}")
        patches, shapes, _ = self.unpack(pixel_values)
        rows, cols = grids.pop()
        vision = self._vision_model
        hidden = vision.embeddings(patches[:, : rows * cols], shapes)
        for block in _blocks(vision.encoder)[:layer]:
            hidden = block(hidden, None)
        return hidden
