"""`lavila app` over HTTP (no browser): search API, range requests, thumbnails, refused paths, narrate jobs."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse

import numpy as np
import pytest

from lavila.cli import main as cli_main
from lavila.eval.search import load_index, search
from tests.app.conftest import CAPTIONS
from tests.benchmark_files import EGO
from tests.conftest import MEDIA


def request(app, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One raw request (the path is sent exactly as given: no client-side normalisation of `..`)."""
    url = urllib.parse.urlsplit(app.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def get_json(app, path: str):
    status, _, body = request(app, "GET", path)
    assert status == 200, (path, status, body[:300])
    return json.loads(body)


def test_pages_and_the_search_api_rank_like_lavila_search(app_server):
    status, headers, body = request(app_server, "GET", "/")
    assert status == 200 and b'id="q"' in body and b"/static/app.js" in body
    assert "default-src 'self'" in headers["content-security-policy"]
    assert request(app_server, "GET", "/narrate")[0] == 200
    assert request(app_server, "GET", "/static/app.js")[0] == 200
    assert request(app_server, "GET", "/static/..%2Fserver.py")[0] == 404

    res = get_json(app_server, "/api/search?q=someone%20kneads%20dough&k=50")
    hits = res["hits"]
    assert len(hits) == len(app_server.state.index["windows"])  # every segment, ranked
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    assert all(h["thumb"] == f"/thumb/{h['segment']}.jpg" and h["playable"] for h in hits
               if h["video"] != "outside.mp4")
    assert all(h["thumb"] is None and not h["playable"] for h in hits if h["video"] == "outside.mp4")
    # the same ranking as the library search with the same text embedding
    from lavila.eval.embed import encode_texts

    state = app_server.state
    q = encode_texts(state.model, state.tokenizer, ["someone kneads dough"], device=state.device)[0]
    expect = search(load_index(state.folder), np.asarray(q), 50)
    assert [(h["video"], h["start"]) for h in hits] == [(h["video"], h["start"]) for h in expect]
    knead = [h for h in hits if h["video"] == "kitchen/knead.mp4" and h["start"] == 0.0]
    assert knead[0]["narration"] == CAPTIONS[0]  # the window 0-2 s overlaps the narrations at 0 and 1.5 s
    assert request(app_server, "GET", "/api/search?q=%20")[0] == 400

    info = get_json(app_server, "/api/info")
    assert info["videos"] == 4 and info["narrated_videos"] == 1 and info["narrator"] is True
    timeline = get_json(app_server, "/api/narrations?video=kitchen/knead.mp4")["narrations"]
    assert [t["caption"] for t in timeline] == CAPTIONS


def test_videos_are_served_with_range_requests(app_server, library_dir):
    data = (library_dir["videos"] / "kitchen" / "knead.mp4").read_bytes()
    status, headers, body = request(app_server, "GET", "/media/kitchen/knead.mp4", headers={"Range": "bytes=100-299"})
    assert status == 206 and body == data[100:300]
    assert headers["content-range"] == f"bytes 100-299/{len(data)}" and headers["content-type"] == "video/mp4"
    status, headers, body = request(app_server, "GET", "/media/kitchen/knead.mp4")
    assert status == 200 and body == data and headers["accept-ranges"] == "bytes"


def test_thumbnails_are_decoded_once_and_kept_in_the_index_folder(app_server):
    row = next(i for i, w in enumerate(app_server.state.index["windows"]) if w["video"] == "ego.mp4")
    status, headers, body = request(app_server, "GET", f"/thumb/{row}.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    cached = list((app_server.state.folder / "thumbs").glob("*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == body
    assert request(app_server, "GET", f"/thumb/{row}.jpg")[2] == body
    assert request(app_server, "GET", "/thumb/99999.jpg")[0] == 404


@pytest.mark.parametrize("path", [
    "/media/../../../../etc/passwd",
    "/media/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/media/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
    "/media/%2Fetc%2Fpasswd",
    "/media//etc/passwd",
    "/media/kitchen/..%2F..%2Fvideos.index%2Fmanifest.json",
    "/media/@uploads/..%2Fmanifest.json",
    "/media/@uploads/%2Fetc%2Fpasswd",
    "/media/outside.mp4",  # a symlink in the indexed folder to a file elsewhere: indexed, never served
    "/api/narrations?video=..%2F..%2Fetc%2Fpasswd",
    "/api/narrations?video=%2Fetc%2Fpasswd",
])
def test_paths_outside_the_indexed_folders_are_refused(app_server, path):
    status, _, body = request(app_server, "GET", path)
    assert status in (403, 404), (path, status)
    assert b"root:" not in body and b'"format"' not in body
    if "outside.mp4" in path:
        assert status == 403 and b"outside the indexed folders" in body


def test_files_the_index_does_not_list_and_foreign_hosts_are_refused(app_server, library_dir):
    (library_dir["videos"] / "kitchen" / "new.mp4").write_bytes(b"added after indexing")
    try:
        assert request(app_server, "GET", "/media/kitchen/new.mp4")[0] == 404
    finally:
        (library_dir["videos"] / "kitchen" / "new.mp4").unlink()
    row = next(i for i, w in enumerate(app_server.state.index["windows"]) if w["video"] == "outside.mp4")
    assert request(app_server, "GET", f"/thumb/{row}.jpg")[0] == 403
    status, _, body = request(app_server, "POST", "/api/narrate", json.dumps({"video": "/etc/passwd"}).encode(),
                              {"Content-Type": "application/json"})
    assert status == 403
    for name in ("..%2Fevil.mp4", ".hidden.mp4", "notes.txt"):
        assert request(app_server, "PUT", f"/api/uploads/{name}", b"x")[0] in (400, 404), name
    assert not (app_server.state.folder / "evil.mp4").exists()
    status, _, body = request(app_server, "GET", "/api/info", headers={"Host": "attacker.example:80"})
    assert status == 400 and b"localhost" in body  # a DNS-rebinding page gets nothing


def _wait_job(app, job: dict, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while job["state"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = get_json(app, f"/api/jobs/{job['id']}")
        seen.append((job["done"], job["total"]))
    assert job["state"] == "done", job
    return job


def narrate(app, video: str) -> dict:
    status, _, body = request(app, "POST", "/api/narrate", json.dumps({"video": video}).encode(),
                              {"Content-Type": "application/json"})
    assert status == 200, body
    return _wait_job(app, json.loads(body))


def test_narrate_an_upload_and_a_library_video_with_progress(app_server):
    data = (MEDIA / EGO).read_bytes()
    status, _, body = request(app_server, "PUT", "/api/uploads/my%20clip.mp4", data)
    assert status == 200 and json.loads(body) == {"video": "@uploads/my clip.mp4", "bytes": len(data)}
    assert request(app_server, "PUT", "/api/uploads/big.mp4", b"0" * (6 * 1024 * 1024))[0] == 413
    assert not (app_server.state.folder / "uploads" / "big.mp4").exists()

    job = narrate(app_server, "@uploads/my clip.mp4")
    assert job["total"] == 1 and job["done"] == 1  # 2 s clip, 2 s windows
    timeline = get_json(app_server, "/api/narrations?video=%40uploads%2Fmy%20clip.mp4")["narrations"]
    assert len(timeline) == 1 and timeline[0]["start"] == 0.0
    saved = json.loads((app_server.state.folder / "narrations" / "@uploads" / "my clip.mp4.json").read_text())
    assert len(saved["windows"][0]["captions"]) == 2  # `lavila narrate`'s format, with every candidate
    videos = {v["id"]: v for v in get_json(app_server, "/api/videos")}
    assert videos["@uploads/my clip.mp4"]["narrated"] and not videos["kitchen/pastry.mp4"]["narrated"]

    job = narrate(app_server, "kitchen/pastry.mp4")
    assert job["total"] == 3 and job["done"] == 3  # 4 s at stride 1 s: 0-2, 1-3, 2-4
    on_disk = load_index(app_server.state.folder)  # written into the index: `lavila search` shows it too
    assert [r["start"] for r in on_disk["narrations"] if r["video"] == "kitchen/pastry.mp4"] == [0.0, 1.0, 2.0]
    assert [r["caption"] for r in on_disk["narrations"] if r["video"] == "kitchen/knead.mp4"] == CAPTIONS
    assert get_json(app_server, "/api/info")["narrated_videos"] == 2


def test_app_listens_on_loopback_unless_told_otherwise(library_dir, capsys):
    rc = cli_main(["app", "--index", str(library_dir["index"]), "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--allow-remote" in err and len(err.strip().splitlines()) == 1
    rc = cli_main(["app", "--index", str(library_dir["base"] / "nope")])
    assert rc == 2 and "not an index folder" in capsys.readouterr().err
