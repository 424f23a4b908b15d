"""sftscope's browser: `streamlit run app.py` (or `make app`).

Reads the warehouse named by $SFTSCOPE_DB (default data/warehouse.duckdb) through
short-lived read-only connections; the pages live in app_pages/, their SQL in
app_lib/queries.py, their charts in app_lib/charts.py.
"""

import streamlit as st

st.set_page_config(page_title="sftscope", page_icon=":material/compare:",
                   layout="wide")

nav = st.navigation({
    "": [st.Page("app_pages/overview.py", title="Overview", icon=":material/home:",
                 default=True)],
    "Weights": [
        st.Page("app_pages/heatmap.py", title="Weights heatmap",
                icon=":material/grid_on:", url_path="heatmap"),
        st.Page("app_pages/layers.py", title="Layers", icon=":material/show_chart:",
                url_path="layers"),
        st.Page("app_pages/spectra.py", title="Spectra", icon=":material/ssid_chart:",
                url_path="spectra"),
        st.Page("app_pages/directions.py", title="Directions",
                icon=":material/explore:", url_path="directions"),
        st.Page("app_pages/over_training.py", title="Over training",
                icon=":material/timeline:", url_path="over-training"),
    ],
    "Behaviour": [
        st.Page("app_pages/perplexity.py", title="Perplexity",
                icon=":material/psychology:", url_path="perplexity"),
        st.Page("app_pages/token_shift.py", title="Token shift",
                icon=":material/swap_vert:", url_path="token-shift"),
        st.Page("app_pages/drift.py", title="Residual drift", icon=":material/waves:",
                url_path="drift"),
        st.Page("app_pages/posts.py", title="Posts", icon=":material/article:",
                url_path="posts"),
        st.Page("app_pages/attribution.py", title="Attribution",
                icon=":material/join_inner:", url_path="attribution"),
    ],
    "Tools": [st.Page("app_pages/sql.py", title="SQL console", icon=":material/terminal:",
                      url_path="sql")],
})
nav.run()
