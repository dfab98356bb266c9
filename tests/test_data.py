"""Dataset loading with its checks and repairs, registration, and the mapper's transforms."""

import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import shapely
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T

from multimask.data import MultiMaskDatasetMapper, Report, load_multimask_json, register_multimask_dataset
from multimask.io import DatasetError

H, W = 40, 60
SQUARE = [10, 10, 30, 10, 30, 30, 10, 30]
INNER = [12, 12, 20, 12, 20, 20]


def _rle_with_hole():
    m = np.zeros((H, W), np.uint8)
    m[5:35, 35:55] = 1
    m[15:25, 40:50] = 0
    rle = mask_util.encode(np.asfortranarray(m))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}, m


def _write(tmp_path, annotations, images=None, mask_names=("primary", "secondary"), make_images=True):
    images = images or [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    if make_images:
        for img in images:
            cv2.imwrite(str(tmp_path / img["file_name"]), np.full((H, W, 3), 128, np.uint8))
    data = {
        "mask_names": list(mask_names),
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 7, "name": "leaf"}, {"id": 9, "name": "fruit"}],
    }
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data))
    return path


def _ann(i, primary, secondary, cat=7, image_id=1):
    return {
        "id": i,
        "image_id": image_id,
        "category_id": cat,
        "multimask": {"primary": primary, "secondary": secondary},
    }


def test_loads_polygons_and_rle_with_contiguous_classes(tmp_path):
    rle, _ = _rle_with_hole()
    path = _write(tmp_path, [_ann(1, [SQUARE], [INNER]), _ann(2, rle, [], cat=9)])
    report = Report()
    dicts, meta = load_multimask_json(path, report=report)
    assert not report, report.summary()
    assert meta["thing_classes"] == ["leaf", "fruit"] and meta["mask_names"] == ["primary", "secondary"]
    a, b = dicts[0]["annotations"]
    assert a["category_id"] == 0 and b["category_id"] == 1
    assert a["bbox"] == [10, 10, 20, 20]
    assert b["multimask"]["secondary"] == [] and b["multimask"]["primary"]["size"] == [H, W]
    assert b["bbox"] == [35, 5, 20, 30]
    assert a["segmentation"] is a["multimask"]["primary"]


def test_bbox_encloses_all_masks(tmp_path):
    outside_secondary = [30, 30, 38, 30, 38, 38]
    dicts, _ = load_multimask_json(_write(tmp_path, [_ann(1, [SQUARE], [outside_secondary])]))
    assert dicts[0]["annotations"][0]["bbox"] == [10, 10, 28, 28]


@pytest.mark.parametrize(
    "primary, kind, fragment",
    [
        ([SQUARE, [1, 2, 3, 4]], "skipped polygons", "fewer than 3 points"),
        ([SQUARE, [1, 2, 3, 4, 5, 6, 7]], "skipped polygons", "odd number of coordinates"),
        ([[10, 10, 30, 30, 30, 10, 10, 30]], "repaired polygons", "invalid polygon repaired"),
        ([[-5, 10, 30, 10, 30, 80]], "clipped polygons", "clipped"),
        ([SQUARE, [1, 2, "x", 4, 5, 6]], "skipped polygons", "not a flat list of numbers"),
    ],
)
def test_bad_polygons_are_repaired_or_skipped_and_reported(tmp_path, primary, kind, fragment):
    report = Report()
    dicts, _ = load_multimask_json(_write(tmp_path, [_ann(42, primary, [INNER])]), report=report)
    assert report.counts.get(kind) == 1
    assert "annotation id=42" in report.messages[0] and "ds.json" in report.messages[0]
    assert fragment in report.messages[0]
    (ann,) = dicts[0]["annotations"]
    for part in ann["multimask"]["primary"]:
        pts = np.asarray(part).reshape(-1, 2)
        assert len(pts) >= 3 and pts[:, 0].min() >= 0 and pts[:, 0].max() <= W and pts[:, 1].max() <= H


