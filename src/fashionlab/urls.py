"""A URL shown without its secrets: a database's or a tracking server's, in messages, records and
recorded command lines.

    url_label("postgresql://me:secret@db-host/fashionlab")   # 'postgresql://***@db-host/fashionlab'
"""

from __future__ import annotations

import re

# Query parameters of PostgreSQL's and MySQL's drivers that hold no secret: their values are shown.
PLAIN_PARAMETERS = ("host", "hostaddr", "port", "dbname", "database", "user", "sslmode", "connect_timeout",
                    "application_name", "target_session_attrs", "client_encoding", "charset")


def url_label(url: str) -> str:
    """A URL as shown and recorded: a path as it is; a URL as its scheme and what follows its last '@'
    up to any query (postgresql://***@db-host/fashionlab?...), never its user information or query.
    Cut by hand, not parsed: a URL parser is fooled by a password holding '@', '/', ':', '?' or '#', and
    then shows a piece of it as the host. Masked again, in case even that cut was fooled (a query
    holding an '@')."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    _, at, place = rest.rpartition("@")
    host = re.split(r"[?#]", place, maxsplit=1)[0]
    return masked(f"{scheme}://{'***@' if at else ''}{host}{'?...' if host != place else ''}", url)


def url_secrets(url: str) -> list[str]:
    """What a URL may hold that is never shown, read every way the URL could be meant: its
    password (the user information, all before the last '@', after its first ':') and the values of
    its query (after the first '?' anywhere) but those of PLAIN_PARAMETERS, each as written and
    percent-decoded. A value may hold a raw '&' or ';': it ends only where a parameter follows."""
    from urllib.parse import unquote, unquote_plus

    if "://" not in url:
        return []
    rest = url.split("://", 1)[1]
    found = [rest.rpartition("@")[0].partition(":")[2]]
    starts = "|".join((*PLAIN_PARAMETERS, "password"))
    for query in re.split(r"[?#]", rest, maxsplit=1)[1:]:
        pairs = [pair.partition("=") for pair in re.split(rf"[&;](?=(?:{starts})=)", query)]
        found += [value for key, _, value in pairs if key not in PLAIN_PARAMETERS]
    found += [decode(s) for s in found for decode in (unquote, unquote_plus)]
    return sorted({s for s in found if len(s) >= 2}, key=len, reverse=True)


def masked(text: str, url: str | None) -> str:
    """`text` with every piece of the URL's secrets (four characters or more, or a shorter secret
    whole) replaced by ***: a driver's message may quote the URL, or the host it misread from it."""
    secrets = url_secrets(url) if url else []
    if not secrets:
        return text
    said, i = [], 0
    while i < len(text):
        end = i
        for secret in secrets:  # the longest piece of a secret that starts here
            j = i + min(4, len(secret))
            if j <= len(text) and text[i:j] in secret:
                while j < len(text) and text[i:j + 1] in secret:
                    j += 1
                end = max(end, j)
        said.append("***" if end > i else text[i])
        i = max(end, i + 1)
    return "".join(said)
