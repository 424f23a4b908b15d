"""SQL console: read-only queries against the warehouse, results as CSV."""

import streamlit as st

from app_lib import db, sqlguard, ui
from app_lib import queries as q
from app_lib import takeaways as tk

EXAMPLES = {
    "Pairs": "select pair, base_model, sft_model, n_layers, n_matrices, size_billions\n"
             "from marts.dim_pairs order by size_billions",
    "Most changed matrices": "select pair, tensor, relative_frobenius_change,\n"
                             "       relative_spectral_change, signal_rank\n"
                             "from marts.fct_matrix_metrics\nwhere role = 'delta'\n"
                             "order by relative_frobenius_change desc limit 20",
    "Medians per module type": "from marts.fct_pairs_side_by_side",
    "LoRA energy at rank 16": "select pair, module, median(energy_share) as share\n"
                              "from marts.fct_lora_fit where lora_rank = 16\n"
                              "group by all order by pair, module",
    "Top singular values of dW": "select tensor, singular_values[1:5] as top5\n"
                                 "from staging.stg_compute__spectra\n"
                                 "where role = 'delta' limit 20",
    "Perplexity per group": "select t.role, p.grp,\n"
                            "       exp(-avg(t.logprob)) as perplexity,\n"
                            "       count(distinct t.post_id) as posts\n"
                            "from raw.token_logprobs t\n"
                            "join raw.post_texts p using (pair, post_id)\n"
                            "group by all order by all",
    "Perplexity delta per group (mart)": "from marts.fct_group_perplexity_delta",
    "Describe a table": "describe marts.fct_layer_module_metrics",
    "Summarize a table": "summarize marts.fct_layer_module_metrics",
}

st.title("SQL console")
st.caption(f"One read-only query at a time (SELECT, WITH, FROM, PIVOT, DESCRIBE, "
           f"SHOW, SUMMARIZE) on a fresh read-only connection without file access; "
           f"at most {sqlguard.MAX_ROWS:,} rows and {sqlguard.MAX_BYTES} of data, "
           f"{sqlguard.TIMEOUT_S:g} s, "
           f"{db.LIMITS.memory} of memory, {db.LIMITS.threads} thread(s) and "
           f"{db.LIMITS.temp} of temporary disk.")
src = ui.warehouse()
ui.takeaway(tk.console(ui.load(q.relations, src)))

example = st.selectbox("example", list(EXAMPLES), key="sql_example")
if st.session_state.get("sql_example_used") != example:
    st.session_state["sql_text"] = EXAMPLES[example]
    st.session_state["sql_example_used"] = example
sql = st.text_area("query", key="sql_text", height=180)
run = st.button("Run", type="primary", icon=":material/play_arrow:", key="sql_run")
if run:
    try:
        result = ui.load(sqlguard.run_readonly, sql)
    except sqlguard.QueryRefused as exc:
        if isinstance(exc.__cause__, db.duckdb.ParserException):
            st.error(f"Syntax error: {exc.__cause__}", icon=":material/error:")
        else:
            st.error(f"Refused: {exc}", icon=":material/block:")
    except TimeoutError as exc:
        st.error(str(exc), icon=":material/timer_off:")
    except sqlguard.LimitExceeded as exc:
        st.error(str(exc), icon=":material/memory:")
    except db.duckdb.ParserException as exc:
        st.error(f"Syntax error: {exc}", icon=":material/error:")
    except db.duckdb.Error as exc:
        st.error(f"DuckDB: {exc}")
    else:
        note = (f" (cut at {sqlguard.MAX_BYTES} of data, "
                "SFTSCOPE_CONSOLE_MAX_BYTES)" if result.cut_bytes
                else f" (cut at {sqlguard.MAX_ROWS:,})" if result.truncated
                else "")
        st.caption(f"{len(result.frame):,} row(s){note} in {result.seconds:.2f} s")
        st.dataframe(result.frame, hide_index=True, width="stretch")
        st.download_button("Download CSV", result.frame.to_csv(index=False).encode(),
                           file_name="sftscope_query.csv", mime="text/csv",
                           icon=":material/download:", key="sql_download")

st.subheader("Schema")
cols = ui.load(q.columns, src)
if cols.empty:
    st.info("No tables yet.")
    st.code(q.FILL_ALL, language="bash")
else:
    filt = st.text_input("filter tables and columns", key="sql_filter",
                         placeholder="e.g. perplexity, or marts.fct_lora")
    shown = cols.assign(table=cols["schema"] + "." + cols["table"])[
        ["table", "column", "type", "comment"]]
    if filt:
        mask = (shown["table"].str.contains(filt, case=False, regex=False)
                | shown["column"].str.contains(filt, case=False, regex=False)
                | shown["comment"].fillna("").str.contains(filt, case=False,
                                                            regex=False))
        shown = shown[mask]
    st.caption(f"{shown['table'].nunique():,} table(s), {len(shown):,} column(s)"
               + (f" matching '{filt}'" if filt else ""))
    st.dataframe(shown, hide_index=True, width="stretch", height=420,
                 column_config={"comment": st.column_config.TextColumn(
                     "description", width="large")})
