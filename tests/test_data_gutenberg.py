"""Project Gutenberg: boilerplate stripping on small fixtures, and the downloader against a
loopback HTTP server (never the internet).    pytest -q tests/test_data_gutenberg.py
"""
import http.server
import threading
from pathlib import Path

import pytest

from vintagelm.common import UserError
from vintagelm.data import gutenberg
from vintagelm.data.sources import iter_documents

FIXTURES = Path(__file__).parent / "fixtures"


def book(spec):
    [doc] = list(iter_documents(spec))
    return doc.text


def test_markers_strip_header_licence_and_credits():
    text = book(f"gutenberg:{FIXTURES / 'gutenberg_markers.txt'}")
    assert text.startswith("THE LAMPLIGHTER'S ALMANAC\n\nCHAPTER I.")
    assert text.endswith("smoke and blacken the glass.")
    assert "Gutenberg" not in text and "Produced by" not in text and "LICENSE" not in text


def test_old_small_print_header_and_end_line():
    text = book(f"gutenberg:{FIXTURES / 'gutenberg_smallprint.txt'}")
    assert text.startswith("THE MILLER'S LEDGER")
    assert text.endswith("mending the sluice.")
    assert "SMALL PRINT" not in text and "Etext" not in text


def test_end_marker_only_with_bom_and_crlf(tmp_path):
    # the shape of an edition with no start marker, a byte-order mark and Windows line ends
    raw = (FIXTURES / "gutenberg_end_only.txt").read_bytes()
    path = tmp_path / "orchard.txt"
    path.write_bytes(b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n"))
    text = book(f"gutenberg:{path}")
    assert text.startswith("The orchard lay")
    assert text.endswith("every hard winter in its rings.")
    assert "\r" not in text and "\ufeff" not in text and "Gutenberg" not in text


def test_latin1_bytes_are_decoded(tmp_path):
    path = tmp_path / "latin1.txt"
    body = "*** START OF THIS PROJECT GUTENBERG EBOOK CAFÉ ***\n\nThe café on the Rue de la Paix served crème brûlée.\n"
    path.write_bytes(body.encode("latin-1"))
    assert book(f"gutenberg:{path}") == "The café on the Rue de la Paix served crème brûlée."


def test_start_marker_wrapped_over_two_lines():
    text = "*** START OF THE PROJECT GUTENBERG EBOOK A VERY LONG TITLE THAT\nWRAPS ONTO A SECOND LINE ***\n\nBody.\n"
    assert gutenberg.strip_boilerplate(text) == "Body."


def test_unwrap_joins_prose_paragraphs(tmp_path):
    [doc] = list(iter_documents(f"gutenberg:{FIXTURES / 'gutenberg_markers.txt'}", unwrap=True))
    paragraphs = doc.text.split("\n\n")
    assert paragraphs[2].startswith("The lamplighter came down the lane at dusk, as he had done every evening since")
    assert "\n" not in paragraphs[2]
    assert paragraphs[0] == "THE LAMPLIGHTER'S ALMANAC"


# ---- downloading ----

class BookServer:
    """A loopback HTTP server: serves `pages` (path -> bytes), 404 otherwise, and logs requests."""

    def __init__(self, pages):
        self.pages, self.requests = pages, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                body = outer.pages.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.end_headers()
                self.wfile.write(body if body is not None else b"not here")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_falls_back_to_files_url_and_caches(tmp_path):
    raw = (FIXTURES / "gutenberg_markers.txt").read_bytes()
    with BookServer({"/files/99999/99999-0.txt": raw}) as server:
        path = gutenberg.download(99999, cache=tmp_path, base_url=server.url)
        assert path == tmp_path / "pg99999.txt" and path.read_bytes() == raw
        assert server.requests == ["/cache/epub/99999/pg99999.txt", "/files/99999/99999-0.txt"]
        # second time: served from the cache, no request at all
        assert gutenberg.download(99999, cache=tmp_path, base_url=server.url) == path
        assert len(server.requests) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["pg99999.txt"]  # no temporaries left


def test_gutenberg_id_source_uses_env_vars(tmp_path, monkeypatch):
    raw = (FIXTURES / "gutenberg_smallprint.txt").read_bytes()
    with BookServer({"/cache/epub/7/pg7.txt": raw}) as server:
        monkeypatch.setenv("VINTAGELM_GUTENBERG_URL", server.url)
        monkeypatch.setenv("VINTAGELM_CACHE", str(tmp_path))
        [doc] = list(iter_documents("gutenberg:7"))
    assert doc.source == "gutenberg:7" and doc.text.startswith("THE MILLER'S LEDGER")
    assert (tmp_path / "gutenberg" / "pg7.txt").is_file()


def test_download_404_is_a_user_error(tmp_path):
    with BookServer({"/cache/epub/1/pg1.txt": b"<!DOCTYPE html><html>a captcha page</html>"}) as server:
        with pytest.raises(UserError, match="book 1 not found"):
            gutenberg.download(1, cache=tmp_path, base_url=server.url)
        assert len(server.requests) == len(gutenberg.URL_FORMS)
    assert not any(tmp_path.iterdir())


def test_download_offline_is_a_user_error(tmp_path):
    with BookServer({}) as server:
        dead = server.url  # the port is closed once the server stops
    with pytest.raises(UserError, match="cannot download .*check your connection"):
        gutenberg.download(5, cache=tmp_path, base_url=dead, timeout=5)