def test_self_intersecting_bowtie_becomes_two_valid_parts(tmp_path):
    report = Report()
    dicts, _ = load_multimask_json(_write(tmp_path, [_ann(1, [[10, 10, 30, 30, 30, 10, 10, 30]], [])]), report=report)
    parts = dicts[0]["annotations"][0]["multimask"]["primary"]
    assert len(parts) == 2
    from shapely.geometry import Polygon

    assert all(Polygon(np.asarray(p).reshape(-1, 2)).is_valid for p in parts)
    assert sum(Polygon(np.asarray(p).reshape(-1, 2)).area for p in parts) == pytest.approx(200)


def test_unknown_category_missing_image_and_empty_instance_are_reported(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "height": H, "width": W},
        {"id": 2, "file_name": "missing.png", "height": H, "width": W},
    ]
    path = _write(
        tmp_path,
        [
            _ann(1, [SQUARE], [], cat=3),
            _ann(2, [SQUARE], [], image_id=2),
            _ann(3, [[1, 2, 3, 4]], []),
            _ann(4, [SQUARE], []),
        ],
        images=images,
        make_images=False,
    )
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((H, W, 3), np.uint8))
    report = Report()
    dicts, _ = load_multimask_json(path, report=report)
    assert len(dicts) == 1 and [a["id"] for a in dicts[0]["annotations"]] == [4]
    text = "\n".join(report.messages)
    assert "unknown category_id 3" in text and "missing.png" in text and "no usable mask" in text
    assert report.counts["skipped images"] == 1 and report.counts["skipped annotations"] == 2


def test_unreadable_and_malformed_files_raise_errors_naming_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetError, match="bad.json: not valid JSON"):
        load_multimask_json(bad)
    with pytest.raises(DatasetError, match="file not found"):
        load_multimask_json(tmp_path / "nope.json")
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(DatasetError, match="no 'mask_names'"):
        load_multimask_json(plain)


def test_unknown_mask_names_raise(tmp_path):
    ann = _ann(5, [SQUARE], [])
    ann["multimask"]["nucleus"] = [INNER]
    with pytest.raises(DatasetError, match=r"annotation id=5.*\['nucleus'\]"):
        load_multimask_json(_write(tmp_path, [ann]))
    with pytest.raises(DatasetError, match=r"mask names \['lesion'\] are not in this dataset"):
        load_multimask_json(_write(tmp_path, [_ann(1, [SQUARE], [])]), mask_names=["primary", "lesion"])


@pytest.mark.parametrize(
    "images, fragment",
    [
        (
            [
                {"id": 1, "file_name": "a.png", "height": H, "width": W},
                {"id": 1, "file_name": "b.png", "height": H, "width": W},
            ],
            r"images\[1\]: image id 1 is also the id of images\[0\]",
        ),
        ([{"file_name": "a.png", "height": H, "width": W}], r"images\[0\]: an image needs an integer or string 'id'"),
        ([{"id": [1], "file_name": "a.png", "height": H, "width": W}], r"images\[0\]: an image needs an integer"),
    ],
)
def test_missing_or_duplicate_image_ids_raise_naming_the_image(tmp_path, images, fragment):
    """Else annotations would silently land on another image."""
    with pytest.raises(DatasetError, match=r"ds.json " + fragment):
        load_multimask_json(_write(tmp_path, [_ann(1, [SQUARE], [])], images=images))


def test_an_annotation_without_a_declared_mask_is_reported_and_taken_as_absent(tmp_path):
    ann = _ann(8, [SQUARE], [])
    del ann["multimask"]["secondary"]
    report = Report()
    dicts, _ = load_multimask_json(_write(tmp_path, [ann]), report=report)
    assert dicts[0]["annotations"][0]["multimask"]["secondary"] == []
    assert report.counts == {"masks missing (taken as absent)": 1}
    assert "annotation id=8" in report.messages[0] and "no mask 'secondary'" in report.messages[0]


def test_an_rle_whose_runs_do_not_fit_the_image_is_skipped_and_reported(tmp_path):
    other = mask_util.encode(np.asfortranarray(np.ones((H * 2, W), np.uint8)))["counts"].decode("ascii")
    report = Report()
    dicts, _ = load_multimask_json(
        _write(
            tmp_path,
            [
                _ann(3, [SQUARE], {"size": [H, W], "counts": other}),
                _ann(4, [SQUARE], {"size": [H, W], "counts": [5, 7]}),
            ],
        ),
        report=report,
    )
    assert [a["multimask"]["secondary"] for a in dicts[0]["annotations"]] == [[], []]
    assert report.counts == {"skipped masks": 2}
    assert "annotation id=3" in report.messages[0] and "RLE cannot be decoded" in report.messages[0]
    assert "annotation id=4" in report.messages[1] and "RLE runs cover 12 pixels, not 40 x 60" in report.messages[1]


