"""The web demo (``clipalign demo``): pick or upload an image, type a caption, see words and heatmaps.

Needs the ``demo`` extra (Starlette and uvicorn).
"""

from clipalign.demo.app import create_app, listen, serve
from clipalign.demo.engine import DemoEngine, DemoInputError

__all__ = ["DemoEngine", "DemoInputError", "create_app", "listen", "serve"]
