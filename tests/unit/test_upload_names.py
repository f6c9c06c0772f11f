"""XEP-0363 upload: the pure helpers that make client file names and content types safe to serve."""

from __future__ import annotations

from rookery.modules.upload import content_disposition, safe_filename, served_type


def test_safe_filename_keeps_the_last_component_and_the_extension() -> None:
    assert safe_filename("très cool.jpg") == "très cool.jpg"
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\Windows\\evil.exe") == "evil.exe"
    assert safe_filename("..") == "file"
    assert safe_filename("/") == "file"
    assert safe_filename(".bashrc") == "bashrc"
    assert safe_filename("a\u202etxt.exe") == "atxt.exe"  # no bidi overrides
    assert safe_filename("a\r\nb\t.txt") == "ab.txt"
    long = safe_filename("x" * 300 + ".jpeg")
    assert len(long) == 100 and long.endswith(".jpeg")


def test_only_media_and_plain_text_are_served_inline() -> None:
    assert served_type("image/PNG") == ("image/png", True)
    assert served_type("video/webm") == ("video/webm", True)
    assert served_type("text/plain; charset=utf-8") == ("text/plain", True)
    for t in ("text/html", "image/svg+xml", "application/pdf", "application/javascript", "text/xml", ""):
        assert served_type(t) == ("application/octet-stream", False), t


def test_content_disposition_has_an_ascii_fallback_and_utf8_name() -> None:
    assert content_disposition("très \"cool\".jpg", True) == (
        "inline; filename=\"tr_s _cool_.jpg\"; filename*=UTF-8''tr%C3%A8s%20%22cool%22.jpg")
    assert content_disposition("a.html", False).startswith('attachment; filename="a.html"')