def test_register_sets_metadata_and_reloads(tmp_path):
    path = _write(tmp_path, [_ann(1, [SQUARE], [INNER])])
    register_multimask_dataset("t_reg", path)
    register_multimask_dataset("t_reg", path)  # replacing is allowed
    meta = MetadataCatalog.get("t_reg")
    assert meta.thing_classes == ["leaf", "fruit"] and meta.mask_names == ["primary", "secondary"]
    assert len(DatasetCatalog.get("t_reg")[0]["annotations"]) == 1


def _mapper(augs, names=("primary", "secondary")):
    return MultiMaskDatasetMapper(
        True,
        augmentations=augs,
        image_format="BGR",
        use_instance_mask=True,
        mask_names=list(names),
        recompute_boxes=False,
    )


def _raster(masks, i, h, w):
    """Full-image bool mask i of a PolygonMasks or BitMasks."""
    from detectron2.structures import BitMasks
    from detectron2.structures.masks import polygons_to_bitmask

    if isinstance(masks, BitMasks):
        return masks.tensor[i].numpy()
    return polygons_to_bitmask(masks.polygons[i], h, w) if masks.polygons[i] else np.zeros((h, w), bool)


def _poly_raster(poly):
    from detectron2.structures.masks import polygons_to_bitmask

    return polygons_to_bitmask([np.asarray(poly, dtype=float)], H, W)


def test_horizontal_flip_moves_every_mask_of_an_instance(tmp_path):
    rle, hole_mask = _rle_with_hole()
    path = _write(tmp_path, [_ann(1, [SQUARE], [INNER]), _ann(2, rle, [], cat=9)])
    dicts, _ = load_multimask_json(path)
    inst = _mapper([T.RandomFlip(prob=1.0, horizontal=True)])(dicts[0])["instances"]
    assert inst.gt_multimask.present.tolist() == [[True, True], [True, False]]
    assert inst.gt_boxes.tensor[0].tolist() == [W - 30, 10, W - 10, 30]
    assert inst.gt_boxes.tensor[1].tolist() == [W - 55, 5, W - 35, 35]
    mm = inst.gt_multimask
    assert np.array_equal(_raster(mm.masks["primary"], 0, H, W), _poly_raster(SQUARE)[:, ::-1])
    assert np.array_equal(_raster(mm.masks["secondary"], 0, H, W), _poly_raster(INNER)[:, ::-1])
    assert np.array_equal(_raster(mm.masks["primary"], 1, H, W), hole_mask[:, ::-1].astype(bool))
    assert not _raster(mm.masks["secondary"], 1, H, W).any()
    assert torch.equal(inst.gt_masks.tensor, mm.masks["primary"].tensor)


def test_flip_of_rle_masks_keeps_the_hole(tmp_path):
    rle, hole_mask = _rle_with_hole()
    path = _write(tmp_path, [_ann(1, rle, rle, cat=9)])
    dicts, _ = load_multimask_json(path)
    inst = _mapper([T.RandomFlip(prob=1.0, horizontal=True)])(dicts[0])["instances"]
    flipped = hole_mask[:, ::-1].astype(bool)
    for name in ("primary", "secondary"):
        got = inst.gt_multimask.masks[name].tensor[0].numpy()
        assert np.array_equal(got, flipped), name


def test_resize_scales_masks_and_targets_follow(tmp_path):
    path = _write(tmp_path, [_ann(1, [SQUARE], [INNER])])
    dicts, _ = load_multimask_json(path)
    inst = _mapper([T.Resize((80, 120))])(dicts[0])["instances"]
    assert inst.image_size == (80, 120)
    targets = inst.gt_multimask.crop_and_resize(inst.gt_boxes.tensor, 8)
    assert targets.shape == (1, 2, 8, 8)
    assert targets[0, 0].mean() == 1.0  # the primary fills its own box
    sec = targets[0, 1]  # the secondary is a triangle of 32 px^2 in the box's top-left (400 px^2)
    assert 0.02 < sec.mean() < 0.15 and sec[:4, :4].sum() == sec.sum()


