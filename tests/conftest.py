"""Shared fixtures: small configs and a synthetic dataset generated once per test session."""

from __future__ import annotations

import pytest
import torch

from multimask.config import get_multimask_cfg


def tiny_cfg(num_classes: int = 3, names=("primary", "secondary"), **extra):
    """The CPU test preset with `num_classes` classes and the given mask names, on the CPU."""
    opts = [
        "MODEL.ROI_HEADS.NUM_CLASSES",
        num_classes,
        "MODEL.DEVICE",
        "cpu",
        "MODEL.ROI_MULTI_MASK_HEAD.NUM_MASK",
        len(names),
        "MODEL.ROI_MULTI_MASK_HEAD.MASK_NAMES",
        list(names),
        "MODEL.ROI_MULTI_MASK_HEAD.LOSS_WEIGHTS",
        [1.0] * len(names),
    ]
    for k, v in extra.items():
        opts += [k, v]
    return get_multimask_cfg("tiny_cpu", opts)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A small synthetic two-mask dataset: {"train": json, "val": json, "images": folder}."""
    from multimask.data.synth import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_train=24, num_val=8, seed=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


CHROMIUM = "/usr/bin/chromium"  # Debian's package; `make browser` installs it (playwright cannot download one)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_app(target, port: int | None = None, data_root=None, **options):
    """`target` (the app `build_app` makes, or bare Blocks with `data_root`) served as launch.py serves it (behind
    the request guard) on 127.0.0.1:`port` (default: a free one). The app's job poller runs until the server is
    closed. Returns the running server (`.local_url`, `.close()`)."""
    from app.blocks import MultimaskApp
    from app.serving.server import ServeOptions, serve

    if not isinstance(target, MultimaskApp):
        return serve(target, data_root, ServeOptions(port=port or free_port(), **options))
    target.start()
    served = serve(target.blocks, data_root or target.data_root, ServeOptions(port=port or free_port(), **options))
    close = served.close

    def close_all() -> None:
        close()
        target.stop()

    served.close = close_all
    return served


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium driven by playwright."""
    from pathlib import Path

    from playwright import sync_api

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)"
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
