"""``--checkpoint`` as a file, a released name or a URL (issue 13 item 6), with no network: downloads come from a
local ``http.server`` on 127.0.0.1 or a replaced URL opener."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
from pathlib import Path

import pytest

from lavila.models import hub

REPO = Path(__file__).resolve().parents[2]
BODY = b"not really a checkpoint, but bytes with a known md5\n" * 50
MD5 = hashlib.md5(BODY).hexdigest()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(hub.CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over ``tmp_path/www`` that counts requests; stopped at the end of the test."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def do_GET(self):  # noqa: N802 - http.server's name
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_a_local_file_or_folder_is_used_as_is(tmp_path) -> None:
    f = tmp_path / "model.pt"
    f.write_bytes(b"x")
    assert hub.resolve_checkpoint(str(f)) == f
    assert hub.resolve_checkpoint(tmp_path) == tmp_path


def test_a_url_is_downloaded_once_verified_and_then_read_from_the_cache(server, cache) -> None:
    root, base, requests = server
    name = f"tiny.md5sum_{MD5[:6]}.pth"
    (root / name).write_bytes(BODY)
    first = hub.resolve_checkpoint(f"{base}/{name}", progress=False)
    assert first.read_bytes() == BODY
    assert cache in first.parents and first.name == name
    assert requests == [f"/{name}"]
    again = hub.resolve_checkpoint(f"{base}/{name}", progress=False)
    assert again == first and requests == [f"/{name}"]  # a cache hit does not download again
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


def test_a_download_whose_md5_differs_from_its_name_is_refused_and_deleted(server, cache) -> None:
    root, base, _ = server
    name = "tiny.md5sum_000000.pth"
    (root / name).write_bytes(BODY)
    with pytest.raises(hub.HubError, match=r"md5 of the download is [0-9a-f]{6}\.\.\., its name says 000000"):
        hub.resolve_checkpoint(f"{base}/{name}", progress=False)
    assert not [p for p in cache.rglob("*") if p.is_file()]  # neither the file nor a temporary is kept


def test_a_missing_url_is_one_error_line(server) -> None:
    _, base, _ = server
    with pytest.raises(hub.HubError, match="cannot download .*404|cannot download .*Not Found") as err:
        hub.resolve_checkpoint(f"{base}/nothing.pth", progress=False)
    assert "\n" not in str(err.value)


class _Response(io.BytesIO):
    def __init__(self, body: bytes, length: int | None = None) -> None:
        super().__init__(body)
        self.headers = {"Content-Length": str(len(body) if length is None else length)}


def test_a_released_name_downloads_its_zoo_file_into_the_zoo_layout(monkeypatch, cache) -> None:
    release = hub.Released("test-narrator", f"narrator/test.md5sum_{MD5[:6]}.pth", "vclm", "VCLM_X", MD5[:6])
    monkeypatch.setitem(hub.RELEASED, release.name, release)
    opened = []
    monkeypatch.setattr(hub, "_urlopen", lambda url, timeout: opened.append(url) or _Response(BODY))
    path = hub.resolve_checkpoint("test-narrator", progress=False)
    assert opened == [hub.BASE_URL + release.path]
    assert path == cache / "checkpoints" / "narrator" / release.filename
    assert path.read_bytes() == BODY
    assert hub.resolve_checkpoint("test-narrator") == path and len(opened) == 1


def test_a_truncated_transfer_keeps_nothing(monkeypatch, cache) -> None:
    monkeypatch.setattr(hub, "_urlopen", lambda url, timeout: _Response(BODY[:100], length=len(BODY)))
    with pytest.raises(hub.HubError, match=f"stopped after 100 of {len(BODY)} bytes"):
        hub.resolve_checkpoint("https://example.invalid/file.pth", progress=False)
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_an_unknown_name_suggests_the_close_released_one() -> None:
    with pytest.raises(hub.HubError, match="did you mean the released 'lavila-tsf-b'") as err:
        hub.resolve_checkpoint("lavila-tsf-bb")
    assert err.value.exit_code == 2
    with pytest.raises(hub.HubError, match="not a file, a URL or a released model name"):
        hub.resolve_checkpoint("/no/such/file.pth")


def test_released_files_md5_and_names() -> None:
    for r in hub.RELEASED.values():
        assert r.url.startswith(hub.BASE_URL) and r.kind in ("dual_encoder", "vclm", "classifier")
        if "md5sum_" in r.filename:
            assert r.filename.split("md5sum_")[1].split(".")[0] == r.md5
        assert hub.released(r.filename) is r and hub.released(r.url) is r
    assert hub.expected_md5(hub.RELEASED["baseline-tsf-b"].url) == "dbcc4d"  # the zoo's, not in the file name
    assert hub.expected_md5("https://x/y.md5sum_abcdef.pth") == "abcdef"
    assert hub.expected_md5("https://x/y.pth") is None


def test_the_docs_list_every_released_model() -> None:
    text = (REPO / "docs" / "models.md").read_text()
    missing = [name for name in hub.RELEASED if f"`{name}`" not in text]
    assert not missing, f"docs/models.md does not list {missing}"