def test_mapper_names_a_missing_mask(tmp_path):
    dicts, _ = load_multimask_json(_write(tmp_path, [_ann(1, [SQUARE], [])]), mask_names=["primary"])
    with pytest.raises(KeyError, match="no mask named"):
        _mapper([], names=("primary", "secondary"))(dicts[0])


def test_crop_recomputes_boxes_from_every_present_mask(tmp_path):
    rle, hole_mask = _rle_with_hole()
    path = _write(tmp_path, [_ann(1, [SQUARE], [INNER]), _ann(2, rle, [], cat=9)])
    dicts, _ = load_multimask_json(path)
    mapper = MultiMaskDatasetMapper(
        True,
        augmentations=[T.CropTransform(5, 8, 40, 24)],
        image_format="BGR",
        use_instance_mask=True,
        mask_names=["primary", "secondary"],
        recompute_boxes=True,
    )
    inst = mapper(dicts[0])["instances"]
    assert inst.image_size == (24, 40)
    # the square (10..30) becomes (5..25) x (2..22); the RLE ring (35..55, 5..35) becomes (30..40) x (0..24)
    assert inst.gt_boxes.tensor[0].tolist() == [5, 2, 25, 22]
    assert inst.gt_boxes.tensor[1].tolist() == [30, 0, 40, 24]
    assert np.array_equal(_raster(inst.gt_multimask.masks["primary"], 1, 24, 40), hole_mask[8:32, 5:45].astype(bool))


