"""Image fetching and decoding: formats, bombs, corrupt files, SSRF, path traversal, size caps.

Real HTTP servers on 127.0.0.1 stand in for Label Studio and for other hosts; every test checks
what reached them (a refused URL must never be requested)."""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from ml_backend.labelstudio.fetch import FetchPolicy, ImageError, ImageFetcher
from ml_backend.settings import Settings
from devkit.builders import data_uri, png_bytes
from training.images import decode_image

TOKEN = "images-token-0123456789abcdef"


def fetcher(base_url: str | None, api_key: str | None, **policy) -> ImageFetcher:
    """An ImageFetcher under the policy of the settings (environment), with ``policy`` fields replaced."""
    return ImageFetcher(base_url, api_key, dataclasses.replace(FetchPolicy.from_settings(Settings.from_env()), **policy))


class Server:
    """127.0.0.1 server: ``routes`` path -> (status, headers, body); records (path, Authorization)."""

    def __init__(self, routes: dict[str, tuple[int, dict, bytes]] | None = None, chunked: dict[str, bytes] | None = None):
        self.routes, self.chunked, self.requests = routes or {}, chunked or {}, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                outer.requests.append((self.path, self.headers.get("Authorization")))
                if self.path in outer.chunked:  # no Content-Length: the client must count
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    body = outer.chunked[self.path]
                    for i in range(0, len(body), 4096):
                        part = body[i:i + 4096]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                status, headers, body = outer.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v.replace("{self}", outer.url) if isinstance(v, str) else v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.hostport = self.url.split("//", 1)[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png16_rgb(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------------------------------
# decoding: every mode becomes correct RGB


def test_grayscale_rgba_palette_cmyk_decode_to_rgb():
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "L")
    out = np.asarray(decode_image(_encode(gray)))
    assert out.shape == (8, 8, 3) and (out[..., 0] == np.asarray(gray)).all() and (out[..., 0] == out[..., 2]).all()

    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 200, 30, 77
    out = np.asarray(decode_image(_encode(Image.fromarray(rgba, "RGBA"))))
    assert out.shape == (6, 5, 3) and (out == [10, 200, 30]).all()  # alpha dropped, colour kept (torchvision's loader)

    la = Image.fromarray(np.stack([np.full((4, 4), 90, np.uint8), np.full((4, 4), 0, np.uint8)], -1), "LA")
    assert (np.asarray(decode_image(_encode(la))) == 90).all()

    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 0, 250, 5, 6] + [0] * 762)
    pal.paste(1, (0, 0, 4, 4))
    assert (np.asarray(decode_image(_encode(pal))) == [250, 5, 6]).all()

    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red
    r, g, b = np.asarray(decode_image(_encode(cmyk, "JPEG", quality=95))).mean(axis=(0, 1))
    assert r > 200 and g < 60 and b < 60

    one = Image.new("1", (9, 3), 1)
    assert (np.asarray(decode_image(_encode(one))) == 255).all()


