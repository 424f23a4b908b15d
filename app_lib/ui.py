"""Small Streamlit helpers the pages share: loading with clear messages, pickers.

    from app_lib import ui
    src = ui.warehouse()                                   # stops the page if none
    if ui.need(src, "marts.fct_layer_module_metrics", run=q.FILL_WEIGHTS):
        df = ui.load(q.layer_module, src, pair)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from app_lib import db
from app_lib import queries as q

T = TypeVar("T")


def _busy(exc: Exception) -> None:
    st.warning(f"**The warehouse is busy** (being written, e.g. by ingest or "
               f"`dbt run`): {exc}. The app only reads it and lets go between "
               f"queries; try again in a moment.", icon=":material/hourglass_top:")
    if st.button("Retry", key="retry-busy", icon=":material/refresh:"):
        st.rerun()
    st.stop()


def _missing(exc: Exception) -> None:
    st.info(f"**No warehouse yet.** {exc}. Build one:", icon=":material/database:")
    st.code(q.FILL_ALL + "\n# or, step by step:\n" + q.FILL_WEIGHTS, language="bash")
    st.caption("The app reads $SFTSCOPE_DB (default data/warehouse.duckdb).")
    st.stop()


def load(fn: Callable[..., T], *args, **kwargs) -> T:
    """fn(*args) with the warehouse's failures turned into a message on the page
    (and the page stopped); lock retries that succeeded are mentioned."""
    before = db.retry_count()
    try:
        out = fn(*args, **kwargs)
    except db.WarehouseMissing as exc:
        _missing(exc)
    except db.WarehouseBusy as exc:
        _busy(exc)
    retries = db.retry_count() - before
    if retries:
        st.caption(f":material/hourglass_top: The warehouse was busy; read after "
                   f"{retries} retr{'y' if retries == 1 else 'ies'}.")
    return out


def warehouse() -> tuple[str, int]:
    """The warehouse's cache key; stops the page with instructions if it is
    missing, and says so when the warehouse changed after the snapshot the page
    reads (app_lib.db.notice)."""
    src = q.source()
    load(q.relations, src)
    note = db.notice()
    if note is not None and note.writing:
        st.info(note.text, icon=":material/sync:")
    elif note is not None:
        st.warning(note.text, icon=":material/history:")
    return src


def need(src: tuple[str, int], *tables: str, run: str, what: str = "") -> bool:
    """True if every table exists and holds rows; else an info box saying what to
    run to fill them, and False."""
    missing = [t for t in tables if not load(q.row_count, src, t)]
    if not missing:
        return True
    state = ", ".join(f"`{t}` ({'empty' if load(q.has_table, src, t) else 'missing'})"
                      for t in missing)
    st.info(f"{what or 'Nothing to show yet'}: {state}. Run this to fill it:",
            icon=":material/info:")
    st.code(run, language="bash")
    return False


def pick_pair(pairs: list[str], label: str = "pair") -> str:
    """A pair picker in the sidebar; the choice carries over to the other pages
    (widget state does not outlive its page, so it is kept under its own key)."""
    kept = st.session_state.get("chosen_pair")
    index = pairs.index(kept) if kept in pairs else len(pairs) - 1
    pair = st.sidebar.selectbox(label, pairs, index=index,
                                help="Pairs in the warehouse, smallest first.")
    st.session_state["chosen_pair"] = pair
    return pair


def legend_note() -> None:
    """The colour key shared by every page."""
    from app_lib.charts import ROLE_COLOR

    st.sidebar.markdown(
        "<div style='font-size:0.85em'>"
        + " &nbsp; ".join(
            f"<span style='color:{ROLE_COLOR[r]};font-size:1.2em'>&#9632;</span> {t}"
            for r, t in (("base", "base / W_base"), ("sft", "SFT / W_sft"),
                         ("delta", "dW = SFT - base")))
        + "</div>", unsafe_allow_html=True)


TAKEAWAY = ":material/lightbulb:"


def takeaway(sentences: list[str]) -> None:
    """A page's sentences (app_lib.takeaways), in a box above its charts; nothing
    when there are none."""
    if sentences:
        with st.container(border=True):
            st.markdown(f"{TAKEAWAY} " + " ".join(sentences))


@st.cache_data(ttl=q.TTL_S, show_spinner=False, max_entries=64)
def _spec(builder: str, args: tuple, kwargs: dict) -> dict:
    """The Vega-Lite spec of `module.function(*args, **kwargs)`, an Altair chart
    builder, built and validated against the schema once per arguments."""
    import importlib

    import altair as alt

    module, name = builder.rsplit(".", 1)
    fn = getattr(importlib.import_module(module), name)
    with alt.data_transformers.enable(max_rows=None):
        return fn(*args, **kwargs).to_dict()


def chart(builder: Callable, *args, **kwargs) -> None:
    """Draw `builder(*args, **kwargs)` (a pure chart builder of app_lib) full
    width, its spec cached per arguments: a warm page skips Altair's schema
    validation, 0.1-0.4 s a chart."""
    st.vega_lite_chart(_spec(f"{builder.__module__}.{builder.__qualname__}", args,
                             kwargs), width="stretch")
