"""``adain.web``: the browser page and HTTP/JSON API over adain-server (``adain-web``); no torch."""
