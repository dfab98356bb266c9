"""Start the multimask app: `python launch.py [--host 127.0.0.1] [--port 7860] [--data-root D] [--runs-root R]`."""

from __future__ import annotations

import argparse

MAX_UPLOAD = "64mb"  # per uploaded file; the Label view also refuses images over 50 MB or 80 MP


def parse_bool(text: str) -> bool:
    """'true'/'false' (also yes/no, 1/0, on/off) as a bool, for flags such as `--share False`."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Serve the multimask Gradio app (local only unless --host says so).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the app to the network")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--data-root", default="datasets", help="folder of datasets")
    p.add_argument("--runs-root", default="runs", help="folder of training runs")
    p.add_argument("--import-root", action="append", default=[], metavar="FOLDER",
                   help="a server folder the Label tab may import images and datasets from (repeatable; "
                        "the data root is always allowed)")
    p.add_argument("--share", type=parse_bool, default=False, help="create a public gradio.live link (true/false)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from app import build_app

    demo = build_app(args.data_root, args.runs_root, args.import_root)
    _, local_url, share_url = demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                                          prevent_thread_lock=True, quiet=True, max_file_size=MAX_UPLOAD,
                                          show_error=not args.share)  # e.g. an upload that is not an image
    print(f"multimask app running at {local_url}" + (f" (public link: {share_url})" if share_url else ""),
          flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
