"""Labelling assists: a polygon from a few clicks on the current image, without model weights.

`regions` finds objects and parts (GrabCut, flood fill, clipping), `lasso` follows edges between clicks, and
`service` checks the editor's requests and runs them on cached images.
"""

from .lasso import lasso_path
from .regions import clip_to_object, flood_region, grabcut_object, grabcut_part
from .service import AssistError, AssistService

__all__ = [
    "AssistError",
    "AssistService",
    "clip_to_object",
    "flood_region",
    "grabcut_object",
    "grabcut_part",
    "lasso_path",
]
