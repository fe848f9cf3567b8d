"""Image inputs: load paths, PIL images, arrays and tensors as fully decoded RGB images."""

from clipalign.images.loading import MAX_ASPECT_RATIO, ImageInput, ImageLoadError, describe_source, load_image

__all__ = ["MAX_ASPECT_RATIO", "ImageInput", "ImageLoadError", "describe_source", "load_image"]
