"""Hostile requests against the running app (served as launch.py serves it), and launch.py's login commands.

Each test names the attack it repeats: a foreign web page (Origin), DNS rebinding (Host), a client without a
login, a password guesser, oversized bodies, unknown editor calls, files of the data root that are not images.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app import build_app
from app.core.datasets.storage import LabelStore
from app.serving.guard import LOGIN_FAILURES, host_allowed, same_origin, served_data_file
from app.serving.server import claim_data_root
from app.serving.users import UserFile, UsersError, verify_password
from tests.conftest import serve_app

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "ann", "correct horse battery"


def _png(seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), seed * 40 % 255, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The app with one user and a dataset holding an image, plus files in the data root that must not be served."""
    base = tmp_path_factory.mktemp("secure")
    users = UserFile(base / "users.json")
    users.add(USER, PASSWORD)
    ds = LabelStore(base / "data").create("cells", ["cell"])
    entry = ds.add_image_bytes("a.png", _png(1))
    demo = build_app(base / "data", base / "runs", logout=True)
    (base / "data" / "page.html").write_text("<script>alert(document.cookie)</script>")
    (base / "data" / "cells" / "images" / "note.html").write_text("<script>alert(1)</script>")
    server = serve_app(demo, users=users)
    yield {
        "url": server.local_url,
        "server": server,
        "data": base / "data",
        "image": ds.image_path(entry["id"]),
        "dataset": ds,
    }
    server.close()


def _login(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, follow_redirects=False)
    r = client.post("/login", data={"username": USER, "password": PASSWORD}, headers={"Origin": url})
    assert r.status_code == 200, r.text
    return client


# ----- rules, unit level ---------------------------------------------------------------------------------------


def test_host_rules():
    assert host_allowed("localhost:7860", "127.0.0.1", frozenset())
    assert host_allowed("[::1]:7860", "127.0.0.1", frozenset())
    assert host_allowed("10.0.0.5:7860", "10.0.0.5", frozenset()), "the address the request arrived on"
    assert host_allowed("gpu-box:7860", "10.0.0.5", frozenset({"gpu-box"}))
    assert not host_allowed("evil.example:7860", "127.0.0.1", frozenset()), "DNS rebinding"
    assert not host_allowed("localhost:7860", "10.0.0.5", frozenset()), "loopback names only on loopback"
    assert not host_allowed("", "127.0.0.1", frozenset())


def test_origin_rules():
    assert same_origin("http://127.0.0.1:7860", "127.0.0.1:7860")
    assert same_origin("https://lab.example", "lab.example"), "behind a TLS proxy that keeps the Host"
    assert not same_origin("http://evil.example", "127.0.0.1:7860")
    assert not same_origin("http://127.0.0.1:9999", "127.0.0.1:7860"), "another port is another origin"
    assert not same_origin("null", "127.0.0.1:7860")
    assert not same_origin("file://", "127.0.0.1:7860")


def test_only_dataset_images_of_the_data_root_are_served(tmp_path):
    root = tmp_path.resolve()
    assert served_data_file(root / "cells" / "images" / "a.png", root)
    assert served_data_file(root / "cells" / "thumbs" / "x.jpg", root)
    assert not served_data_file(root / "cells" / "images" / "note.html", root)
    assert not served_data_file(root / "cells" / "annotations" / "x.png", root)
    assert not served_data_file(root / "cells" / "index.json", root)
    assert not served_data_file(root / "page.png", root)


# ----- the running app -------------------------------------------------------------------------------------------


def test_nothing_but_the_login_page_without_a_login(site):
    url = site["url"]
    assert httpx.get(f"{url}/gradio_api/info").status_code == 401
    assert httpx.get(f"{url}/config").status_code == 401
    assert httpx.get(f"{url}/gradio_api/file={site['image']}").status_code == 401
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "<html" in page.text  # Gradio's login form
    with pytest.raises(Exception, match="(?i)login|auth|401"):
        from gradio_client import Client

        Client(url, verbose=False)


def test_gradio_client_with_a_login(site):
    from gradio_client import Client

    client = Client(site["url"], auth=(USER, PASSWORD), verbose=False)
    update, status = client.predict(None, api_name="/list_runs")
    assert "python -m multimask train" in status  # no runs yet: the Predict tab says how to make one


