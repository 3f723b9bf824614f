"""Fetch task images the way Label Studio serves them: uploads, local files, absolute URLs, data URIs."""

from __future__ import annotations

import base64
import io
from urllib.parse import urljoin, urlparse

import requests
from PIL import Image, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs beyond 64 MP


class ImageError(ValueError):
    """A task's image could not be fetched or decoded; the message says why."""


class ImageFetcher:
    """Download task images from Label Studio with its API key (``Authorization: Token``)."""

    def __init__(self, base_url: str | None, api_key: str | None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/") + "/" if base_url else None
        self.api_key = api_key
        self.timeout = timeout
        self.session = requests.Session()

    def resolve(self, url: str) -> str:
        """Make a task-data URL absolute against the Label Studio URL."""
        if urlparse(url).scheme in ("http", "https", "data"):
            return url
        if not self.base_url:
            raise ImageError(f"relative image URL {url!r} but the Label Studio URL is unknown (set LABEL_STUDIO_URL)")
        return urljoin(self.base_url, url.lstrip("/"))

    def _auth_for(self, url: str) -> dict[str, str]:
        if not (self.api_key and self.base_url):
            return {}
        ls = urlparse(self.base_url)
        target = urlparse(url)
        return {"Authorization": f"Token {self.api_key}"} if target.netloc == ls.netloc else {}

    def fetch_bytes(self, url: str) -> bytes:
        """Return the raw bytes behind a task-data image URL."""
        url = self.resolve(url)
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.split(",", 1)[1], validate=False)
            except (IndexError, ValueError) as e:
                raise ImageError(f"malformed data URI: {e}") from e
        try:
            response = self.session.get(url, headers=self._auth_for(url), timeout=self.timeout)
        except requests.RequestException as e:
            raise ImageError(f"cannot download {url}: {e}") from e
        if response.status_code != 200:
            raise ImageError(f"downloading {url} answered HTTP {response.status_code}")
        return response.content

    def fetch(self, url: str) -> Image.Image:
        """Return the image behind a task-data URL as RGB."""
        return decode_image(self.fetch_bytes(url), url)


def decode_image(data: bytes, source: str = "image") -> Image.Image:
    """Decode bytes to an RGB PIL image; raise ImageError for corrupt, truncated or huge images."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                img = img.point(lambda v: v / 256).convert("L")
            return img.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ImageError(f"{source}: image too large ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{source}: not a readable image ({e})") from e
