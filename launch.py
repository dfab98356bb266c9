"""Start the multimask app: `python launch.py [--host 127.0.0.1] [--port 7860] [--data-root D] [--runs-root R]`.

On a shared machine: `python launch.py --add-user NAME` once per person, then `python launch.py --host 0.0.0.0`
(see the README's "Running the app for a team").
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

MAX_UPLOAD = "64mb"  # per uploaded file; the Label view also refuses images over 50 MB or 80 MP
NO_AUTH_WARNING = """\
!!! WARNING: serving {host} WITHOUT LOGIN (--no-auth) !!!
!!! Anyone who can reach {url} can read, change and delete every dataset, and train on this machine. !!!"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Serve the multimask Gradio app (on this machine only unless --host "
        "says otherwise; a network address needs users, see --add-user)."
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 serves every network interface")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--data-root", default="datasets", help="folder of datasets")
    p.add_argument("--runs-root", default="runs", help="folder of training runs")
    p.add_argument(
        "--import-root",
        action="append",
        default=[],
        metavar="FOLDER",
        help="a server folder the Label tab may import images and datasets from (repeatable; "
        "the data root is always allowed)",
    )
    p.add_argument(
        "--users-file",
        metavar="FILE",
        help="user names and password hashes (default: RUNS_ROOT/.users.json); when it has users, "
        "the app asks for a login",
    )
    p.add_argument(
        "--add-user",
        metavar="NAME",
        help="add a user or change their password, then exit (the "
        "password is asked for; read from stdin when stdin is not a terminal)",
    )
    p.add_argument("--remove-user", metavar="NAME", help="remove a user, then exit")
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="serve a network address without login: anyone who can reach it can do anything",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a further host name that browsers use to reach the app (a DNS alias, a proxy); the "
        "machine's own names and the address a request arrives on are always allowed",
    )
    p.add_argument(
        "--sam-checkpoint",
        metavar="FILE",
        help="a Segment-Anything checkpoint of yours (e.g. sam_vit_b_01ec64.pth) for the Label editor's SAM tool; "
        "needs `pip install segment-anything`; nothing is downloaded",
    )
    p.add_argument("--session-hours", type=float, default=12.0, help="a login lasts this long (default 12)")
    return p


def read_new_password(name: str) -> str:
    """The new password for `name`: asked twice on a terminal, else the first line of stdin."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"Password for {name}: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("The two passwords differ; nothing was changed.")
    return first


def manage_users(args: argparse.Namespace, users) -> None:
    """--add-user / --remove-user, reporting what changed."""
    from app.serving.users import UsersError

    try:
        if args.add_user:
            new = users.add(args.add_user, read_new_password(args.add_user))
            print(f"{'Added' if new else 'Changed the password of'} user {args.add_user!r} in {users.path}.")
        else:
            users.remove(args.remove_user)
            print(f"Removed user {args.remove_user!r} from {users.path}.")
    except UsersError as e:
        raise SystemExit(f"error: {e}") from None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from app.serving.guard import is_loopback
    from app.serving.server import ServeOptions, claim_data_root, public_url, serve
    from app.serving.users import USERS_FILE, UserFile, UsersError

    users = UserFile(args.users_file or Path(args.runs_root) / USERS_FILE)
    if args.add_user or args.remove_user:
        manage_users(args, users)
        return
    try:
        login = bool(users.names()) and not args.no_auth
    except UsersError as e:
        raise SystemExit(f"error: {e}") from None
    local = is_loopback(args.host)
    if not local and not login and not args.no_auth:
        raise SystemExit(
            f"Refusing to serve {args.host} without a login: anyone on the network could read, change "
            f"and delete the datasets. Add a user first (`python launch.py --add-user NAME`, stored in "
            f"{users.path}), or pass --no-auth to serve without one."
        )
    if not local and args.no_auth:
        print(NO_AUTH_WARNING.format(host=args.host, url=public_url(args.host, args.port)), file=sys.stderr, flush=True)
    from app import build_app

    mm = build_app(args.data_root, args.runs_root, args.import_root, logout=login, sam_checkpoint=args.sam_checkpoint)
    lock, other = claim_data_root(mm.data_root)
    if other is not None:
        print(
            f"warning: another multimask app ({other}) serves {mm.data_root} too. Saves stay safe (each dataset "
            "is locked while it is written), but two apps start queued training jobs and show each other's "
            "changes only on refresh.",
            file=sys.stderr,
            flush=True,
        )
    mm.start()  # the training jobs are checked (queued ones started) while the app runs
    served = serve(
        mm.blocks,
        mm.data_root,
        ServeOptions(
            host=args.host,
            port=args.port,
            users=users if login else None,
            allowed_hosts=tuple(args.allowed_host),
            session_hours=args.session_hours,
            max_file_size=MAX_UPLOAD,
        ),
    )
    print(
        f"multimask app running at {served.url}"
        + (f" (on this machine: {served.local_url})" if not local else "")
        + (f"; login required (users in {users.path})" if login else ""),
        flush=True,
    )
    try:
        while served.thread.is_alive():
            served.thread.join(timeout=1.0)
    except KeyboardInterrupt:
        served.close()
    finally:
        mm.stop()
        if lock is not None:
            lock.close()


if __name__ == "__main__":
    main()