@pytest.mark.parametrize("image_format", ["BGR", "RGB"])
def test_the_mapper_reads_a_16_bit_greyscale_image_as_predict_does(tmp_path, image_format):
    # detectron2's reader (PIL) clips such an image to white; the mapper maps it by its range, as predict does
    from multimask.data.images import read_image_bgr, to_uint8

    grey = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 85  # 0 .. 65195
    path = tmp_path / "grey16.png"
    cv2.imwrite(str(path), grey)
    colour = np.stack([grey, grey // 2, grey // 4], axis=2)
    cpath = tmp_path / "colour16.png"
    cv2.imwrite(str(cpath), colour)
    mapper = MultiMaskDatasetMapper(
        True,
        augmentations=[],
        image_format=image_format,
        use_instance_mask=True,
        mask_names=["primary", "secondary"],
        recompute_boxes=False,
    )
    for p, expected in ((path, np.repeat(to_uint8(grey)[:, :, None], 3, axis=2)), (cpath, to_uint8(colour))):
        record = {"file_name": str(p), "height": 24, "width": 32, "image_id": 1, "annotations": []}
        image = mapper(record)["image"].permute(1, 2, 0).numpy()
        expected = expected.astype(np.uint8)
        assert np.array_equal(image, expected if image_format == "BGR" else expected[:, :, ::-1])
        assert np.array_equal(read_image_bgr(p), expected)


def test_the_mapper_refuses_formats_it_cannot_read():
    with pytest.raises(ValueError, match="INPUT.FORMAT 'L': multimask models read BGR or RGB images"):
        MultiMaskDatasetMapper(True, augmentations=[], image_format="L", mask_names=["primary"])


@pytest.mark.parametrize("content", [None, b"", b"not an image"])
def test_the_mapper_names_an_image_it_cannot_read(tmp_path, content):
    from multimask.io import DatasetError

    path = tmp_path / "img.png"
    if content is not None:
        path.write_bytes(content)
    record = {"file_name": str(path), "height": 8, "width": 8, "image_id": 1, "annotations": []}
    with pytest.raises(DatasetError, match=f"{path}: cannot read the image"):
        _mapper([])(record)


def test_multimasks_concatenate_polygon_and_bitmap_sets():
    from detectron2.structures import BitMasks, PolygonMasks

    from multimask.structures import MultiMasks

    square = [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]]
    rle = mask_util.encode(np.asfortranarray(np.pad(np.ones((3, 3), np.uint8), ((1, 6), (4, 3)))))
    polys = MultiMasks.from_segmentations(["primary", "secondary"], [{"primary": square, "secondary": []}], (10, 10))
    bits = MultiMasks.from_segmentations(["primary", "secondary"], [{"primary": rle, "secondary": square}], (10, 10))
    both = MultiMasks.cat([polys, polys, bits])
    assert len(both) == 3 and both.present.tolist() == [[True, False], [True, False], [True, True]]
    assert isinstance(both.masks["primary"], BitMasks)  # a mix becomes bitmaps
    assert isinstance(both.masks["secondary"], PolygonMasks)  # polygons throughout stay polygons
    primary = both.masks["primary"].tensor
    assert primary[0].sum() == 16 and primary[0, 2:6, 2:6].all()  # the square, rasterised at 10 x 10
    assert torch.equal(primary[2], torch.from_numpy(mask_util.decode(rle).astype(bool)))
    with pytest.raises(ValueError, match="different mask names"):
        MultiMasks.cat([polys, MultiMasks.from_segmentations(["a", "b"], [{"a": square, "b": []}], (10, 10))])


def test_mask_targets_are_detectron2s_pixels_for_every_roi():
    """The batched target rasteriser gives the same pixels as PolygonMasks.crop_and_resize, ROI by ROI."""
    from detectron2.structures import PolygonMasks

    from multimask.structures import MultiMasks

    rng = np.random.default_rng(3)

    def blob(cx, cy, r, n):  # a star-ish polygon: irregular, non-convex
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.4, 1.0, n)
        return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1).ravel().tolist()

    segms = []
    for i in range(40):
        cx, cy, r = rng.uniform(20, 100), rng.uniform(20, 80), rng.uniform(4, 20)
        primary = [blob(cx, cy, r, int(rng.integers(3, 30)))]
        if i % 3 == 0:  # a part in two pieces
            primary.append(blob(cx + r, cy, r / 2, 5))
        secondary = [] if i % 4 == 1 else [blob(cx, cy, r / 3, int(rng.integers(3, 12)))]
        segms.append({"primary": primary, "secondary": secondary})
    mm = MultiMasks.from_segmentations(["primary", "secondary"], segms, (100, 120))
    gt = mm.get_bounding_boxes().tensor
    # proposal-like boxes: jittered around the truth, some cutting the masks, one degenerate
    boxes = gt + torch.from_numpy(rng.uniform(-6, 6, gt.shape)).float()
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 0.05)
    targets = mm.crop_and_resize(boxes, 14)
    for k, name in enumerate(mm.names):
        present = mm.present[:, k]
        polys = PolygonMasks([p for p, keep in zip(mm.masks[name].polygons, present) if keep])
        expected = polys.crop_and_resize(boxes[present], 14).float()
        assert torch.equal(targets[present, k], expected), name
        assert not targets[~present, k].any(), name


def test_a_long_part_crossing_itself_everywhere_is_repaired_on_the_pixel_grid():
    """make_valid took minutes for a legal 5000-point part crossing itself at random; the pixel-grid repair's cost
    is bounded by the part's box, and a part that crosses itself once keeps its shape."""
    from shapely.geometry import Polygon

    from multimask.data.geometry import RASTER_REPAIR_POINTS, clean_polygons, made_valid

    rng = np.random.default_rng(0)
    scribble = rng.uniform(0, 600, (5000, 2))
    report = Report()
    parts = clean_polygons([list(scribble.ravel())], 600, 600, "scribble", report)
    assert parts and all(Polygon(np.reshape(p, (-1, 2))).is_valid for p in parts)
    assert report.counts == {"repaired polygons": 1}
    # A blob with one twist: the repaired shape is the one make_valid gives, within half a pixel of its outline.
    t = np.linspace(0, 2 * np.pi, 4 * RASTER_REPAIR_POINTS, endpoint=False)
    blob = np.c_[300 + 100 * np.cos(t), 300 + 100 * np.sin(t)]
    blob[100:110] = blob[100:110][::-1]
    exact, grid = shapely.make_valid(Polygon(blob)), made_valid(Polygon(blob))
    assert grid.is_valid and exact.symmetric_difference(grid).area < 0.5 * exact.length + 10