def test_16_bit_images_scale_to_8_bit():
    ramp = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0..65535
    for fmt in ("PNG", "TIFF"):
        img = Image.fromarray(ramp)
        assert img.mode.startswith("I;16")
        out = np.asarray(decode_image(_encode(img, fmt)))
        assert out.shape == (16, 16, 3)
        assert np.abs(out[..., 0].astype(int) - (ramp >> 8)).max() <= 1, fmt

    rgb16 = np.zeros((3, 4, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 0xFF00, 0x8000, 0x0100
    out = np.asarray(decode_image(_png16_rgb(rgb16)))
    assert out.shape == (3, 4, 3) and (out == [255, 128, 1]).all()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_corrupt_truncated_empty_and_bomb_images_are_image_errors():
    good = png_bytes((64, 64))
    jpeg = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    cases = {
        "empty": b"",
        "garbage": b"definitely not an image",
        "truncated png": good[: len(good) // 2],
        "truncated jpeg": jpeg[: len(jpeg) // 2],
        "bad crc": good[:40] + bytes([good[40] ^ 0xFF]) + good[41:],
        "header only": good[:33],
    }
    for name, data in cases.items():
        with pytest.raises(ImageError):
            decode_image(data, name)
    # 10000 x 7000 = 70 MP: above the 64 MP limit (PIL alone would only warn below 128 MP)
    bomb = _encode(Image.new("1", (10_000, 7_000)))
    assert len(bomb) < 200_000
    with pytest.raises(ImageError, match="too large"):
        decode_image(bomb, "bomb")
    with pytest.raises(ImageError, match="too large"):
        decode_image(_encode(Image.new("1", (13_000, 13_000))), "big bomb")  # PIL's own DecompressionBombError range


# --------------------------------------------------------------------------------------------------
# where images may come from


def test_token_only_to_label_studio_and_other_hosts_refused():
    img = png_bytes((8, 8))
    with Server({"/data/upload/1/a.png": (200, {}, img)}) as ls, Server({"/x.png": (200, {}, img)}) as other:
        f = fetcher(ls.url, TOKEN, allowed_hosts=(), image_root=None)
        assert f.fetch_bytes("/data/upload/1/a.png") == img
        assert f.fetch_bytes(ls.url + "/data/upload/1/a.png") == img
        assert ls.requests == [("/data/upload/1/a.png", f"Token {TOKEN}")] * 2
        refused = [
            other.url + "/x.png",                                  # another port = another origin
            f"http://{TOKEN}@{other.hostport}/x.png",              # user info
            f"http://{ls.hostport}@{other.hostport}/x.png",
            "http://169.254.169.254/latest/meta-data/",            # cloud metadata
            "http://localhost:6379/",                              # Redis
            "ftp://127.0.0.1/x.png", "gopher://127.0.0.1:6379/_PING", "s3://bucket/x.png", "javascript:alert(1)",
            "file:///etc/passwd", "http://[::1/x.png", "http://127.0.0.1:99999/x.png",
            ls.url + "/data\\..\\x.png", ls.url + "/a\r\nHost: evil/x.png",
        ]
        for url in refused:
            with pytest.raises(ImageError):
                f.fetch_bytes(url)
        assert other.requests == [] and len(ls.requests) == 2
        # protocol-relative and absolute paths stay on Label Studio
        with pytest.raises(ImageError, match="404"):
            f.fetch_bytes(f"//{other.hostport}/x.png")
        with pytest.raises(ImageError, match="404"):
            f.fetch_bytes("/etc/passwd")
        assert other.requests == [] and all(auth == f"Token {TOKEN}" for _, auth in ls.requests)

        # an extra allowed host is fetched, without the token
        # (127.0.0.1 is loopback: an allowed host may resolve there only with ALLOW_PRIVATE_IMAGE_HOSTS)
        f2 = fetcher(ls.url, TOKEN, allowed_hosts=(other.hostport,), allow_private=True)
        assert f2.fetch_bytes(other.url + "/x.png") == img
        assert other.requests == [("/x.png", None)]
        f3 = fetcher(ls.url, TOKEN, allowed_hosts=("127.0.0.1",), allow_private=True)  # any port of that host
        assert f3.fetch_bytes(other.url + "/x.png") == img
    # no Label Studio URL known: relative URLs and other hosts are refused
    with pytest.raises(ImageError, match="LABEL_STUDIO_URL"):
        fetcher(None, None).fetch_bytes("/data/upload/1/a.png")
    with pytest.raises(ImageError, match="not allowed"):
        fetcher(None, None, allowed_hosts=()).fetch_bytes("http://127.0.0.1:1/x.png")


def test_allowed_hosts_from_environment(monkeypatch):
    monkeypatch.setenv("ALLOWED_IMAGE_HOSTS", "cdn.example.com, *.s3.amazonaws.com,https://img.example.org")
    f = fetcher("http://ls:8080", TOKEN)
    assert f.check_url("https://cdn.example.com/a.png")
    assert f.check_url("https://bucket.s3.amazonaws.com/a.png?X-Amz=1")
    assert f.check_url("https://img.example.org/a.png")
    for url in ("http://img.example.org/a.png", "https://s3.amazonaws.com.evil.net/a.png", "https://evil.com/a.png"):
        with pytest.raises(ImageError):
            f.check_url(url)


def test_redirects_are_rechecked_and_drop_the_token():
    img = png_bytes((8, 8))
    with Server({"/x.png": (200, {}, img)}) as other:
        routes = {
            "/data/inside": (302, {"Location": "/data/upload/1/a.png"}, b""),
            "/data/upload/1/a.png": (200, {}, img),
            "/data/outside": (302, {"Location": other.url + "/x.png"}, b""),
            "/data/loop": (302, {"Location": "/data/loop"}, b""),
        }
        with Server(routes) as ls:
            f = fetcher(ls.url, TOKEN, allowed_hosts=())
            assert f.fetch_bytes("/data/inside") == img
            assert ls.requests == [("/data/inside", f"Token {TOKEN}"), ("/data/upload/1/a.png", f"Token {TOKEN}")]
            with pytest.raises(ImageError, match="not allowed"):
                f.fetch_bytes("/data/outside")
            assert other.requests == []
            with pytest.raises(ImageError, match="redirects"):
                f.fetch_bytes("/data/loop")
            allowed = fetcher(ls.url, TOKEN, allowed_hosts=(other.hostport,), allow_private=True)  # loopback: opt in
            assert allowed.fetch_bytes("/data/outside") == img
            assert other.requests == [("/x.png", None)]  # the token never leaves Label Studio


def test_download_size_is_capped_while_streaming():
    big = os.urandom(300_000)
    with Server({"/data/big": (200, {}, big)}, chunked={"/data/chunked": big}) as ls:
        f = fetcher(ls.url, TOKEN, max_bytes=100_000)
        with pytest.raises(ImageError, match="MAX_IMAGE_BYTES"):
            f.fetch_bytes("/data/big")
        with pytest.raises(ImageError, match="MAX_IMAGE_BYTES"):
            f.fetch_bytes("/data/chunked")
        assert fetcher(ls.url, TOKEN, max_bytes=400_000).fetch_bytes("/data/chunked") == big
    with pytest.raises(ImageError, match="MAX_IMAGE_BYTES"):
        fetcher(None, None, max_bytes=1000).fetch_bytes(data_uri(os.urandom(5000)))


def test_local_files_only_inside_image_root(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(png_bytes((5, 5)))
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes((6, 6)))
    (root / "link.png").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path)

    assert fetcher(None, None, image_root=root).fetch(f"file://{root}/sub/a.png").size == (5, 5)
    for url in (f"file://{root}/sub/../../secret.png", f"file://{root}/link.png", f"file://{root}/dirlink/secret.png",
                f"file://{root}/sub/%2e%2e/%2e%2e/secret.png", f"file://{root}/sub/missing.png", f"file://{root}",
                f"file://{tmp_path}/images-evil/a.png", "file://otherhost/etc/passwd", "file:///etc/passwd"):
        with pytest.raises(ImageError):
            fetcher(None, None, image_root=root).fetch_bytes(url)
    with pytest.raises(ImageError, match="IMAGE_ROOT"):
        fetcher(None, None, image_root=None).fetch_bytes(f"file://{root}/sub/a.png")


def test_error_messages_do_not_echo_whole_data_uris():
    uri = data_uri(b"x" * 50_000)
    with pytest.raises(ImageError) as err:
        fetcher(None, None).fetch(uri)
    assert len(str(err.value)) < 400


def test_versioned_file_fetch_reveals_nothing_outside_image_root(tmp_path):
    """Issue 21 (11): ``fetch_versioned`` stat-ed a ``file:`` path before the IMAGE_ROOT check, so the error
    told whether a file outside it existed (FileNotFoundError vs. the version of the file)."""
    root = tmp_path / "images"
    root.mkdir()
    exists, missing = tmp_path / "secret.png", tmp_path / "nothing-here.png"
    exists.write_bytes(png_bytes((6, 6)))
    messages = []
    for path in (exists, missing):
        with pytest.raises(ImageError) as err:
            fetcher(None, None, image_root=root).fetch_versioned(path.as_uri())
        messages.append(str(err.value).replace(path.name, "<name>"))
    assert messages[0] == messages[1] and "outside IMAGE_ROOT" in messages[0]
