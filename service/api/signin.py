"""Signing in to the status page: the session cookie its login form sets from the API token (sent in a POST
body), and the checks the page's routes make (who may read, who may act, whether a form came from the page).

The cookie holds an expiry and an HMAC of the token under a key this process draws at start, never the token:
changing the token or restarting the API signs everyone out.  It is HttpOnly and SameSite=Strict; forms that
act also carry a token derived from the cookie, and their Origin must be the page's own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from service.settings import Settings

COOKIE = "coreml_publish_session"
SESSION_SECONDS = 12 * 3600  # a sign-in lasts a working day
FORM_FIELD = "csrf"
FAILED_SIGN_INS = 10  # wrong tokens from one address within FAILURE_WINDOW before its sign-ins are refused
FAILURE_WINDOW = 60.0  # seconds
_TRACKED_ADDRESSES = 10_000  # the failure log's bound: the oldest addresses are forgotten first


def init(app: FastAPI) -> None:
    """Draw the key this process signs sessions with."""
    app.state.session_key = secrets.token_bytes(32)


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _key(request: Request) -> bytes:
    key = getattr(request.app.state, "session_key", None)
    if key is None:  # an app built without init(): give it a key on first use
        key = request.app.state.session_key = secrets.token_bytes(32)
    return key


def _token(request: Request) -> str | None:
    config = _settings(request)
    return config.api_token.get_secret_value() if config.api_token else None


def token_required(request: Request) -> bool:
    """Whether an API token is configured (without one, on loopback, everything is open, like the API)."""
    return _token(request) is not None


def _sign(request: Request, expires: int, token: str) -> str:
    return hmac.new(_key(request), f"{expires}:{token}".encode(), hashlib.sha256).hexdigest()


def session_cookie(request: Request, *, now: float | None = None) -> str:
    """The cookie value of a session signed in now: ``<expiry>.<HMAC of expiry and token>``."""
    expires = int((now or time.time()) + SESSION_SECONDS)
    return f"{expires}.{_sign(request, expires, _token(request) or '')}"


def bearer_matches(request: Request, token: str) -> bool:
    """Whether the request's ``Authorization: Bearer …`` header holds ``token`` (compared in constant time)."""
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    return hmac.compare_digest(given.encode(), token.encode())


def signed_in(request: Request) -> bool:
    """A valid, unexpired session cookie for the current token, or the token as a bearer header (scripts)."""
    token = _token(request)
    if token is None:
        return False
    if bearer_matches(request, token):
        return True
    expires, _, digest = request.cookies.get(COOKIE, "").partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(digest.encode(), _sign(request, int(expires), token).encode())


def may_read(request: Request) -> bool:
    """Reading the page: open without a token or with COREML_PUBLISH_PUBLIC_STATUS, else signed in."""
    return not token_required(request) or _settings(request).public_status or signed_in(request)


def may_act(request: Request) -> bool:
    """Cancel and retry from the page: open without a token, else signed in (public status or not)."""
    return not token_required(request) or signed_in(request)


def form_token(request: Request) -> str:
    """The hidden field of the page's forms: bound to this session's cookie (or to this process without one)."""
    session = request.cookies.get(COOKIE, "") if token_required(request) else "open"
    return hmac.new(_key(request), f"form:{session}".encode(), hashlib.sha256).hexdigest()


def same_origin(request: Request) -> bool:
    """A form POST sent by our own page: its Origin (else Referer), when the browser sends one, names this host."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return True  # not a browser's cross-site form (browsers send Origin with every POST); the form token decides
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def form_values(request: Request) -> dict[str, list[str]]:
    """Every value of each field of a form POST's urlencoded body (a field of checkboxes sends several; the API
    caps bodies at 64 KiB before this reads them)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        return parse_qs(body, max_num_fields=64)
    except ValueError:  # more fields than any of the page's forms has
        return {}


async def form_fields(request: Request) -> dict[str, str]:
    """The first value of each field of a form POST."""
    return {name: values[0] for name, values in (await form_values(request)).items()}


async def checked_form_values(request: Request) -> dict[str, list[str]] | None:
    """Every value of the form's fields when it comes from our page (same origin and the right form token), else
    None."""
    values = await form_values(request)
    if not same_origin(request) or not hmac.compare_digest((values.get(FORM_FIELD) or [""])[0].encode(),
                                                           form_token(request).encode()):
        return None
    return values


async def checked_form(request: Request) -> dict[str, str] | None:
    """The form's fields (first values) when it comes from our page, else None."""
    values = await checked_form_values(request)
    return None if values is None else {name: found[0] for name, found in values.items()}


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never another host)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/login")) or "\\" in target:
        return "/"
    return target


def login_redirect(request: Request) -> RedirectResponse:
    """Send a reader who is not signed in to the login form, remembering the page (path and query only)."""
    from urllib.parse import urlencode

    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": here}), status_code=303)


@dataclass(frozen=True)
class AddressLimit:
    """At most ``count`` events per client address within ``window`` seconds: a log of their times kept in
    ``app.state.<name>`` (in memory, per API process, at most ``tracked`` addresses, the oldest forgotten first)."""

    name: str
    count: int
    window: float
    tracked: int = _TRACKED_ADDRESSES

    def _log(self, request: Request, now: float) -> tuple[dict[str, list[float]], str]:
        """The log (address → times within the window), pruned, and this client's address."""
        log: dict[str, list[float]] | None = getattr(request.app.state, self.name, None)
        if log is None:
            log = {}
            setattr(request.app.state, self.name, log)
        for address in [a for a, times in log.items() if times[-1] <= now - self.window]:
            del log[address]
        return log, request.client.host if request.client else "?"

    def wait(self, request: Request, *, now: float | None = None) -> int:
        """Seconds this client must wait (0: not at all): after ``count`` events within the window, until the
        oldest of them leaves it."""
        now = time.time() if now is None else now
        log, address = self._log(request, now)
        recent = [t for t in log.get(address, ()) if t > now - self.window]
        return int(recent[-self.count] + self.window - now) + 1 if len(recent) >= self.count else 0

    def note(self, request: Request, *, now: float | None = None) -> None:
        """Note an event of this client."""
        now = time.time() if now is None else now
        log, address = self._log(request, now)
        log[address] = [t for t in log.get(address, ()) if t > now - self.window][-self.count:] + [now]
        while len(log) > self.tracked:
            del log[next(iter(log))]


_SIGN_INS = AddressLimit("sign_in_failures", FAILED_SIGN_INS, FAILURE_WINDOW)


def sign_in_wait(request: Request, *, now: float | None = None) -> int:
    """Seconds this client must wait before trying a token again (0: it may try now): after FAILED_SIGN_INS
    wrong tokens within FAILURE_WINDOW, until the oldest of them leaves the window."""
    return _SIGN_INS.wait(request, now=now)


def record_failed_sign_in(request: Request, *, now: float | None = None) -> None:
    """Note a wrong token from this client (in memory, per API process, bounded)."""
    _SIGN_INS.note(request, now=now)
