"""`MultiMaskDatasetMapper`: detectron2's DatasetMapper, transforming every named mask of every instance."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

from ..io import DatasetError
from ..structures import MultiMasks
from .images import read_image_bgr


def transform_segmentation(
    segm: list | dict | np.ndarray, transforms: T.TransformList, image_size: tuple[int, int]
) -> list | np.ndarray:
    """Apply `transforms` to one mask: polygons stay polygons, an RLE becomes a transformed bitmap."""
    if isinstance(segm, list):
        polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segm]
        return [p.reshape(-1) for p in transforms.apply_polygons(polygons)] if polygons else []
    if isinstance(segm, dict):
        segm = mask_util.decode(
            segm
            if isinstance(segm["counts"], (bytes, list))
            else {"size": segm["size"], "counts": segm["counts"].encode("ascii")}
        )
    mask = transforms.apply_segmentation(np.asarray(segm, dtype=np.uint8))
    if tuple(mask.shape[:2]) != tuple(image_size):
        raise ValueError(f"transformed mask has shape {mask.shape[:2]}, expected {image_size}")
    return mask


class MultiMaskDatasetMapper(DatasetMapper):
    """Reads the image, applies the configured augmentations to it and to every mask of every instance.

    Training outputs carry `instances` with `gt_boxes`, `gt_classes`, `gt_multimask` (all masks, and which
    are present) and `gt_masks` (the first mask, for tools that expect it).
    """

    @configurable
    def __init__(self, is_train: bool = True, *, mask_names: Sequence[str], **kwargs):
        super().__init__(is_train, **kwargs)
        if self.image_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT {self.image_format!r}: multimask models read BGR or RGB images")
        if self.proposal_topk is not None:
            raise ValueError("MODEL.LOAD_PROPOSALS: precomputed proposals are not supported by multimask models")
        self.mask_names = tuple(mask_names)

    def __call__(self, dataset_dict: dict) -> dict:
        """DatasetMapper's steps, with the image read by `read_image_bgr` as predict and the app read it."""
        dataset_dict = copy.deepcopy(dataset_dict)
        file = dataset_dict["file_name"]
        try:
            image = read_image_bgr(file, max_pixels=None)
        except ValueError as e:
            raise DatasetError(f"{file}: cannot read the image ({str(e).removeprefix(f'{file}: ')})") from e
        if self.image_format == "RGB":
            image = image[:, :, ::-1]
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
        elif "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        ret = super().from_config(cfg, is_train)
        ret["mask_names"] = list(cfg.MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES)
        ret["use_instance_mask"] = True
        return ret

    def _transform_annotations(
        self, dataset_dict: dict, transforms: T.TransformList, image_shape: tuple[int, int]
    ) -> None:
        annos = [a for a in dataset_dict.pop("annotations") if a.get("iscrowd", 0) == 0]
        boxes = np.zeros((len(annos), 4), dtype=np.float64)
        segms = []
        for i, anno in enumerate(annos):
            missing = [n for n in self.mask_names if n not in anno.get("multimask", {})]
            if missing:
                raise KeyError(
                    f"{dataset_dict.get('file_name')}: annotation {anno.get('id')} has no mask "
                    f"named {missing}; its masks are {sorted(anno.get('multimask', {}))}"
                )
            box = BoxMode.convert(anno["bbox"], anno["bbox_mode"], BoxMode.XYXY_ABS)
            boxes[i] = transforms.apply_box(np.array([box]))[0]
            segms.append(
                {n: transform_segmentation(anno["multimask"][n], transforms, image_shape) for n in self.mask_names}
            )
        inst = Instances(image_shape)
        inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.tensor([a["category_id"] for a in annos], dtype=torch.int64)
        inst.gt_multimask = MultiMasks.from_segmentations(self.mask_names, segms, image_shape)
        inst.gt_masks = inst.gt_multimask.masks[self.mask_names[0]]
        if self.recompute_boxes:
            inst.gt_boxes = inst.gt_multimask.get_bounding_boxes()
        inst.gt_boxes.clip(image_shape)
        dataset_dict["instances"] = inst[inst.gt_boxes.nonempty()]
