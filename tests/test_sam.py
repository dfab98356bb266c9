"""Segment-Anything as an assist (app/core/assists/sam.py): only with the package and a checkpoint of the user's.

The package's builders make models with random weights: their masks mean nothing, so these tests check the
plumbing (loading, caching the embedding, prompts, polygons in image pixels), not the masks' quality.
"""

import sys

import cv2
import numpy as np
import pytest
import torch

from app.core.assists import AssistError, AssistService
from app.core.assists.sam import INSTALL_NOTE, SamAssist, SamUnavailable, sam_package
from app.views.label import LabelView
from tests.test_label_view import _png

H, W = 240, 320


def _tiny_sam():
    """A SAM of the package's own architecture, shrunk (one 32-wide encoder block), with random weights."""
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    return _build_sam(encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=1, encoder_global_attn_indexes=[0])


def _image():
    img = np.full((H, W, 3), 90, np.uint8)
    cv2.circle(img, (160, 120), 60, (30, 200, 60), -1)
    return img


def _check_parts(parts):
    assert isinstance(parts, list)
    for p in parts:
        xy = np.asarray(p).reshape(-1, 2)
        assert len(xy) >= 3 and (xy >= 0).all() and (xy[:, 0] <= W).all() and (xy[:, 1] <= H).all()


def test_without_the_package_or_a_model_the_tool_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # as if not installed
    with pytest.raises(SamUnavailable, match=r"pip install segment-anything"):
        sam_package()
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), _image())
    with pytest.raises(AssistError, match="--sam-checkpoint"):
        AssistService().run(path, {"kind": "sam", "foreground": [[10, 10]]})
    assert "model-checkpoints" in INSTALL_NOTE


def test_bad_checkpoints_are_named_and_no_pickled_code_runs(tmp_path):
    with pytest.raises(SamUnavailable, match="no SAM checkpoint at"):
        SamAssist.from_checkpoint(tmp_path / "missing.pth")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(SamUnavailable, match="is not a Segment-Anything checkpoint"):
        SamAssist.from_checkpoint(tmp_path / "other.pth")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Payload()}, tmp_path / "evil.pth", _use_new_zipfile_serialization=True)
    with pytest.raises(SamUnavailable, match="is not a readable weights file"):
        SamAssist.from_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists(), "loading ran the file's pickled code"


def test_prompts_decode_on_one_cached_embedding_per_image(tmp_path):
    sam = SamAssist(_tiny_sam())
    img = _image()
    for prompt in ({"foreground": [(160, 120)]}, {"foreground": [(160, 120)], "background": [(20, 20)]}):
        _check_parts(sam.segment("a", img, **prompt))
    _check_parts(sam.segment("a", img, box=(90, 50, 230, 190)))
    assert sam.embeddings == 1
    sam.segment("b", img[::-1].copy(), foreground=[(10, 10)])
    sam.segment("a", img, foreground=[(10, 10)])
    assert sam.embeddings == 2, "image a's embedding was kept while b was used"
    assert sam.segment("a", img) == [], "no prompt, no mask"
    # Through the service: the image's file is its key, `within` clips to the object.
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), img)
    service = AssistService(sam=sam)
    within = [[0, 0, 100, 0, 100, H, 0, H]]
    reply = service.run(path, {"kind": "sam", "box": [90, 50, 230, 190], "within": within})
    _check_parts(reply["parts"])
    assert all(max(p[0::2]) <= 100 for p in reply["parts"])
    with pytest.raises(AssistError, match="must be a point"):
        service.run(path, {"kind": "sam", "foreground": [["x", 1]]})


@pytest.mark.slow
def test_a_vit_b_checkpoint_loads_by_its_size_from_the_label_view(tmp_path):
    """The real builder's vit_b with random weights, saved as a checkpoint (375 MB): the Label view loads it
    from a folder it may read and the editor's requests go through it."""
    from segment_anything import sam_model_registry

    view = LabelView(tmp_path / "data", tmp_path / "runs")
    assert view.sam_status().startswith("SAM is off. Segment-Anything needs the segment-anything package")
    torch.manual_seed(0)
    checkpoint = tmp_path / "data" / "sam_random_b.pth"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), checkpoint)
    assert "outside the folders this app may read" in view.load_sam(str(tmp_path / "elsewhere.pth"))
    assert view.load_sam(str(checkpoint)) == "The **SAM** tool (S) uses SAM vit_b (sam_random_b.pth)."
    view.create_dataset("leaves", "leaf", "primary, secondary")
    view.upload("leaves", [_png(tmp_path, h=H, w=W)])
    image_id = view.store.open("leaves").images()[0]["id"]
    reply = view.assist("leaves", image_id, {"kind": "sam", "foreground": [[160, 120]]})
    assert reply["ok"], reply
    _check_parts(reply["parts"])
    assert view.assists.sam.embeddings == 1