def test_foreign_pages_cannot_write_or_read(site):
    url, client = site["url"], _login(site["url"])
    call = '{"component_id": 1, "fn_name": "save_annotations", "session_hash": "x", "data": []}'
    r = client.post(
        "/gradio_api/component_server",
        content=call,
        headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
    )
    assert r.status_code == 403 and "origin" in r.json()["detail"]
    r = client.post("/gradio_api/queue/join", json={}, headers={"Origin": "null"})
    assert r.status_code == 403
    r = client.options(
        "/gradio_api/component_server",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = client.get("/gradio_api/info", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    # No Origin, but the browser says the request comes from another site (old browsers, some form posts).
    r = client.post("/gradio_api/queue/join", json={}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    # The app's own page passes, and no CORS header is added for it either.
    r = client.get("/gradio_api/info", headers={"Origin": url})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_dns_rebinding_is_refused(site):
    client = _login(site["url"])
    r = client.get("/", headers={"Host": "evil.example"})
    assert r.status_code == 403 and "evil.example" in r.json()["detail"]
    r = client.post(
        "/gradio_api/queue/join", json={}, headers={"Host": "evil.example:7860", "Origin": "http://evil.example:7860"}
    )
    assert r.status_code == 403


def test_bodies_over_their_limit_are_refused_before_they_are_read(site):
    client = _login(site["url"])
    limit = site["server"].policy.save_limit
    # A declared length over the limit is answered before a byte of the body is sent.
    host, port = site["url"].removeprefix("http://").split(":")
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(
            f"POST /gradio_api/component_server HTTP/1.1\r\nHost: {host}:{port}\r\nCookie: {cookie}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n\r\n".encode()
        )
        assert conn.recv(200).startswith(b"HTTP/1.1 413")

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(limit // 2**20 + 2):
            yield b" " * 2**20

    r = client.post("/gradio_api/component_server", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "MB" in r.json()["detail"]


def test_unknown_editor_calls_are_404_not_500(site):
    client = _login(site["url"])
    for call in (
        {"component_id": 987654, "fn_name": "save_annotations"},
        {"component_id": 1, "fn_name": "__init__"},
        {"component_id": "1", "fn_name": "save_annotations"},
    ):
        r = client.post("/gradio_api/component_server", json={**call, "session_hash": "x", "data": []})
        assert r.status_code == 404, (call, r.text)
    r = client.post("/gradio_api/component_server", content=b"not json")
    assert r.status_code == 422


def test_files_served_are_dataset_images_only(site):
    client = _login(site["url"])
    r = client.get(f"/gradio_api/file={site['image']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "SAMEORIGIN"
    data = site["data"]
    for path in (
        data / "page.html",
        data / "cells" / "images" / "note.html",
        data / "cells" / "index.json",
        data / "cells" / "dataset.json",
        data / "cells" / "images" / ".." / "index.json",
    ):
        assert client.get(f"/gradio_api/file={path}").status_code == 404, path
    assert client.get("/gradio_api/file=/etc/passwd").status_code == 403  # Gradio's own rule outside the roots


def test_uploads_need_a_login_and_come_back_as_attachments_unless_images(site):
    files = {"files": ("page.html", b"<script>alert(1)</script>", "text/html")}
    assert httpx.post(f"{site['url']}/gradio_api/upload", files=files).status_code == 401
    client = _login(site["url"])
    r = client.post("/gradio_api/upload", files=files)
    assert r.status_code == 200, r.text
    served = client.get(f"/gradio_api/file={r.json()[0]}")
    assert served.status_code == 200 and "html" not in served.headers["content-type"]
    assert served.headers["content-disposition"].startswith("attachment")


def test_a_symlink_in_images_leading_out_is_not_served(site, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png(3))
    link = site["data"] / "cells" / "images" / "leak.png"
    link.symlink_to(secret)
    try:
        assert _login(site["url"]).get(f"/gradio_api/file={link}").status_code in (403, 404)
    finally:
        link.unlink()


def test_sessions_expire_and_logout_ends_them(site):
    policy = site["server"].policy
    now = [1000.0]
    saved_clock, policy.clock = policy.clock, lambda: now[0]
    try:
        client = _login(site["url"])
        assert client.get("/gradio_api/info").status_code == 200
        now[0] += policy.session_seconds - 60
        assert client.get("/gradio_api/info").status_code == 200, "still inside the session's life"
        now[0] += 120
        assert client.get("/gradio_api/info").status_code == 401, "expired"
        client = _login(site["url"])
        assert client.get("/logout", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403, "another site"
        assert client.get("/gradio_api/info").status_code == 200
        assert client.get("/logout").status_code == 302
        assert client.get("/gradio_api/info").status_code == 401, "logged out"
    finally:
        policy.clock = saved_clock


def test_password_guessing_is_throttled(site):
    policy = site["server"].policy
    now = [5000.0]
    saved_clock, policy.clock = policy.clock, lambda: now[0]
    try:
        for _ in range(LOGIN_FAILURES):
            r = httpx.post(f"{site['url']}/login", data={"username": USER, "password": "wrong"})
            assert r.status_code == 400
        r = httpx.post(f"{site['url']}/login", data={"username": USER, "password": PASSWORD})
        assert r.status_code == 429 and "try again" in r.json()["detail"], "even the right password waits"
        now[0] += 601
        assert httpx.post(f"{site['url']}/login", data={"username": USER, "password": PASSWORD}).status_code == 200
    finally:
        policy.clock = saved_clock
        policy.failures.clear()


def test_paths_a_client_names_stay_inside_the_allowed_folders(site, tmp_path):
    """The Label, Train and Predict endpoints, called as a logged-in client: imports naming images outside the
    data root, folders outside it, export names leading out, run names leading out. Nothing outside is read or
    written, and no message shows an absolute server path."""
    from gradio_client import Client

    from multimask.data.dataset_json import make_annotation, write_multimask_json

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(_png(7))
    client = Client(site["url"], auth=(USER, PASSWORD), verbose=False)
    data, names = site["data"], ["primary", "secondary"]
    images = [
        {"id": 1, "file_name": str(outside / "secret.png"), "height": 40, "width": 60},
        {"id": 2, "file_name": "../../outside/secret.png", "height": 40, "width": 60},
    ]
    anns = [
        make_annotation(k, k, 1, {"primary": [[2, 2, 20, 2, 20, 20]], "secondary": []}, 40, 60, names) for k in (1, 2)
    ]
    write_multimask_json(data / "cells" / "evil.json", images, [{"id": 1, "name": "cell"}], anns, names)
    before = len(site["dataset"].images())
    messages = [
        client.predict(
            "cells", "multimask JSON", str(data / "cells" / "evil.json"), "", "", "", api_name="/import_data"
        ),
        client.predict("cells", str(outside), api_name="/add_folder")[0],
        client.predict("cells", "../../../outside", 0.2, 0, False, False, api_name="/export_data"),
    ]
    assert "outside the folders this app may read" in messages[0] and "secret.png" in messages[0], messages[0]
    assert "outside the folders this app may read" in messages[1], messages[1]
    assert "plain folder name" in messages[2], messages[2]
    assert len(site["dataset"].images()) == before, "no outside image was copied in"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.png"], "nothing was written outside"
    for text in messages:
        assert str(tmp_path) not in text and str(data) not in text, text
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not in the list of choices"):  # the handler checks too: test_app_confinement
        client.predict("../../outside", None, 0.5, [], api_name="/predict")


# ----- users and launch.py ---------------------------------------------------------------------------------------


def test_users_file_holds_hashes_only(tmp_path):
    users = UserFile(tmp_path / "users.json")
    assert users.add("bo", "a long password") is True
    assert users.add("bo", "another password") is False
    text = (tmp_path / "users.json").read_text()
    assert "password" not in text and "scrypt$" in text
    assert stat.S_IMODE(os.stat(tmp_path / "users.json").st_mode) == 0o600
    assert users.check("bo", "another password") and not users.check("bo", "a long password")
    assert not users.check("nobody", "another password")
    assert not verify_password("x", "md5$abc")
    with pytest.raises(UsersError, match="at least 8"):
        users.add("cy", "short")
    with pytest.raises(UsersError, match="invalid user name"):
        users.add("../x", "a long password")
    users.remove("bo")
    assert users.names() == []
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UsersError, match="broken.json"):
        UserFile(tmp_path / "broken.json").names()


def _launch(*args: str, stdin: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch.py", *args], cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_launch_adds_users_and_refuses_the_network_without_them(tmp_path):
    runs = tmp_path / "runs"
    done = _launch("--runs-root", str(runs), "--add-user", "ann", stdin="a long password\n")
    assert done.returncode == 0 and "Added user 'ann'" in done.stdout
    assert UserFile(runs / ".users.json").check("ann", "a long password")
    refused = _launch("--host", "0.0.0.0", "--data-root", str(tmp_path / "d"), "--runs-root", str(tmp_path / "empty"))
    assert refused.returncode != 0 and "--add-user" in refused.stderr and "--no-auth" in refused.stderr
    assert not (tmp_path / "d").exists(), "nothing was started or created"


@pytest.mark.slow
def test_launch_on_the_network_prints_a_reachable_url_and_warns_a_second_app(tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "data"
    UserFile(runs / ".users.json").add("ann", "a long password")
    data.mkdir()
    held, _ = claim_data_root(data)  # as if another app served this data root
    from tests.conftest import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "launch.py",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--data-root",
            str(data),
            "--runs-root",
            str(runs),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # the app prints its URL once it listens
        assert "multimask app running at http://" in line, (line, proc.stderr.read() if proc.poll() else "")
        assert "127.0.0.1" not in line.split(" (")[0], "the first URL is one that other machines can use"
        assert "login required" in line
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and httpx.get(f"http://127.0.0.1:{port}/gradio_api/info").status_code != 401:
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/gradio_api/info").status_code == 401
    finally:
        proc.terminate()
        proc.wait(30)
        held.close()
    assert "another multimask app" in proc.stderr.read()
