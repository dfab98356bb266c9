"""Model-assisted labelling's pure parts: class mapping, leaving out known objects, the notes."""

from types import SimpleNamespace

import numpy as np
import torch
from detectron2.structures import Instances

from app.core.datasets.propose import class_mapping, new_objects, propose

SQUARE = [10.0, 10.0, 40.0, 10.0, 40.0, 40.0, 10.0, 40.0]


class _Fake:
    """A stand-in for MultiMaskPredictor: fixed detections (scores, (N, 2, H, W) masks), all of class "cell"."""

    def __init__(self, scores, masks):
        self.inst = Instances(
            (64, 64),
            scores=torch.tensor(scores),
            pred_classes=torch.zeros(len(scores), dtype=torch.long),
            pred_multimask=torch.as_tensor(np.asarray(masks, bool)),
        )
        self.metadata = SimpleNamespace(thing_classes=["cell", "Nucleus", "dust"])
        self.mask_names = ["primary", "secondary"]

    def __call__(self, bgr):
        return {"instances": self.inst}


def _mask(x0, y0, x1, y1):
    m = np.zeros((64, 64), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_classes_map_by_name_ignoring_case():
    assert class_mapping(["cell", "Nucleus", "dust"], ["Cell", "nucleus"]) == {"cell": "Cell", "Nucleus": "nucleus"}
    assert class_mapping(["a"], ["a", "A"]) == {"a": "a"}, "an exact name wins"


def test_known_objects_are_left_out():
    prop = {"masks": {"primary": [SQUARE], "secondary": []}}
    moved = {"masks": {"primary": [[v + 25 for v in SQUARE]], "secondary": []}}
    existing = [{"masks": {"primary": [[v + 1 for v in SQUARE]], "secondary": []}}]
    assert new_objects([prop, moved], existing, "primary") == [moved]


def test_the_notes_say_what_was_left_out_and_why():
    empty = np.zeros((64, 64), bool)
    fake = _Fake([0.9, 0.8, 0.2], [[_mask(5, 5, 30, 30), empty], [empty, empty], [_mask(40, 40, 60, 60), empty]])
    found, notes = propose(fake, np.zeros((64, 64, 3), np.uint8), 0.5, ["primary", "secondary"], ["cell"])
    assert len(found) == 1 and found[0]["class"] == "cell"
    assert notes == ["1 detection(s) above the threshold had no mask of this dataset's mask names with any area"]
    found, notes = propose(fake, np.zeros((64, 64, 3), np.uint8), 0.95, ["primary", "secondary"], ["cell"])
    assert found == [] and notes[0].startswith("its best detection scored 0.90, under the threshold of 0.95")
