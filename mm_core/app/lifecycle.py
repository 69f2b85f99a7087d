"""The app's life cycle: errors for users and API clients, sessions, clean-up on a timer.

- :func:`guarded` wraps every handler: an :class:`~mm_core.errors.MMError` becomes a
  ``gr.Error`` with its message (a modal in the browser, an exception with the
  message in ``gradio_client``), anything else a short message and a log line.
- :data:`STORE` keeps every session's results (see :mod:`mm_core.app.sessions`);
  :func:`end_session` frees a session's results when its tab closes;
  :func:`start_cleanup` starts the timer that frees idle results and deletes old
  request folders, whether or not requests arrive.
"""

from __future__ import annotations

import functools
import logging
import time

import gradio as gr

from mm_core.app import helpers as au
from mm_core.app.sessions import SessionStore, release_memory, remove_folder
from mm_core.errors import MMError
from mm_core.settings import get_settings

log = logging.getLogger("mm_core.app")

#: Results of every session, bounded; the app's states hold only keys into it.
STORE = SessionStore()


def guarded(what: str):
    """Show :class:`MMError` messages as they are, anything else as a short message + a log line."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except MMError as exc:
                raise gr.Error(str(exc), title="Input refused") from None
            except Exception:
                log.exception("unexpected error while %s", what)
                raise gr.Error(
                    f"Something went wrong while {what}; the details were logged. "
                    "Please try again or with another file."
                ) from None
            finally:
                if time.monotonic() - t0 > 0.5:  # a run or a load: give its temporary arrays back
                    release_memory()

        return wrapper

    return deco


def checked_input(component, what: str):
    """Make ``component`` refuse a value it cannot take (e.g. ``'abc'`` for a slider, sent
    through the API) with a message naming ``what``, instead of Gradio's bare TypeError."""
    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except gr.Error:
            raise
        except Exception:  # noqa: BLE001 - any value the widget cannot take is the caller's error
            raise gr.Error(f"{what} cannot be {str(payload)[:40]!r}; give a number", title="Input refused") from None

    component.preprocess = preprocess
    return component


def session_of(request) -> str | None:
    """The session id of a request (``None`` outside a server, e.g. in tests)."""
    return getattr(request, "session_hash", None)


def end_session(request: gr.Request) -> None:
    """The browser tab closed (or its connection dropped): free what the session kept, after
    a short grace period in case it reconnects."""
    STORE.close_session(session_of(request))


def drop_result(key: str | None) -> None:
    """A session's result-key state ended: free the result it names.

    A plain function on purpose, not ``STORE.drop``: Gradio deep-copies the page's config, each
    state's ``delete_callback`` included, on every page load (``/config``), and a bound method
    would copy the whole store, every session's results, each time.
    """
    STORE.drop(key)


def drop_loaded(loaded) -> None:
    """A session's upload state ended: delete the upload's folder."""
    remove_folder(getattr(loaded, "folder", None))


def tab_states() -> tuple[gr.State, gr.State]:
    """The two states of a tab: the upload and the key of the kept result (both small), each
    freeing what it names when it ends (plain functions as callbacks, see :func:`drop_result`)."""
    ttl = get_settings().app_max_age_s
    return (gr.State(time_to_live=ttl, delete_callback=drop_loaded),
            gr.State(time_to_live=ttl, delete_callback=drop_result))


def start_cleanup() -> None:
    """Start the timer that frees idle results and deletes request folders past their age."""
    STORE.start_timer(min(60.0, max(2.0, STORE.idle_s / 4)),
                      also=lambda: au.cleanup_old(au.output_root()))  # marked folders only
